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
from .checkpoint import CheckpointError, ModelInfo, fit_weights, read_metadata, read_tensors, save_checkpoint
from .clipaudio import decode_clips, pad_train
from .config import RUN_OPTIONS, TrainConfig
from .data import Clip, DataError, add_reviewed, check_classes, load_splits, summarize
from .fsutil import atomic_write, ensure_output_dir, write_csv
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
SKIPPED_NAME = "skipped_clips.csv"
LOG_COLUMNS = ["step", "loss", "uar_raw", "map_raw", "uar_ema", "map_ema", "seconds"]
# what train writes into OUT (the decoded-audio cache aside): what makes a folder a run,
# and all that --overwrite removes
INT8_NAME = "best.int8.safetensors"  # quantize.calibration_path(BEST_NAME): the int8 calibration
RUN_FILES = (BEST_NAME, "best.json", RESUME_NAME, LOG_NAME, SKIPPED_NAME, INT8_NAME)


class RunExistsError(ValueError):
    """OUT already holds a training run and neither --resume nor --overwrite was given."""


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> list[Path]:
    """The earlier run's files in ``out`` that this run will replace (only with ``overwrite``).

    Why: training into a folder that holds a run would silently replace its checkpoints
    and mix two runs in one log; the user must say whether to continue it (--resume) or
    replace it (--overwrite), and --overwrite touches only files that train writes.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in OUT, or replace it")
    if resume:
        return []
    existing = [out / name for name in RUN_FILES if (out / name).exists()]
    if overwrite:
        return existing
    if any(p.name != SKIPPED_NAME for p in existing):
        raise RunExistsError(
            f"{out} already holds a training run ({', '.join(p.name for p in existing)}); "
            f"use --resume to continue it, another -o for a new run, or --overwrite to replace it"
        )
    return existing  # at most a stale skipped-clips list from an attempt that never trained


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


def make_batch(data: LabelledAudio, idx: np.ndarray, clip_samples: int, rng: np.random.Generator,
               padding: str = "zeros_end", pin: bool = False) -> torch.Tensor:
    """(batch, samples) float32: random crops of long clips, short ones padded by ``padding``
    (``clipaudio.pad_train``), gathered straight into one buffer; ``pin`` (for a GPU): page-locked,
    so that the copy to the device runs while the host goes on."""
    batch = torch.empty((len(idx), clip_samples), dtype=torch.float32, pin_memory=pin)
    np.stack([pad_train(data.audio[i], clip_samples, padding, rng) for i in idx], out=batch.numpy())
    return batch


def init_weights(model: torch.nn.Module, path: str | Path, config: TrainConfig, classes: list[str]) -> None:
    """Start from a checkpoint's weights (fine-tuning, e.g. a round of hard negatives) instead
    of random ones. The checkpoint must be the same network for the same classes at the same
    rate: anything else would silently learn a different task, so it is refused."""
    meta = read_metadata(path)
    theirs = {"model": meta.get("model"), "classes": list(meta.get("classes", [])),
              "sample_rate": (meta.get("frontend") or {}).get("sample_rate")}
    ours = {"model": config.model, "classes": list(classes), "sample_rate": config.sample_rate}
    differ = [f"{k} {theirs[k]!r} (this run: {ours[k]!r})" for k in ours if theirs[k] != ours[k]]
    if differ:
        raise CheckpointError(f"{path}: init_from checkpoint does not match this run: {'; '.join(differ)}")
    fit_weights(model, read_tensors(path), path, f"a {config.model} with {len(classes)} classes")
    logger.info("starting from the weights of %s", path)


class Trainer:
    """Holds the state of one run; ``run()`` is the loop."""

    def __init__(self, data_root: str | Path, out_dir: str | Path, config: TrainConfig, resume: bool = False,
                 overwrite: bool = False, reviewed: list[str | Path] | tuple = ()) -> None:
        self.config, self.out = config, ensure_output_dir(out_dir)
        replaced = check_run_folder(self.out, resume, overwrite)
        if resume and not (self.out / RESUME_NAME).is_file():
            raise CheckpointError(f"{self.out / RESUME_NAME}: nothing to resume from (no resume state in {self.out})")
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        splits = load_splits(data_root, config)
        self.reviewed = sorted(str(Path(p).resolve()) for p in reviewed)  # review tables added to train
        if reviewed:
            splits = add_reviewed(splits, list(reviewed), config)
        if not splits.get(config.train_split):
            raise DataError(f"{data_root}: split {config.train_split!r} is missing or empty")
        if not splits.get(config.devel_split):
            raise DataError(f"{data_root}: split {config.devel_split!r} is missing or empty; validation needs it")
        self.classes = check_classes(splits, config)
        self.model = create_model(config.model, len(self.classes))
        if config.init_from:  # before any clip is decoded: a wrong checkpoint fails at once
            init_weights(self.model, config.init_from, config, self.classes)
        cache = Path(config.cache_dir) if config.cache_dir else self.out / "cache"
        self.train_data = prepare_split(splits[config.train_split], self.classes, config, cache, config.train_split)
        devel = [c for c in splits[config.devel_split] if c.label != "?"]
        self.devel_data = prepare_split(devel, self.classes, config, cache, config.devel_split)
        self._check_coverage()
        for path in replaced:  # only now that the data is known to be usable
            path.unlink(missing_ok=True)
            logger.info("removed %s, written by an earlier run", path)
        self._report_bad()
        # counts of the clips actually used (after --skip-bad), stored in the checkpoint
        self.summary = summarize({config.train_split: self.train_data.clips, config.devel_split: self.devel_data.clips})
        self.frontend_config = FrontEndConfig(sample_rate=config.sample_rate)
        self.frontend = LogMel(self.frontend_config).to(self.device)
        self.model = self.model.to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, amsgrad=config.amsgrad)
        self.ema = EMA(self.model, config.ema_decay, config.ema_start) if config.ema else None
        self.sampler = SAMPLERS[config.sampler](self.train_data.labels.tolist(), len(self.classes), config.seed)
        self.rng = np.random.default_rng(config.seed + 1)  # crop offsets, padding
        self.generator = torch.Generator().manual_seed(config.seed + 2)  # MixUp, SpecAugment
        self.clip_samples = round(config.clip_seconds * config.sample_rate)
        self.step, self.best_uar, self.best_metrics = 0, -1.0, {}
        if resume:
            self._load_resume()

    def _check_coverage(self) -> None:
        """Every class needs a readable training clip (the sampler draws from each); a class
        without devel clips is left out of UAR, which the user must be told."""
        train_counts = np.bincount(self.train_data.labels, minlength=len(self.classes))
        empty = [self.classes[k] for k in np.flatnonzero(train_counts == 0)]
        if empty:
            skipped = [str(c.path) for c, _ in self.train_data.bad if c.label in empty]
            raise DataError(
                f"class(es) {', '.join(map(repr, empty))} have no readable training clip left"
                + (f" after --skip-bad skipped {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}" if skipped else "")
                + "; fix or replace those files, or remove the class"
            )
        devel_counts = np.bincount(self.devel_data.labels, minlength=len(self.classes))
        missing = [self.classes[k] for k in np.flatnonzero(devel_counts == 0)]
        if missing:
            logger.warning("no %s clip of class(es) %s: devel UAR and mAP are averaged over %d of %d classes",
                           self.config.devel_split, ", ".join(map(repr, missing)), len(self.classes) - len(missing),
                           len(self.classes))


    def _report_bad(self) -> None:
        bad = self.train_data.bad + self.devel_data.bad
        if bad:
            import pandas as pd

            path = self.out / SKIPPED_NAME
            write_csv(pd.DataFrame([(str(c.path), c.label, reason) for c, reason in bad], columns=["path", "label", "reason"]), path)
            logger.warning("skipped %d unreadable clip(s), listed in %s", len(bad), path)

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

    def train_step(self) -> torch.Tensor:
        """One optimisation step; returns the loss as a 0-d tensor on the device, so that the
        loop does not wait for the GPU every step (``run`` reads the losses when it logs)."""
        idx = self.sampler.draw(self.config.batch_size)
        # every copy to the device is non-blocking, and nothing in the step reads a device value:
        # a blocking copy would make the host wait for the GPU's queued work every step, so the
        # next batch could not be cut while the GPU computes (tests/test_cuda.py checks this)
        wave = make_batch(self.train_data, idx, self.clip_samples, self.rng, self.config.padding,
                          pin=self.device.type == "cuda").to(self.device, non_blocking=True)
        labels_cpu = torch.from_numpy(self.train_data.labels[idx])
        labels = labels_cpu.to(self.device, non_blocking=True)
        targets = F.one_hot(labels_cpu, len(self.classes)).float().to(self.device, non_blocking=True)
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
        return loss.detach()

    # ---- validation and checkpoints ----------------------------------------------------
    @property
    def activation(self) -> str:
        return "sigmoid" if self.config.mixup else "softmax"

    def validate(self) -> dict[str, dict[str, Any]]:
        hop = round(self.config.eval_hop_seconds * self.config.sample_rate)
        variants = {"raw": self.model} | ({"ema": self.ema.model} if self.ema is not None else {})
        results = {}
        for name, network in variants.items():
            scores = score_clips(network, self.frontend, self.devel_data.audio, self.clip_samples, hop, self.activation,
                                 padding=self.config.padding)
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
                "best_uar": self.best_uar, "best_metrics": self.best_metrics, "reviewed": self.reviewed}
        save_train_state(self.out / RESUME_NAME, tensors, self.optimizer, meta)

    def _load_resume(self) -> None:
        path = self.out / RESUME_NAME
        tensors, meta = load_train_state(path)
        saved = {k: v for k, v in meta["config"].items() if k not in RUN_OPTIONS}
        now = self.config.recipe()
        if meta.get("reviewed", []) != self.reviewed:
            raise CheckpointError(f"{path}: the run was started with other --add-reviewed tables "
                                  f"({meta.get('reviewed', [])}); resume it with the same ones")
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

    # ---- the log ---------------------------------------------------------------------------
    def _earlier_log_rows(self) -> list[list[str]]:
        """Rows of this run's log up to the resumed step: a row written after the last saved
        state (the run was killed between the two) is dropped, as that step is trained again."""
        path = self.out / LOG_NAME
        if self.step == 0 or not path.is_file():
            return []
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0] != LOG_COLUMNS:
            raise DataError(f"{path}: not a train log of this version (header {rows[:1]}); move it away to resume")
        try:
            return [r for r in rows[1:] if r and int(r[0]) <= self.step]
        except ValueError as e:
            raise DataError(f"{path}: unreadable step in the train log: {e}") from e

    def _write_log(self, rows: list[list[str]]) -> None:
        """The whole log, rewritten atomically: it is small, and a reader never sees half a row."""
        with atomic_write(self.out / LOG_NAME) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(LOG_COLUMNS)
            writer.writerows(rows)

    # ---- the loop ------------------------------------------------------------------------
    def run(self, progress: bool = True) -> dict[str, Any]:
        c = self.config
        log_rows = self._earlier_log_rows()
        bar = tqdm(total=c.iterations, initial=self.step, desc="train", unit="it", disable=not progress)
        start, losses, pending = time.time(), [], []
        try:
            while self.step < c.iterations:
                pending.append(self.train_step())
                bar.update(1)
                due_eval = self.step % c.eval_every == 0 or self.step == c.iterations
                if self.step % c.log_every == 0 or due_eval:  # one device sync per log, not per step
                    losses += torch.stack(pending).float().cpu().tolist()
                    pending.clear()
                if self.step % c.log_every == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-c.log_every:]):.4f}", best_uar=f"{max(self.best_uar, 0):.3f}")
                if due_eval:
                    results = self.validate()
                    self.keep_best(results)
                    ema = results.get("ema", {})
                    log_rows.append([str(self.step), f"{np.mean(losses[-c.eval_every:]):.5f}", f"{results['raw']['uar']:.4f}",
                                     f"{results['raw']['map']:.4f}", f"{ema.get('uar', float('nan')):.4f}",
                                     f"{ema.get('map', float('nan')):.4f}", f"{time.time() - start:.1f}"])
                    self._write_log(log_rows)
                    logger.info("step %d: loss %.4f, devel UAR raw %.4f%s", self.step, np.mean(losses[-c.eval_every:]),
                                results["raw"]["uar"], f", ema {ema['uar']:.4f}" if ema else "")
                    self.save_resume()
        except KeyboardInterrupt:
            logger.warning("interrupted at step %d; saving the resume state", self.step)
            self.save_resume()
            raise
        finally:
            bar.close()
        self.calibrate_int8()
        return self.best_metrics

    def calibrate_int8(self) -> None:
        """Calibrate best.safetensors for int8 scans on a seeded draw of the training clips.

        Why here: ``scan --precision auto`` runs int8 (about 1.6x faster on the CPU) only for a
        checkpoint with a calibration whose own check found int8 deciding as fp32 does; making it
        now, from audio already in memory, gives every trained model that chance without a
        separate ``quantize`` step. A network torch cannot quantise gets a warning, not a failed run."""
        seconds = self.config.int8_calibration_seconds
        best = self.out / BEST_NAME
        if seconds <= 0 or not best.is_file():
            return
        from .checkpoint import load_checkpoint
        from .quantize import calibrate_audio

        sr = self.config.sample_rate
        order = np.random.default_rng(self.config.seed + 3).permutation(len(self.train_data.audio))
        chosen, total = [], 0
        for i in order:
            if total >= seconds * sr:
                break
            chosen.append(int(i))
            total += len(self.train_data.audio[i])
        try:
            model = load_checkpoint(best, torch.device("cpu"))
            stream = np.concatenate([self.train_data.audio[i] for i in chosen])[: int(seconds * sr)].astype(np.float32)
            calibrate_audio(model, [stream], sources={"files": [f"{len(chosen)} training clips"], "skipped": []})
        except Exception as e:  # noqa: BLE001 - the trained model is saved; int8 is an extra
            logger.warning("no int8 calibration for %s (scans will run in fp32): %s", best, e)


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("uar", "map", "accuracy", "n_clips", "per_class")}


def train(data_root: str | Path, out_dir: str | Path, config: TrainConfig, resume: bool = False, progress: bool = True,
          overwrite: bool = False, reviewed: list[str | Path] | tuple = ()) -> dict[str, Any]:
    """Train on a labelled data set; writes ``best.safetensors`` (+ .json), ``resume.safetensors``
    and ``train_log.csv`` in ``out_dir``. Returns the best checkpoint's metrics.

    ``out_dir`` must not hold another run unless ``resume`` (continue it) or ``overwrite``
    (replace its files) says what to do with it; RunExistsError otherwise. ``reviewed``: filled-in
    review tables (files or folders) whose verdicts become extra training clips (``data.add_reviewed``)."""
    return Trainer(data_root, out_dir, config, resume, overwrite, reviewed).run(progress)
