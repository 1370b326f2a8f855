"""int8 inference on the CPU (``scan --precision int8``, and the default ``auto`` where it is safe).

Why: on the CPU the convolutional trunk is ~90 % of a scan (docs/benchmarks.md). Its
convolutions in 8-bit integers (static quantisation: int8 weights per output channel, int8
activations per tensor, through torch's x86 quantised kernels) run them about twice as fast,
for scores that move by about 1e-2 (measured on real recordings: docs/benchmarks.md).

Each calibration also checks itself: 3-s windows of its audio, 1 s apart as in a scan, are
scored by both networks, and the result is stored in its metadata. ``int8_check.auto_precision``
reads it to decide the scan's default, ``--precision auto``: int8 only on the CPU, with a
calibration made for these very weights whose check passed; fp32 otherwise.

Static quantisation needs the range of every activation, seen on real audio. That is a
*calibration*, made once per checkpoint (``primate-monitor quantize CKPT --calibrate AUDIO``)
and stored beside it as ``<ckpt>.int8.safetensors``: the observers' histograms as plain
tensors plus JSON metadata naming the digest of the weights it was made for (not the file's
sha256: a ``set-thresholds`` copy has the same weights and keeps its calibration). At scan time the trunk is
quantised from those numbers, so every worker, piece and resumed run gets the same int8
network, and nothing is unpickled.

The trunk's ``bn0`` (a per-mel-bin normalisation) and the head stay in float32; only
``body`` (the convolution blocks) is quantised. FX graph mode quantisation
(``torch.ao.quantization.quantize_fx``) is used because it runs eagerly, without a compiler
and without torchao; torch marks it deprecated in favour of torchao's PT2E, which needs
``torch.compile`` to reach int8 kernels (left for later: docs/benchmarks.md).

FX is needed to calibrate, but for the PANNs CNNs (CNN6, CNN10: the bundled model and the
paper's) not to scan: the calibration also stores the converted int8 layers, and
``quantize_panns.Int8PannsBody`` rebuilds them without FX's tracing stack (~115 MB resident).
Other networks are converted through FX at scan time.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, LoadedModel
from .fsutil import atomic_write

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "int8")
AGREEMENT_MAX_WINDOWS = 600  # windows kept for the agreement check: ~11 min of audio, ~46 MB of log-mel at 16 kHz
SUFFIX = ".int8.safetensors"
ENGINE = "x86"
METADATA_KEY = "primate_monitor_int8"
OBSERVER = "activation_post_process"
CALIBRATION_CHUNK_S = 30.0  # seconds of audio per calibration batch (a span of the fast scorer is ~34 s at hop 1 s)


def calibration_path(checkpoint: str | Path) -> Path:
    """Where the int8 calibration of ``checkpoint`` lives: beside it, ``<name>.int8.safetensors``."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name[: -len(".safetensors")] if checkpoint.name.endswith(".safetensors") else checkpoint.name
    return checkpoint.with_name(stem + SUFFIX)


class _Body(nn.Module):
    """The convolution blocks of a network as a module of their own, for FX to trace."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.body(x)


def _engine() -> None:
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"this torch build has no {ENGINE} quantised kernels "
                           f"(it has {', '.join(torch.backends.quantized.supported_engines)}); scan with --precision fp32")
    torch.backends.quantized.engine = ENGINE


def _check_replaceable(target: Path) -> None:
    """Refuse to write over a file that is not an int8 calibration: primate-monitor never
    replaces what it did not write."""
    if not target.exists():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(target), framework="pt") as f:
            ours = METADATA_KEY in (f.metadata() or {})
    except Exception:  # not safetensors at all
        ours = False
    if not ours:
        raise ValueError(f"{target} exists and is not an int8 calibration that primate-monitor wrote; "
                         "choose another output path")


def _window_frames(model: LoadedModel) -> int:
    """Log-mel frames in one of the model's windows."""
    return model.info.frontend.frames(round(model.info.clip_seconds * model.info.sample_rate))


def _prepared(model: LoadedModel) -> torch.fx.GraphModule:
    """The network's body traced, conv+BN+ReLU fused, with an observer on every activation."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    _engine()
    network = copy.deepcopy(model.network).cpu().eval()
    example = torch.zeros(1, 1, _window_frames(model), model.info.frontend.n_mels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the FX API's deprecation notice (see the module docstring)
        return prepare_fx(_Body(network).eval(), get_default_qconfig_mapping(ENGINE), (example,))


def weights_digest(network: nn.Module) -> str:
    """sha256 of the network's weights and buffers (names, dtypes, shapes, bytes): what a
    calibration belongs to, whatever metadata the checkpoint file carries."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _observer_state(prepared: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in prepared.state_dict().items() if OBSERVER in k}


