"""Embeddings: the penultimate layer of a trained network, for labelled clips or for the
windows of long recordings, written to one Parquet file.

The embedding is the network's ``forward`` second output: the ReLU output of the head's
first fully connected layer, the input of its output layer (512-d for CNN6/CNN10, 1024
for MobileNetV1, 2048 for ResNet22, 128 for WRN-28-2). A linear probe on it
(``probe.py``) therefore replaces exactly the network's last layer, so a probe is a full
scanning model.

- **Clips** (a labelled set in any layout ``data.load_splits`` reads): one row per clip.
  A clip up to the model's window is zero-padded to one window, as in training; a
  longer one is cut into the evaluation windows of ``clipaudio.eval_windows`` and its
  embedding is the mean (or ``pool="max"``) of theirs.
- **Recordings**: one row per window, on the scan's schedule (``windows.window_starts``
  every ``hop``, streamed with ``audio.stream_audio``). Every window goes through the
  network on its own (the scanner's exact mode), so a window is embedded exactly like
  a 3 s training clip and a probe trained on clips sees the same kind of vector.

Resumable like ``scan``: each part (one recording, or a batch of clips) is committed
under ``OUT/.embed-state`` (Parquet part first, then a JSON marker, each atomically); a
rerun with the same parameters skips committed parts, and the final file is assembled
from the parts in plan order, so an interrupted and resumed run writes the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import __version__
from .audio import AudioReadError, stream_audio
from .checkpoint import LoadedModel
from .clipaudio import decode_clips, eval_windows
from .data import UNLABELLED, Clip, DataError, detect_format, load_splits
from .devices import autocast
from .evaluate import model_padding
from .frontend import LogMel
from .fsutil import atomic_write, ensure_output_dir, write_csv, write_json
from .inference import ExactScorer, SampleBuffer, WindowScores
from .windows import hop_samples

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.parquet"
STATE_DIR = ".embed-state"
FAILURES_FILE = "embed_failures.csv"
METADATA_KEY = "primate_monitor"  # Parquet key-value metadata key holding the JSON description
CLIPS_PER_PART = 256  # clips committed together; small enough that an interruption loses little
POOLS = ("mean", "max")
INPUT_KINDS = ("auto", "clips", "recordings")
LAYER_DESCRIPTION = "penultimate: ReLU output of the head's first FC layer, the input of the output layer"


class EmbedError(ValueError):
    """An embedding run that must not start (parameters differ from OUT's, nothing to embed)."""


@dataclass
class EmbedSummary:
    """What one ``embed`` invocation did."""

    out: Path
    kind: str  # "clips" or "recordings"
    rows: int  # rows in embeddings.parquet
    parts: int  # parts in the plan
    done_before: int  # parts committed by an earlier run and skipped now
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)


