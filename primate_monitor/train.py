"""The training loop, readable top to bottom: data, model, then one loop of steps.

Recipe (Pellegrini 2021): Adam (AMSGrad) at 1e-3, batch 32, 60,000 iterations, a
balanced sampler, MixUp with a sigmoid/BCE loss, batch-wide SpecAugment, and an EMA of
the weights. Validation on devel every ``eval_every`` steps keeps the best by UAR.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .augment import mixup, specaugment
from .checkpoint import CheckpointError, ModelInfo, save_checkpoint
from .clipaudio import decode_clips, fit_length
from .config import TrainConfig
from .data import Clip, DataError, check_classes, load_splits, summarize
from .devices import autocast, resolve_device
from .ema import EMA
from .frontend import FrontEndConfig, LogMel
from .models import create_model
from .predict import score_clips
from .metrics import classification_metrics
from .sampler import SAMPLERS
from .train_state import load_train_state, restore_optimizer, save_train_state

logger = logging.getLogger(__name__)

BEST_NAME = "best.safetensors"  # the model to scan with: best devel UAR
RESUME_NAME = "resume.safetensors"  # everything --resume needs
LOG_NAME = "train_log.csv"


@dataclass
class LabelledAudio:
    clips: list[Clip]
    audio: list[np.ndarray]
    labels: np.ndarray  # class index per clip
    bad: list[tuple[Clip, str]]


def prepare_split(clips: list[Clip], classes: list[str], config: TrainConfig, cache_dir: Path, name: str) -> LabelledAudio:
    good, audio, bad = decode_clips(clips, config.sample_rate, cache_dir, config.workers, config.skip_bad)
    if not good:
        raise DataError(f"split {name!r}: no readable clip")
    labels = np.array([classes.index(c.label) for c in good], dtype=np.int64)
    return LabelledAudio(good, audio, labels, bad)


def make_batch(data: LabelledAudio, idx: np.ndarray, clip_samples: int, rng: np.random.Generator) -> torch.Tensor:
    """(batch, samples) float32: random crops of long clips, zero-padded short ones."""
    return torch.from_numpy(np.stack([fit_length(data.audio[i], clip_samples, rng) for i in idx]).astype(np.float32))


class Trainer:
    """Holds the state of one run; ``run()`` is the loop."""

    def __init__(self, data_root: str | Path, out_dir: str | Path, config: TrainConfig, resume: bool = False) -> None:
        self.config, self.out = config, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        splits = load_splits(data_root, config)
        if not splits.get(config.train_split):
            raise DataError(f"{data_root}: split {config.train_split!r} is missing or empty")
        if not splits.get(config.devel_split):
            raise DataError(f"{data_root}: split {config.devel_split!r} is missing or empty; validation needs it")
        self.classes = check_classes(splits, config)
        cache = Path(config.cache_dir) if config.cache_dir else self.out / "cache"
        self.train_data = prepare_split(splits[config.train_split], self.classes, config, cache, config.train_split)
        devel = [c for c in splits[config.devel_split] if c.label != "?"]
        self.devel_data = prepare_split(devel, self.classes, config, cache, config.devel_split)
        self._report_bad()
        # counts of the clips actually used (after --skip-bad), stored in the checkpoint
        self.summary = summarize({config.train_split: self.train_data.clips, config.devel_split: self.devel_data.clips})
        self.frontend_config = FrontEndConfig(sample_rate=config.sample_rate)
        self.frontend = LogMel(self.frontend_config).to(self.device)
        self.model = create_model(config.model, len(self.classes)).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, amsgrad=config.amsgrad)
        self.ema = EMA(self.model, config.ema_decay, config.ema_start) if config.ema else None
        self.sampler = SAMPLERS[config.sampler](self.train_data.labels.tolist(), len(self.classes), config.seed)
        self.rng = np.random.default_rng(config.seed + 1)  # crop offsets
        self.generator = torch.Generator().manual_seed(config.seed + 2)  # MixUp, SpecAugment
        self.clip_samples = round(config.clip_seconds * config.sample_rate)
        self.step, self.best_uar, self.best_metrics = 0, -1.0, {}
        if resume:
            self._load_resume()

    def _report_bad(self) -> None:
        bad = self.train_data.bad + self.devel_data.bad
        if bad:
            with open(self.out / "skipped_clips.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "label", "reason"])
                writer.writerows([str(c.path), c.label, reason] for c, reason in bad)
            logger.warning("skipped %d unreadable clip(s), listed in %s", len(bad), self.out / "skipped_clips.csv")

    # ---- one optimisation step -------------------------------------------------------
    def augment(self, targets: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
        """A closure applied after bn0 (SpecAugment, then MixUp) and the targets it produces."""
        c, box = self.config, {"targets": targets}

        def fn(z: torch.Tensor) -> torch.Tensor:
            if c.specaugment:
                z = specaugment(z, self.generator, c.time_stripes, c.time_stripe_width, c.freq_stripes,
                                c.freq_stripe_width, c.specaugment_per_example)
            if c.mixup:
                z, box["targets"] = mixup(z, box["targets"], c.mixup_alpha, self.generator)
            return z

        return fn, box

    def train_step(self) -> float:
        idx = self.sampler.draw(self.config.batch_size)
        wave = make_batch(self.train_data, idx, self.clip_samples, self.rng).to(self.device, non_blocking=True)
        labels = torch.from_numpy(self.train_data.labels[idx]).to(self.device)
        targets = F.one_hot(labels, len(self.classes)).float()
        self.model.train()
        with autocast(self.device):
            x = self.frontend(wave)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            fn, box = self.augment(targets)
            logits, _ = self.model(x, augment=fn)
        logits = logits.float()
        if self.config.mixup:  # soft targets: per-class sigmoid + binary cross-entropy
            loss = F.binary_cross_entropy_with_logits(logits, box["targets"])
        else:
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        return float(loss.detach())

    # ---- validation and checkpoints ----------------------------------------------------
    @property
    def activation(self) -> str:
        return "sigmoid" if self.config.mixup else "softmax"

    def validate(self) -> dict[str, dict[str, Any]]:
        hop = round(self.config.eval_hop_seconds * self.config.sample_rate)
        variants = {"raw": self.model} | ({"ema": self.ema.model} if self.ema is not None else {})
        results = {}
        for name, network in variants.items():
            scores = score_clips(network, self.frontend, self.devel_data.audio, self.clip_samples, hop, self.activation)
            results[name] = classification_metrics(self.devel_data.labels, scores, self.classes)
        return results

    def model_info(self, metrics: dict[str, Any]) -> ModelInfo:
        return ModelInfo(
            model=self.config.model, classes=tuple(self.classes), reject_class=self.config.reject_class,
            activation=self.activation, frontend=self.frontend_config, clip_seconds=self.config.clip_seconds,
            config=self.config.to_dict(), metrics=metrics, data_summary=self.summary,
        )

    def keep_best(self, results: dict[str, dict[str, Any]]) -> None:
        name, metrics = max(results.items(), key=lambda kv: kv[1]["uar"])
        if metrics["uar"] > self.best_uar:
            self.best_uar = metrics["uar"]
            network = self.ema.model if name == "ema" else self.model
            self.best_metrics = {"step": self.step, "weights": name, "devel": _brief(metrics),
                                 "devel_all": {k: _brief(v) for k, v in results.items()}}
            save_checkpoint(self.out / BEST_NAME, network.state_dict(), self.model_info(self.best_metrics))
            logger.info("step %d: new best devel UAR %.4f (%s weights) -> %s", self.step, self.best_uar, name, self.out / BEST_NAME)

    def save_resume(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors |= {f"ema.{k}": v for k, v in self.ema.model.state_dict().items()}
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.generator"] = self.generator.get_state()
        meta = {"step": self.step, "config": self.config.to_dict(), "classes": self.classes,
                "sampler": self.sampler.state_dict(), "rng_numpy": self.rng.bit_generator.state,
                "best_uar": self.best_uar, "best_metrics": self.best_metrics}
        save_train_state(self.out / RESUME_NAME, tensors, self.optimizer, meta)

    def _load_resume(self) -> None:
        path = self.out / RESUME_NAME
        if not path.is_file():
            raise CheckpointError(f"{path}: nothing to resume from (no resume state in {self.out})")
        tensors, meta = load_train_state(path)
        saved = {k: v for k, v in meta["config"].items() if k != "iterations"}
        now = {k: v for k, v in self.config.to_dict().items() if k != "iterations"}
        if saved != now or meta["classes"] != self.classes:
            diff = sorted(k for k in now if saved.get(k) != now[k])
            raise CheckpointError(f"{path}: the run was started with a different config or classes (differs: {diff or 'classes'})")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if self.ema is not None:
            self.ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        restore_optimizer(self.optimizer, tensors, meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        self.generator.set_state(tensors["rng.generator"])
        self.sampler.load_state_dict(meta["sampler"])
        self.rng.bit_generator.state = meta["rng_numpy"]
        self.step, self.best_uar, self.best_metrics = meta["step"], meta["best_uar"], meta["best_metrics"]
        logger.info("resumed %s at step %d (best devel UAR so far %.4f)", self.out, self.step, self.best_uar)

    # ---- the loop ------------------------------------------------------------------------
    def run(self, progress: bool = True) -> dict[str, Any]:
        c = self.config
        log = open(self.out / LOG_NAME, "a", newline="")
        writer = csv.writer(log)
        if log.tell() == 0:
            writer.writerow(["step", "loss", "uar_raw", "map_raw", "uar_ema", "map_ema", "seconds"])
        bar = tqdm(total=c.iterations, initial=self.step, desc="train", unit="it", disable=not progress)
        start, losses = time.time(), []
        try:
            while self.step < c.iterations:
                losses.append(self.train_step())
                bar.update(1)
                if self.step % c.log_every == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-c.log_every:]):.4f}", best_uar=f"{max(self.best_uar, 0):.3f}")
                if self.step % c.eval_every == 0 or self.step == c.iterations:
                    results = self.validate()
                    self.keep_best(results)
                    ema = results.get("ema", {})
                    writer.writerow([self.step, f"{np.mean(losses[-c.eval_every:]):.5f}", f"{results['raw']['uar']:.4f}",
                                     f"{results['raw']['map']:.4f}", f"{ema.get('uar', float('nan')):.4f}",
                                     f"{ema.get('map', float('nan')):.4f}", f"{time.time() - start:.1f}"])
                    log.flush()
                    logger.info("step %d: loss %.4f, devel UAR raw %.4f%s", self.step, np.mean(losses[-c.eval_every:]),
                                results["raw"]["uar"], f", ema {ema['uar']:.4f}" if ema else "")
                    self.save_resume()
        except KeyboardInterrupt:
            logger.warning("interrupted at step %d; saving the resume state (use --resume to continue)", self.step)
            self.save_resume()
            raise
        finally:
            bar.close()
            log.close()
        return self.best_metrics


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("uar", "map", "accuracy", "n_clips", "per_class")}


def train(data_root: str | Path, out_dir: str | Path, config: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train on a labelled data set; writes ``best.safetensors`` (+ .json), ``resume.safetensors``
    and ``train_log.csv`` in ``out_dir``. Returns the best checkpoint's metrics."""
    return Trainer(data_root, out_dir, config, resume).run(progress)