def calibrate(model: LoadedModel, paths: Sequence[str | Path], out: str | Path | None = None,
              seconds_per_file: float = 120.0) -> Path:
    """Record the activation ranges of ``model``'s body on real audio and save them beside the
    checkpoint (or at ``out``). Returns the path written.

    Why real audio: the ranges set the int8 scales; synthetic input would give ranges that
    clip or waste the 256 levels on what recordings actually hold. Give audio like what will
    be scanned (backgrounds and calls); ``seconds_per_file`` from the start of each file."""
    from .audio import AudioReadError, load_audio

    target = Path(out) if out is not None else calibration_path(model.path)
    _check_replaceable(target)  # before reading any audio
    if not paths:
        raise ValueError("give at least one audio file to calibrate on")
    if seconds_per_file <= 0:
        raise ValueError(f"seconds per file must be positive, got {seconds_per_file}")
    sr = model.info.sample_rate
    used: list[str] = []
    skipped: list[str] = []

    def pieces() -> Iterator[np.ndarray]:
        for path in paths:
            try:
                audio = load_audio(path, sr, end_s=seconds_per_file)
            except AudioReadError as e:  # one bad file does not stop a calibration on the others
                logger.warning("not calibrating on %s", e)
                skipped.append(f"{path}: {e.kind}")
                continue
            if audio.size < sr:
                logger.warning("%s: shorter than 1 s; not used for calibration", path)
                skipped.append(f"{path}: shorter than 1 s")
                continue
            used.append(Path(path).name)
            yield audio

    return calibrate_audio(model, pieces(), target, {"files": used, "skipped": skipped},
                           empty="no calibration file could be used: {skipped}")


def calibrate_audio(model: LoadedModel, audio: Iterable[np.ndarray], out: str | Path | None = None,
                    sources: dict | None = None, empty: str = "no audio to calibrate on") -> Path:
    """``calibrate`` on audio already in memory (1-D arrays at the model's sample rate), e.g.
    ``train``'s own clips; ``sources`` (JSON-able, read after ``audio`` is used up) describes them
    in the file's metadata. Also measures int8 against fp32 on the same audio (``agreement``),
    which ``--precision auto`` reads."""
    from safetensors.torch import save_file
    from torch.ao.quantization.quantize_fx import convert_fx

    from .frontend import LogMel

    target = Path(out) if out is not None else calibration_path(model.path)
    _check_replaceable(target)
    prepared = _prepared(model)
    frontend = LogMel(model.info.frontend)
    bn0 = copy.deepcopy(model.network.bn0).cpu().eval()  # a copy: the caller's model keeps its device and mode
    sr = model.info.sample_rate
    chunk = int(CALIBRATION_CHUNK_S * sr)
    frames = _window_frames(model)
    step = max(1, round(sr / model.info.frontend.hop_samples))  # frames in 1 s
    windows: list[torch.Tensor] = []
    seconds = 0.0
    with torch.no_grad():
        for samples in audio:
            for a in range(0, samples.size, chunk):
                piece = samples[a:a + chunk]
                if piece.size < sr:
                    break
                mel = frontend(torch.from_numpy(np.ascontiguousarray(piece, dtype=np.float32))[None])
                prepared(bn0(mel))
                for f in range(0, mel.shape[-2] - frames + 1, step):  # windows 1 s apart, as a scan's, for the check
                    if len(windows) < AGREEMENT_MAX_WINDOWS:
                        windows.append(mel[..., f:f + frames, :].clone())
            seconds += samples.size / sr
    sources = dict(sources or {})
    if seconds < 1.0:
        raise ValueError(empty.format(skipped="; ".join(sources.get("skipped", [])) or "none given"))
    meta = {"for_weights": weights_digest(model.network), "checkpoint": model.path.name, "engine": ENGINE,
            **sources, "seconds": round(seconds, 3), "torch": torch.__version__}
    tensors = _observer_state(prepared)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_fx(copy.deepcopy(prepared))  # once: for the eager export and the check
    eager = _eager_export(converted, model)
    if eager is not None:
        tensors |= eager[0]
        meta["eager"] = eager[1]
    from .int8_check import agreement, describe_check

    # the network a scan will build from this file (the eager rebuild, or FX's converted graph)
    meta["agreement"] = agreement(model, _build(model, tensors, meta, target, converted), windows)
    logger.info("check: %s", describe_check(meta["agreement"]))
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    logger.info("int8 calibration of %s on %.1f min of audio -> %s", model.path.name, seconds / 60, target)
    return target