@torch.no_grad()
def embed_windows(network: torch.nn.Module, frontend: LogMel, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(n, samples) waveforms -> (n, embedding_dim) float32 penultimate-layer outputs.

    Uses the network's own ``forward`` (its second output), so the layer is the one the
    output layer reads for every architecture; eval mode means no dropout."""
    device = next(network.parameters()).device
    out = []
    for i in range(0, len(windows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch_size], dtype=np.float32)).to(device)
        with autocast(device):
            _, embedding = network(frontend(x))
        out.append(embedding.float().cpu().numpy())
    dim = getattr(network, "embedding_dim", 0)
    return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


def embed_clip_audio(model: LoadedModel, audios: list[np.ndarray], pool: str = "mean", batch_size: int = 64) -> np.ndarray:
    """(clips, dim) embeddings of decoded clips: one window for a short clip (padded as
    ``evaluate`` pads it for this model), the mean (or max) over evaluation windows
    (every 1 s) for a long one."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    info = model.info
    network = model.network.eval()
    frontend = LogMel(info.frontend).to(next(network.parameters()).device)
    clip_samples = round(info.clip_seconds * info.sample_rate)
    hop = round(1.0 * info.sample_rate)
    padding = model_padding(model)  # short clips are padded as the network saw them in training
    windows, owners = [], []
    for i, audio in enumerate(audios):
        w = eval_windows(audio, clip_samples, hop, padding)
        windows.append(w)
        owners += [i] * len(w)
    if not windows:
        return np.zeros((0, network.embedding_dim), dtype=np.float32)
    emb = embed_windows(network, frontend, np.concatenate(windows), batch_size)
    owners_arr = np.asarray(owners)
    reduce = np.mean if pool == "mean" else np.max
    return np.stack([reduce(emb[owners_arr == i], axis=0) for i in range(len(audios))]).astype(np.float32)


class EmbeddingScorer(ExactScorer):
    """The scanner's exact window-by-window pass, returning embeddings instead of scores."""

    @torch.no_grad()
    def score(self, starts: np.ndarray, buf: SampleBuffer) -> WindowScores:
        batch = np.stack([buf.get(int(s), int(s) + self.window) for s in starts])
        return WindowScores(np.asarray(starts, dtype=np.int64), embed_windows(self.network, self.frontend, batch, self.batch_size))


@dataclass
class RecordingEmbeddings:
    """Every window's embedding for one recording."""

    starts_s: np.ndarray  # (windows,)
    embeddings: np.ndarray  # (windows, dim)
    duration_s: float  # audio actually decoded
    error: AudioReadError | None = None  # a decode error after some audio was embedded


def embed_recording(path: str | Path, model: LoadedModel, hop_seconds: float = 1.0, channel: int | None = None,
                    batch_size: int = 32, blocks: Iterable[np.ndarray] | None = None) -> RecordingEmbeddings:
    """Stream a recording and embed every window of the scan's schedule (exact mode).

    Raises AudioReadError when nothing could be read; a decode error later keeps the
    windows embedded so far and is returned in ``error`` (as ``scan`` does)."""
    sr = model.info.sample_rate
    source = blocks if blocks is not None else stream_audio(path, sr, channel)
    n_samples, error = 0, None

    def tracked() -> Iterator[np.ndarray]:
        nonlocal n_samples, error
        try:
            for block in source:
                n_samples += len(block)
                yield block
        except AudioReadError as e:
            if n_samples == 0:
                raise
            error = e
            logger.warning("%s: %s; keeping the %.1f s embedded before it", path, e, n_samples / sr)

    scorer = EmbeddingScorer(model, hop_samples(hop_seconds, sr), batch_size)
    parts = list(scorer.run(tracked()))
    if n_samples == 0:
        raise AudioReadError(path, "no_samples", "no audio samples could be decoded")
    starts = np.concatenate([p.starts for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    emb = np.concatenate([p.scores for p in parts]) if parts else np.zeros((0, model.network.embedding_dim), np.float32)
    return RecordingEmbeddings(starts / sr, emb, n_samples / sr, error)


def embeddings_table(recording: list[str], begin_s: np.ndarray, end_s: np.ndarray, labels: list[str | None],
                     splits: list[str | None], embeddings: np.ndarray) -> pa.Table:
    """The Parquet layout: one row per clip or window; the vector as a fixed-size float32 list."""
    dim = embeddings.shape[1]
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1), pa.float32())
    return pa.table({
        "recording": pa.array(recording, pa.string()),
        "begin_s": pa.array(np.asarray(begin_s, dtype=np.float64), pa.float64()),
        "end_s": pa.array(np.asarray(end_s, dtype=np.float64), pa.float64()),
        "label": pa.array(labels, pa.string()),
        "split": pa.array(splits, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
    })


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
    """(rows without the vectors, (rows, dim) float32 matrix, metadata) of an embeddings file."""
    path = Path(path)
    if path.is_dir():
        path = path / EMBEDDINGS_FILE
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read as Parquet ({e})") from e
    missing = {"recording", "begin_s", "label", "split", "embedding"} - set(table.column_names)
    if missing:
        raise DataError(f"{path}: not an embeddings file, missing column(s) {sorted(missing)}")
    raw = (table.schema.metadata or {}).get(METADATA_KEY.encode())
    meta = json.loads(raw) if raw is not None else {}
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size if pa.types.is_fixed_size_list(column.type) else int(meta.get("embedding_dim", 0))
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), dim)
    rows = table.drop_columns(["embedding"]).to_pandas()
    return rows, vectors, meta


