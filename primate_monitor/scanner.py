"""One recording → window scores → detection events: the library's ``scan_recording``.

The whole-run machinery (many files, resume, outputs) is in ``scan_run``; this module
knows one recording at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from .audio import BLOCK_SECONDS, AudioInfo, AudioReadError, probe, stream_audio
from .checkpoint import LoadedModel, load_checkpoint
from .events import EventContext, EventOptions, build_events, validate_options
from .inference import MODES, make_scorer, score_stream, score_streams
from .quantize import PRECISIONS
from .timestamps import recording_start
from .windows import hop_samples

logger = logging.getLogger(__name__)


MIN_HOP_SECONDS = 0.01  # finer than one front-end frame (10 ms) scores the same audio again and again


@dataclass(frozen=True)
class ScanConfig:
    """How a recording is scanned. Everything that changes the results is here."""

    hop_seconds: float = 1.0  # seconds between window starts
    events: EventOptions = field(default_factory=EventOptions)  # thresholds and merging
    mode: str = "auto"  # auto (fast when windows overlap) | fast (shared convolutions) | exact (each window on its own)
    channel: int | None = None  # 0-based channel to scan; None mixes down to mono
    batch_size: int = 32  # windows per network call in exact mode
    block_seconds: float = BLOCK_SECONDS  # source audio decoded per read, s
    # use the checkpoint's calibrated per-species thresholds for species that ``events`` gives no
    # threshold of their own; False when the user chose one threshold for all (a bare --threshold)
    model_thresholds: bool = True
    # auto (int8 where the checkpoint's calibration showed it agrees with fp32, on the CPU; else
    # fp32: int8_check.auto_precision) | fp32 | int8 (insists: CPU only, needs the calibration)
    precision: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.hop_seconds, bool) or not isinstance(self.hop_seconds, (int, float)) \
                or not math.isfinite(self.hop_seconds) or self.hop_seconds < MIN_HOP_SECONDS:
            raise ValueError(f"hop must be a finite number of seconds >= {MIN_HOP_SECONDS}, got {self.hop_seconds!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.channel is not None and self.channel < 0:
            raise ValueError(f"channel must be >= 0 (0-based), got {self.channel}")

    def hop_samples(self, sample_rate: int) -> int:
        """The hop in samples at the model's ``sample_rate`` (``windows.hop_samples``: at least one)."""
        return hop_samples(self.hop_seconds, sample_rate)

    def parameters(self) -> dict:
        """The settings that determine the detections, for run.json and resume checks. ``precision``
        is named only when it is not fp32, so scans made before int8 existed still resume; a
        scan resolves ``auto`` first (``prepare_scan``), so the precision that ran is recorded."""
        e = self.events
        return {"hop_seconds": self.hop_seconds, "mode": self.mode, "channel": self.channel,
                "threshold": e.threshold, "class_thresholds": dict(sorted(e.class_thresholds.items())),
                "report_classes": list(e.classes) if e.classes else None, "min_windows": e.min_windows,
                "max_gap_s": e.max_gap_s} | ({"precision": self.precision} if self.precision != "fp32" else {})


@dataclass
class RecordingScores:
    """Every window's scores for one recording, plus what we know about the file."""

    path: Path
    info: AudioInfo
    start: datetime | None  # UTC start of the recording, None when unknown
    starts_s: np.ndarray  # (windows,) start of each window, s
    scores: np.ndarray  # (windows, classes)
    duration_s: float  # audio actually decoded, s
    truncated: bool  # the header promised more than the file holds
    error: AudioReadError | None = None  # a decode error after some audio was scanned


def counted(blocks: Iterable[np.ndarray], on_block: Callable[[int], None] | None) -> Iterator[np.ndarray]:
    """Pass blocks through, reporting each block's length (for progress bars)."""
    for block in blocks:
        if on_block is not None:
            on_block(len(block))
        yield block