def read_calibration(path: Path, tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """A calibration file's metadata and (unless ``tensors`` is False) its tensors; an
    unreadable one is a CheckpointError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "null"))
            found = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{path}: not a readable int8 calibration ({exc})") from exc
    return meta, found


def copy_calibration(source: str | Path, dest: str | Path) -> Path | None:
    """Copy ``source``'s int8 calibration beside ``dest`` (a checkpoint with the same weights);
    None when ``source`` has none."""
    import shutil

    src = calibration_path(source)
    if not src.is_file():
        return None
    target = calibration_path(dest)
    _check_replaceable(target)
    with atomic_write(target) as tmp:
        shutil.copyfile(src, tmp)
    return target


def _eager_export(converted: torch.fx.GraphModule, model: LoadedModel) -> tuple[dict, dict] | None:
    """The int8 layers of FX's ``converted`` body as tensors for ``quantize_panns`` (PANNs CNNs
    only), kept only when the eager rebuild gives exactly the converted graph's output."""
    from .quantize_panns import Int8PannsBody, export

    exported = export(converted, model.network)
    if exported is None:
        return None
    probe = torch.randn(2, 1, _window_frames(model) * 2, model.info.frontend.n_mels,
                        generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        same = torch.equal(converted(probe), Int8PannsBody(*exported)(probe))
    if not same:
        logger.warning("the eager int8 rebuild differs from FX's; scans will build the int8 network through FX")
        return None
    return exported


class Int8Classifier(nn.Module):
    """A network whose body runs in int8; ``bn0`` and the head stay float32. It offers what the
    scorers use (``trunk``, ``head``, ``forward``, ``fast_path``, ``time_stride``)."""

    def __init__(self, network: nn.Module, body: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.body = body
        self.fast_path = network.fast_path
        self.time_stride = network.time_stride
        self.embedding_dim = network.embedding_dim
        self.inference_ready = True  # nothing to fold: cpu_inference_network passes it through
        self.is_int8 = True

    @property
    def head(self) -> nn.Module:
        return self.network.head

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.network.bn0(x))

    def forward(self, x: torch.Tensor, augment=None) -> tuple[torch.Tensor, torch.Tensor]:
        if augment is not None:
            raise ValueError("the int8 network is for inference only")
        return self.network.classify(self.trunk(x))


# the last int8 network built: (fp32 network, its weights' versions, calibration file's stat) -> it.
# Keyed cheaply like inference.cpu_inference_network, because a scan builds a scorer per recording
# and hashing the weights and the file each time would cost ~50 ms a recording.
# A weak reference, so that the fp32 network prepare_model swaps out is freed.
_CACHE: dict[str, tuple[weakref.ref, tuple, tuple, Int8Classifier]] = {}


def int8_network(model: LoadedModel) -> Int8Classifier:
    """``model``'s network with an int8 body, from the calibration beside its checkpoint; made
    once per checkpoint and calibration in a process (a scan builds a scorer per recording)."""
    if isinstance(model.network, Int8Classifier):  # prepare_model already swapped it in
        return model.network
    if model.device.type != "cpu":
        raise ValueError("--precision int8 runs on the CPU only (torch's int8 kernels are CPU kernels); "
                         "on a GPU use the default precision, which runs in bf16 there")
    path = calibration_path(model.path)
    if not path.is_file():
        raise CheckpointError(f"{model.path}: no int8 calibration beside it ({path.name}); make one with "
                              f"`primate-monitor quantize {model.path} --calibrate AUDIO...`, or scan with --precision fp32")
    from .inference import _weights_version

    version, stat = _weights_version(model.network), path.stat()
    identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    cached = _CACHE.get("last")
    if cached is not None and cached[0]() is model.network and cached[1] == version and cached[2] == identity:
        return cached[3]
    digest = weights_digest(model.network)
    meta, tensors = read_calibration(path)
    if not isinstance(meta, dict) or meta.get("for_weights") != digest:
        raise CheckpointError(f"{path}: this calibration was made for other weights (those of "
                              f"{(meta or {}).get('checkpoint')!s}, not those of {model.path.name}); "
                              f"run `primate-monitor quantize {model.path} --calibrate AUDIO...` again")
    network = _build(model, tensors, meta, path)
    _CACHE["last"] = (weakref.ref(model.network), version, identity, network)  # one model at a time, as cpu_inference_network
    return network


def _build(model: LoadedModel, tensors: dict[str, torch.Tensor], meta: dict, path: Path,
           converted: nn.Module | None = None) -> Int8Classifier:
    """The int8 network from a calibration's tensors and metadata (``path`` names it in errors).
    ``converted``: FX's converted body when the caller has it (``calibrate_audio``), so a network
    without the eager rebuild is not traced and converted a second time."""
    fp32 = copy.deepcopy(model.network).cpu().eval()
    if meta.get("eager"):  # a PANNs CNN: rebuilt from the stored int8 layers, no FX (quantize_panns)
        from .quantize_panns import Int8PannsBody

        try:
            body = Int8PannsBody(tensors, meta["eager"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: its int8 layers do not fit this network ({exc}); "
                                  "run `primate-monitor quantize` again") from exc
        fp32.blocks = nn.ModuleList()  # the body runs in int8; only bn0 and the head stay float
    elif converted is not None:
        body = converted
    else:
        from torch.ao.quantization.quantize_fx import convert_fx

        prepared = _prepared(model)
        observers = {k: v for k, v in tensors.items() if OBSERVER in k}
        if set(observers) != set(_observer_state(prepared)):
            raise CheckpointError(f"{path}: its observers do not match this network as traced by torch "
                                  f"{torch.__version__} (made with torch {meta.get('torch')}); run `primate-monitor "
                                  "quantize` again")
        prepared.load_state_dict(observers, strict=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            body = convert_fx(prepared)
    return Int8Classifier(fp32, body).eval()