@dataclass(frozen=True)
class Part:
    """A unit of work committed on its own: one recording, or a batch of clips."""

    key: str
    items: tuple[Any, ...]  # (rel, path) for recordings; Clip objects for clips


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class EmbedRun:
    """One invocation of ``embed``: plan, resume check, parts, final file."""

    def __init__(self, model: LoadedModel, inputs: list[str | Path], out: str | Path, kind: str = "auto",
                 hop_seconds: float = 1.0, pool: str = "mean", channel: int | None = None, batch_size: int = 32,
                 data_overrides: dict[str, Any] | None = None, skip_bad: bool = False) -> None:
        if kind not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {INPUT_KINDS}, got {kind!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        hop_samples(hop_seconds, model.info.sample_rate)  # checked before anything is written
        self.model, self.out = model, Path(out)
        self.inputs = [Path(p) for p in inputs]
        self.kind = resolve_input_kind(self.inputs, kind)
        self.hop, self.pool, self.channel, self.batch_size = hop_seconds, pool, channel, batch_size
        self.data_overrides, self.skip_bad = dict(data_overrides or {}), skip_bad
        self.state = self.out / STATE_DIR
        self.data_root: Path | None = None
        self.folder_errors: list[tuple[str, str]] = []
        self.parts = self._plan_clips() if self.kind == "clips" else self._plan_recordings()

    # planning -------------------------------------------------------------------------

    def _plan_clips(self) -> list[Part]:
        from .evaluate import _data_config

        if len(self.inputs) != 1 or not self.inputs[0].is_dir():
            raise DataError(f"a labelled clip set is one folder; got {', '.join(map(str, self.inputs))}")
        self.data_root = self.inputs[0]
        config = _data_config(self.model, {"cache_dir": None, "skip_bad": self.skip_bad} | self.data_overrides)
        self.splits = load_splits(self.data_root, config)
        clips = [(split, c) for split, items in self.splits.items() for c in items]
        if not clips:
            raise DataError(f"{self.data_root}: no clips found")
        return [Part(f"clips-{i // CLIPS_PER_PART:05d}", tuple(clips[i : i + CLIPS_PER_PART]))
                for i in range(0, len(clips), CLIPS_PER_PART)]

    def _plan_recordings(self) -> list[Part]:
        from .scan_run import plan_recordings

        plan = plan_recordings(list(self.inputs))
        self.folder_errors = [(folder, f"cannot list this folder ({reason})") for folder, reason in plan.folder_errors]
        return [Part(f"rec-{r.key}", ((r.rel, r.path),)) for r in plan.recordings]

    def _item_ids(self) -> list[str]:
        if self.kind == "clips":
            return [f"{split}:{c.path}:{c.label}:{c.start_s}:{c.end_s}" for p in self.parts for split, c in p.items]
        return [str(path) for p in self.parts for _, path in p.items]

    def params(self) -> dict[str, Any]:
        """What determines the output; a resumed run must match it exactly."""
        plan = hashlib.sha1("\n".join(self._item_ids()).encode()).hexdigest()
        p: dict[str, Any] = {"kind": self.kind, "inputs": [str(x.resolve()) for x in self.inputs],
                             "checkpoint_sha256": self.model.sha256, "plan_sha1": plan,
                             "clips_per_part": CLIPS_PER_PART if self.kind == "clips" else None}
        if self.kind == "clips":
            p |= {"pool": self.pool, "data_overrides": self.data_overrides}
        else:
            p |= {"hop_seconds": self.hop, "channel": self.channel}
        return p

    # state ----------------------------------------------------------------------------

    def _begin(self, overwrite: bool) -> None:
        params_path = self.state / "params.json"
        if overwrite:
            for target in (self.state, self.out / EMBEDDINGS_FILE, self.out / FAILURES_FILE):
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        if params_path.is_file():
            saved = json.loads(params_path.read_text())["params"]
            if saved != self.params():
                diff = sorted(k for k in set(saved) | set(self.params()) if saved.get(k) != self.params().get(k))
                raise EmbedError(f"{self.out} holds embeddings made with different parameters or inputs "
                                 f"(differs: {', '.join(diff)}); rerun the same command to resume, or pass --overwrite")
            return
        if (self.out / EMBEDDINGS_FILE).exists():
            raise EmbedError(f"{self.out / EMBEDDINGS_FILE} exists but was not made by a resumable run here; "
                             "use --overwrite or another -o")
        self.state.mkdir(parents=True, exist_ok=True)
        write_json(params_path, {"params": self.params(), "started": _now()}, sort_keys=True)

    def _record(self, part: Part) -> dict[str, Any] | None:
        path = self.state / f"{part.key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _commit(self, part: Part, table: pa.Table | None, record: dict[str, Any]) -> None:
        """Part file first, the JSON marker last: a part counts as done only once both landed."""
        if table is not None:
            with atomic_write(self.state / f"{part.key}.parquet") as tmp:
                pq.write_table(table, tmp)
        write_json(self.state / f"{part.key}.json", record, sort_keys=True)

    # work -----------------------------------------------------------------------------

    def _embed_clip_part(self, part: Part) -> tuple[pa.Table | None, dict[str, Any]]:
        assert self.data_root is not None
        sr = self.model.info.sample_rate
        clips: list[Clip] = [c for _, c in part.items]
        split_of = {id(c): s for s, c in part.items}
        good, audio, bad = decode_clips(clips, sr, None, 1, self.skip_bad)
        emb = embed_clip_audio(self.model, audio, self.pool, self.batch_size)
        names = [_relative(c.path, self.data_root) for c in good]
        begin = np.array([c.start_s for c in good], dtype=np.float64)
        end = begin + np.array([len(a) / sr for a in audio], dtype=np.float64)
        labels = [None if c.label == UNLABELLED else c.label for c in good]
        table = embeddings_table(names, begin, end, labels, [split_of[id(c)] for c in good], emb) if good else None
        failed = [[f"{_relative(c.path, self.data_root)}@{c.start_s:.3f}", reason] for c, reason in bad]
        return table, {"status": "ok", "rows": len(good), "failed": failed}

    def _embed_recording_part(self, part: Part) -> tuple[pa.Table | None, dict[str, Any]]:
        rel, path = part.items[0]
        try:
            result = embed_recording(path, self.model, self.hop, self.channel, self.batch_size)
        except AudioReadError as e:
            logger.warning("cannot embed %s", e)
            return None, {"status": "failed", "rows": 0, "failed": [[rel, str(e)]]}
        n = len(result.starts_s)
        end = np.minimum(result.starts_s + self.model.info.clip_seconds, result.duration_s)
        table = embeddings_table([rel] * n, result.starts_s, end, [None] * n, [None] * n, result.embeddings)
        status = "partial" if result.error is not None else "ok"
        failed = [[rel, str(result.error)]] if result.error is not None else []
        return table, {"status": status, "rows": n, "failed": failed, "duration_s": result.duration_s}

    def run(self, overwrite: bool = False, progress: bool = True) -> EmbedSummary:
        """Embed every part not yet committed, then assemble embeddings.parquet in plan order."""
        from tqdm import tqdm

        ensure_output_dir(self.out)
        self._begin(overwrite)
        # failed recordings are tried again, as scan does: a copy or permission may have been fixed
        todo = [p for p in self.parts if (self._record(p) or {"status": "failed"})["status"] == "failed"]
        done_before = len(self.parts) - len(todo)
        if done_before:
            logger.info("resuming: %d of %d parts already embedded in %s", done_before, len(self.parts), self.out)
        for part in tqdm(todo, desc="embed", unit="part", disable=not progress):
            work = self._embed_clip_part if self.kind == "clips" else self._embed_recording_part
            table, record = work(part)
            self._commit(part, table, record)
        return self._finalize(done_before)

    def _finalize(self, done_before: int) -> EmbedSummary:
        tables, failed = [], list(self.folder_errors)
        for part in self.parts:
            record = self._record(part) or {}
            failed += [tuple(f) for f in record.get("failed", [])]
            if record.get("rows", 0):
                tables.append(pq.read_table(self.state / f"{part.key}.parquet"))
        if not tables:
            raise EmbedError(f"nothing could be embedded from {', '.join(map(str, self.inputs))}")
        table = pa.concat_tables(tables)
        table = table.replace_schema_metadata({METADATA_KEY.encode(): json.dumps(self.metadata(table), sort_keys=True).encode()})
        with atomic_write(self.out / EMBEDDINGS_FILE) as tmp:
            pq.write_table(table, tmp)
        if failed:
            write_csv(pd.DataFrame(failed, columns=["item", "reason"]), self.out / FAILURES_FILE)
        elif (self.out / FAILURES_FILE).exists():
            (self.out / FAILURES_FILE).unlink()  # ours, from an earlier run whose failures are now fixed
        return EmbedSummary(self.out, self.kind, len(table), len(self.parts), done_before, failed)

    def metadata(self, table: pa.Table) -> dict[str, Any]:
        """The file's description: which checkpoint (name, path, sha256, architecture) and layer."""
        info = self.model.info
        return {
            "format": "primate-monitor-embeddings", "version": __version__,
            "checkpoint": {"name": self.model.name, "path": str(self.model.path.resolve()), "sha256": self.model.sha256,
                           "model": info.model, "classes": list(info.classes), "reject_class": info.reject_class,
                           "sample_rate": info.sample_rate, "clip_seconds": info.clip_seconds},
            "layer": LAYER_DESCRIPTION, "embedding_dim": int(table.schema.field("embedding").type.list_size),
            "params": self.params(), "rows": len(table),
        }


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_input_kind(inputs: list[Path], kind: str) -> str:
    """``auto``: one folder in the ComParE layout (``lab/``) is a labelled clip set;
    anything else is recordings. Class folders and Raven tables look like deployments
    (site folders, truth tables beside recordings), so they need ``clips`` said outright."""
    if kind != "auto":
        return kind
    if len(inputs) == 1 and inputs[0].is_dir() and detect_format(inputs[0]) == "compare":
        logger.info("%s: ComParE layout, embedding its labelled clips", inputs[0])
        return "clips"
    logger.info("embedding recordings (windows every hop); pass --input clips for a labelled clip set")
    return "recordings"


def embed(model: LoadedModel, inputs: list[str | Path], out: str | Path, kind: str = "auto", hop_seconds: float = 1.0,
          pool: str = "mean", channel: int | None = None, batch_size: int = 32,
          data_overrides: dict[str, Any] | None = None, skip_bad: bool = False, overwrite: bool = False,
          progress: bool = True) -> EmbedSummary:
    """Write ``out/embeddings.parquet`` for a labelled clip set or recordings; resumes an
    interrupted run with the same parameters (see the module docstring)."""
    run = EmbedRun(model, inputs, out, kind, hop_seconds, pool, channel, batch_size, data_overrides, skip_bad)
    return run.run(overwrite, progress)