class _TrackedStream:
    """One recording's blocks, counted; a decode error after some audio is kept, not raised."""

    def __init__(self, path: Path, model: LoadedModel, config: ScanConfig, blocks: Iterable[np.ndarray] | None,
                 on_block: Callable[[int], None] | None) -> None:
        self.path, self.config, self.on_block = path, config, on_block
        self.sample_rate = model.info.sample_rate
        self.source = blocks
        self.info: AudioInfo | None = None
        self.n_samples = 0
        self.error: AudioReadError | None = None

    def blocks(self) -> Iterator[np.ndarray]:
        self.info = probe(self.path)
        source = self.source if self.source is not None else stream_audio(
            self.path, self.sample_rate, self.config.channel, self.config.block_seconds)
        try:
            for block in counted(source, self.on_block):
                self.n_samples += len(block)
                yield block
        except AudioReadError as e:
            if self.n_samples == 0:
                raise
            self.error = e
            logger.warning("%s; keeping the %.1f s scanned before it", e, self.n_samples / self.sample_rate)

    def result(self, starts: np.ndarray, scores: np.ndarray) -> RecordingScores:
        if self.n_samples == 0:
            raise AudioReadError(self.path, "no_samples", "no audio samples could be decoded")
        assert self.info is not None
        sr = self.sample_rate
        return RecordingScores(self.path, self.info, recording_start(self.path, self.info.comment), starts / sr, scores,
                               self.n_samples / sr, self.info.truncated, self.error)


def score_recording(path: str | Path, model: LoadedModel, config: ScanConfig,
                    blocks: Iterable[np.ndarray] | None = None,
                    on_block: Callable[[int], None] | None = None) -> RecordingScores:
    """Stream ``path`` through the model. ``blocks`` may be supplied by a prefetching reader.

    Raises AudioReadError when nothing could be read. A decode error after some audio
    keeps the windows scored so far and is returned in ``error``.
    """
    config = resolve_precision(model, config)
    stream = _TrackedStream(Path(path), model, config, blocks, on_block)
    hop = config.hop_samples(model.info.sample_rate)
    result = score_stream(model, stream.blocks(), hop, config.batch_size, config.mode, precision=config.precision)
    return stream.result(result.starts, result.scores)


def score_recordings(paths: Sequence[str | Path], model: LoadedModel, config: ScanConfig, workers: int = 1,
                     on_block: Callable[[int], None] | None = None,
                     spans_per_call: int | None = None,
                     blocks: Sequence[Iterable[np.ndarray] | None] | None = None,
                     ) -> Iterator[tuple[Path, RecordingScores | AudioReadError]]:
    """Score many recordings, ``workers`` decoded at a time, their spans batched together.

    Why: on a GPU one decoder cannot keep the device busy, so ``workers`` threads decode and
    resample recordings side by side while one network call scores spans from all of them
    (``inference.score_streams``). The scores equal ``score_recording``'s up to float rounding.
    Yields ``(path, RecordingScores)`` in the order of ``paths``, or ``(path, AudioReadError)``
    for a file that could not be read at all. ``on_block`` is called from the decoder threads.
    ``blocks``, beside ``paths``, may give a stream's blocks instead of decoding its whole file
    (a lazy iterable, such as a piece of a long recording, ``scan_execute.read_span``); it is
    iterated in a decoder thread.
    """
    config = resolve_precision(model, config)
    sources = blocks if blocks is not None else [None] * len(paths)
    if len(sources) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(sources)} block sources")
    streams = [_TrackedStream(Path(p), model, config, b, on_block) for p, b in zip(paths, sources)]
    hop = config.hop_samples(model.info.sample_rate)
    scorer = make_scorer(model, hop, config.batch_size, config.mode, spans_per_call, config.precision)
    for i, result in score_streams(scorer, [s.blocks for s in streams], workers):
        stream = streams[i]
        if isinstance(result, AudioReadError):
            logger.warning("cannot scan %s", result)
            yield stream.path, result
        elif isinstance(result, BaseException):
            raise result
        else:
            try:
                yield stream.path, stream.result(result.starts, result.scores)
            except AudioReadError as e:
                yield stream.path, e


def events_table(scores: RecordingScores, model: LoadedModel, options: EventOptions, recording: str,
                 path: str | None = None) -> pd.DataFrame:
    """Events of one scored recording (see build_events); ``path`` (default: the file's absolute
    path, printable) fills the recording_path column."""
    from .fsutil import printable

    path = path if path is not None else printable(str(scores.path.absolute()))
    return build_events(EventContext.from_model(model), options, printable(recording), path, scores.start,
                        scores.starts_s, scores.scores, scores.duration_s)


def resolve_precision(model: LoadedModel, config: ScanConfig) -> ScanConfig:
    """``config`` with ``precision`` auto made fp32 or int8 for ``model`` (int8_check.auto_precision),
    logged with the reason; any other precision is returned as it is."""
    if config.precision != "auto":
        return config
    from .int8_check import auto_precision
    from .quantize import calibration_path

    chosen, why = auto_precision(model)
    # a calibration that is there but unusable (damaged, for other weights, failed its check)
    # is worth a warning: its owner expects int8
    on_cpu = model.device.type == "cpu"
    unusable = chosen == "fp32" and on_cpu and calibration_path(model.path).is_file()
    logger.log(logging.WARNING if unusable else logging.INFO, "precision auto -> %s: %s", chosen, why)
    return replace(config, precision=chosen)


def prepare_scan(model: LoadedModel | str | Path | None, config: ScanConfig,
                 device: str = "auto") -> tuple[LoadedModel, ScanConfig]:
    """``prepare_model``, plus the config a scan runs with: ``precision`` auto resolved, and the
    checkpoint's calibrated thresholds filled in (``with_model_thresholds``)."""
    model, config = _prepare(model, config, device)
    return model, with_model_thresholds(config, model)


def prepare_model(model: LoadedModel | str | Path | None, config: ScanConfig, device: str = "auto") -> LoadedModel:
    """A loaded model (from an instance, a checkpoint path, or None for the bundled demo model)
    whose classes the event options have been checked against, and, for ``precision`` int8
    (or auto resolving to int8), whose int8 calibration has been found and built (on the CPU).
    A checkpoint it loads itself for the CPU in fp32 comes back with its BatchNorms folded
    (``inference.fold_batch_norms``): the scorers use that copy anyway, and keeping only it saves
    a copy of the weights. Callers that need the resolved precision use ``prepare_scan``."""
    return _prepare(model, config, device)[0]


def _prepare(model: LoadedModel | str | Path | None, config: ScanConfig, device: str) -> tuple[LoadedModel, ScanConfig]:
    from .bundled import default_model_path
    from .devices import resolve_device

    if config.precision == "int8" and device == "auto":
        device = "cpu"  # int8 kernels are CPU kernels
    owned = not isinstance(model, LoadedModel)
    if owned:
        model = load_checkpoint(model if model is not None else default_model_path(), resolve_device(device))
        config = resolve_precision(model, config)  # on the unfolded weights: the calibration's digest is theirs
        if config.precision == "fp32" and model.device.type == "cpu":
            # we loaded it, so only the folded inference copy is kept: one copy of the weights in
            # memory, not two (~20 MB for CNN10; int8 needs the unfolded weights for its calibration)
            from .inference import fold_batch_norms

            model = replace(model, network=fold_batch_norms(model.network))
    ctx = EventContext.from_model(model)
    validate_options(config.events, ctx.classes, ctx.reject_class)
    if config.precision == "auto":  # a caller's own LoadedModel
        config = resolve_precision(model, config)
    if config.precision == "int8":  # a missing or foreign calibration fails here, before any file is scanned
        from .quantize import int8_network

        network = int8_network(model)
        if owned:  # keep the int8 network only, not the fp32 weights beside it
            model = replace(model, network=network)
    return model, config


def with_model_thresholds(config: ScanConfig, model: LoadedModel) -> ScanConfig:
    """``config`` with the checkpoint's calibrated thresholds filled in for every species the
    event options leave at the default (``config.model_thresholds`` and a checkpoint that carries
    thresholds; else ``config`` unchanged).

    Why: thresholds calibrated for a model (``primate-monitor calibrate`` then ``set-thresholds``)
    belong with it, so a plain ``scan --model M`` applies them; a per-species threshold the user
    gives (--threshold SPECIES=T, --thresholds-file) wins, and a bare --threshold T turns them off.
    The effective thresholds end up in the run's parameters (run.json), so the output says which
    thresholds made it."""
    found = dict(model.info.thresholds)
    if not config.model_thresholds or not found:
        return config
    events = config.events
    merged = found | dict(events.class_thresholds)
    logger.info("using the model's calibrated thresholds for %s",
                ", ".join(f"{k}={v:g}" for k, v in sorted(found.items()) if k not in events.class_thresholds) or "no species")
    return replace(config, events=replace(events, class_thresholds=merged))


def scan_recording(path: str | Path, model: LoadedModel | str | Path | None = None,
                   config: ScanConfig | None = None, recording: str | None = None) -> pd.DataFrame:
    """Detection events in one recording, as a DataFrame (columns: ``writers.EVENT_COLUMNS``).

    ``model`` is a LoadedModel, a checkpoint path, or None for the bundled demo model.
    ``recording`` is the name stored in the ``recording`` column (default: the file name).
    Raises AudioReadError when the file cannot be read at all.
    """
    model, config = prepare_scan(model, config or ScanConfig())
    scores = score_recording(path, model, config)
    return events_table(scores, model, config.events, recording or Path(path).name)
