"""Audio I/O: probe, load short clips, stream long recordings, discover files.

Everything returned is float32 mono at the caller's sample rate. Long
recordings are streamed block by block through one soxr resampler per file,
so memory does not grow with the recording length (10 h at 48 kHz would be
7 GB as float32 if decoded at once).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .fsutil import printable

logger = logging.getLogger(__name__)

# Seconds of source audio decoded per read in stream_audio; MAX_BLOCK_SAMPLES caps it (at
# 48 kHz mono, 21.8 s). Small reads keep a scan's peak memory low: each read is held
# twice (decoded, then mixed down) before resampling, and 4 MB blocks (instead of 60 s,
# 11.5 MB at 48 kHz) cut ~15 MB off the peak at no measurable cost in speed.
BLOCK_SECONDS = 60.0
MAX_BLOCK_SAMPLES = 1_048_576  # samples over all channels per read: 4 MB as float32
SALVAGE_FRAMES = 4096  # after a decode error, the block is read again in steps this small
# Decoding that ends more than this before the length a file declares means the file was cut
# short (an MP3 whose Xing header counts frames that are gone); less is decoder rounding.
SHORTFALL_SECONDS = 1.0
# soxr "HQ" is what librosa's res_type="soxr_hq" uses; training and scanning
# must resample identically or the model sees a different spectrum.
RESAMPLE_QUALITY = "HQ"
# Resampling is done in segments of RESAMPLE_SEGMENT_SECONDS of output, each by its own soxr
# call over the segment plus RESAMPLE_CONTEXT_SECONDS of source audio on each side (soxr HQ's
# filter spans a few ms). A segment is then a function of the file and its index alone, so a
# reader that starts anywhere (a piece of a long recording, scan_execute.read_span) produces
# the very same samples as one that starts at frame 0: a continuous soxr stream would not,
# its FFT blocks fall differently and scores differ by ~1e-7 (issue 10).
RESAMPLE_SEGMENT_SECONDS = 15.0
RESAMPLE_CONTEXT_SECONDS = 0.1
# Extensions libsndfile reads under another name than its format name.
_FORMAT_ALIASES = {"aiff": ("aif", "aifc"), "ogg": ("oga", "opus"), "ircam": ("sf",)}
# RAW is header-less: libsndfile cannot open it without being told the layout.
_UNPROBEABLE_FORMATS = frozenset({"raw"})
# libsndfile's WAV parser notes "data : 192000 (should be 95978)" when the
# header promises more bytes than the file holds; its AIFF parser says "SSND : ...". An Ogg
# stream (Vorbis, Opus) that was never closed ends without its end-of-stream page: "Ogg: Last
# page lacks an end-of-stream bit" (Vorbis) or "Ogg : ..." (Opus).
_TRUNCATED_RE = re.compile(r"^\s*(?:(?:data|SSND)\s*:\s*\d+\s*\(should be \d+\)"
                           r"|Ogg\s*:\s*Last page lacks an end-of-stream bit)", re.MULTILINE)

AUDIO_ERROR_KINDS = frozenset(
    {"empty", "no_samples", "not_audio", "unsupported", "permission", "corrupt", "missing", "channel", "truncated",
     "oversize"}
)
# Bytes per sample of the WAV subtypes whose data size follows from the frame count.
_WAV_SAMPLE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
# More bytes than this beyond a WAV's declared audio is audio its header cannot describe (a WAV
# over 4 GiB: the RIFF size fields are 32-bit), not a trailing metadata chunk (GUANO, iXML: KBs).
UNREAD_BYTES_LIMIT = 1 << 20


class AudioReadError(Exception):
    """A file that cannot be scanned.

    ``kind`` is one of AUDIO_ERROR_KINDS: "empty" (zero bytes), "no_samples"
    (valid header, 0 frames), "not_audio" (libsndfile cannot parse it),
    "unsupported" (an extension libsndfile does not read), "permission",
    "corrupt" (decode error mid-stream), "missing" (also a broken symlink), "channel",
    "truncated" (the file was cut short: its header promises more audio than it holds, an Ogg
    stream lacks its end-of-stream page, or decoding ends well before the declared length) or "oversize" (a WAV
    holds far more bytes than its header declares, e.g. one over 4 GiB). The path in the
    message is ``fsutil.printable``: a name with a tab or invalid UTF-8 still makes a message
    that can be logged and stored.
    """

    def __init__(self, path: str | Path, kind: str, reason: str) -> None:
        if kind not in AUDIO_ERROR_KINDS:
            raise ValueError(f"unknown AudioReadError kind {kind!r}; valid: {sorted(AUDIO_ERROR_KINDS)}")
        self.path = printable(str(path))
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        """Rebuilt from (path, kind, message), so a worker process's error reaches the client intact."""
        return audio_error_from_message, (self.path, self.kind, str(self))


def audio_error_from_message(path: str, kind: str, message: str) -> "AudioReadError":
    """An AudioReadError with its full message as given (unpickling; results sent back by workers)."""
    error = AudioReadError.__new__(AudioReadError)
    Exception.__init__(error, message)
    error.path, error.kind = path, kind
    return error


@dataclass(frozen=True)
class AudioInfo:
    """What a file header says, before any decoding."""

    path: str
    sample_rate: int  # Hz
    channels: int
    frames: int  # samples per channel
    duration_s: float  # frames / sample_rate
    format: str  # libsndfile major format, e.g. "WAV"
    subtype: str  # e.g. "PCM_16"
    comment: str | None  # e.g. AudioMoth's "Recorded at ... (UTC) by AudioMoth ..."
    truncated: bool = False  # cut short: the header promises more data than the file holds, or an Ogg lacks its end
    unread_bytes: int = 0  # a WAV's bytes beyond its declared audio, when over UNREAD_BYTES_LIMIT (see _unread_bytes)
    # seconds of an MP3's frames beyond what libsndfile decodes (a VBR MP3 without a Xing header;
    # mp3_length), when over SHORTFALL_SECONDS; only probe and stream_audio look
    unread_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"{self.path}: sample_rate must be positive, got {self.sample_rate}")
        if self.channels <= 0:
            raise ValueError(f"{self.path}: channels must be positive, got {self.channels}")
        if self.frames < 0:
            raise ValueError(f"{self.path}: frames must be >= 0, got {self.frames}")


@lru_cache(maxsize=1)
def audio_extensions() -> frozenset[str]:
    """Lower-case extensions (no dot) this libsndfile build can read; used for discovery."""
    formats = {name.lower() for name in sf.available_formats()} - _UNPROBEABLE_FORMATS
    for name, aliases in _FORMAT_ALIASES.items():
        if name in formats:
            formats.update(aliases)
    return frozenset(formats)


def _open(path: str | Path) -> sf.SoundFile:
    """Open for reading, turning every failure into an AudioReadError with a kind."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise AudioReadError(p, "missing", f"broken symlink (it points to {printable(os.readlink(p))}, which does not exist)")
    try:
        with open(p, "rb") as fh:  # surfaces missing/permission before libsndfile's "System error"
            if not fh.read(1):
                raise AudioReadError(p, "empty", "file is empty (0 bytes)")
    except FileNotFoundError as e:
        raise AudioReadError(p, "missing", "file not found") from e
    except PermissionError as e:
        raise AudioReadError(p, "permission", "permission denied") from e
    except IsADirectoryError as e:
        raise AudioReadError(p, "not_audio", "is a directory") from e
    try:
        return sf.SoundFile(os.fsencode(p))  # bytes: libsndfile takes any file name, UTF-8 or not
    except sf.LibsndfileError as e:
        ext = p.suffix.lower().lstrip(".")
        if ext not in audio_extensions():
            raise AudioReadError(p, "unsupported", f"format .{ext} is not readable by libsndfile ({e})") from e
        raise AudioReadError(p, "not_audio", f"libsndfile cannot parse it ({e})") from e


def _info(f: sf.SoundFile, path: str | Path, whole_file: bool = True) -> AudioInfo:
    """The header's view of an open file. ``whole_file``: also count an MP3's frames
    (``_unread_seconds``), which reads the file once; a caller reading a short segment skips it."""
    info = AudioInfo(
        path=str(path),
        sample_rate=int(f.samplerate),
        channels=int(f.channels),
        frames=int(f.frames),
        duration_s=f.frames / f.samplerate,
        format=f.format,
        subtype=f.subtype,
        comment=f.comment or None,
        truncated=bool(_TRUNCATED_RE.search(f.extra_info)),
        unread_bytes=_unread_bytes(f, path),
        unread_seconds=_unread_seconds(f, path) if whole_file else 0.0,
    )
    if info.frames == 0:
        raise AudioReadError(path, "no_samples", "header is valid but holds 0 frames")
    return info


def _unread_seconds(f: sf.SoundFile, path: str | Path) -> float:
    """Seconds of an MP3 that libsndfile will not decode, if more than SHORTFALL_SECONDS, else 0.

    Why: without a Xing/Info/VBRI header, libsndfile estimates an MP3's length from its first
    frame's bitrate and decodes no further; for a variable-bitrate file that can be less than
    half of it, silently. Counting the frames (mp3_length) lets the scan say so."""
    if f.format != "MP3":
        return 0.0
    from .mp3_length import unread_seconds

    try:
        extra = unread_seconds(path, f.frames / f.samplerate)
    except OSError:
        return 0.0
    return extra if extra > SHORTFALL_SECONDS else 0.0


def _unread_bytes(f: sf.SoundFile, path: str | Path) -> int:
    """Bytes of a WAV beyond the audio its header declares, if more than UNREAD_BYTES_LIMIT, else 0.

    Why: a plain WAV cannot describe more than 4 GiB (its size fields are 32-bit). A recorder or
    tool that writes more anyway leaves a file that libsndfile reads only up to the declared
    size, silently. Counting what lies beyond lets the scan say so instead of losing it."""
    width = _WAV_SAMPLE_BYTES.get(f.subtype)
    if f.format not in ("WAV", "WAVEX") or width is None:
        return 0
    try:
        size = os.stat(path).st_size
    except OSError:
        return 0
    extra = size - f.frames * f.channels * width
    return extra if extra > UNREAD_BYTES_LIMIT else 0


def sample_rate_of(path: str | Path) -> int:
    """The sample rate in the header: what a caller cutting a short clip needs, without probe's
    look at the whole file (an MP3's frames)."""
    with _open(path) as f:
        return int(f.samplerate)


def probe(path: str | Path) -> AudioInfo:
    """Read the header of ``path``; raises AudioReadError if it cannot be scanned.

    A truncated WAV reports the frames actually present, not what its header promised.
    """
    with _open(path) as f:
        return _info(f, path)


def _warn_if_truncated(info: AudioInfo, path: str | Path) -> None:
    if info.truncated:
        logger.warning("%s: truncated file (cut short before the end it declares); reading the %d frames present",
                       path, info.frames)
    if info.unread_seconds:
        logger.warning("%s: %s", path, unread_tail_message(info))


def unread_tail_message(info: AudioInfo) -> str:
    """What to tell a user about an MP3 libsndfile decodes only in part."""
    return (f"libsndfile decodes only the first {info.duration_s:.3f} s of the "
            f"{info.duration_s + info.unread_seconds:.3f} s this MP3 holds (a variable-bitrate MP3 without a Xing "
            "header, whose length libsndfile estimates from its first frame), so only those are read; convert it "
            "to FLAC or WAV (for example ffmpeg -i in.mp3 out.flac) to scan all of it")


def _check_rate_and_channel(path: str | Path, sample_rate: int, channel: int | None, channels: int) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    if channel is not None and not 0 <= channel < channels:
        raise AudioReadError(path, "channel", f"channel {channel} out of range, the file has {channels} channel(s) (0-based)")


def _mono(block: np.ndarray, channel: int | None) -> np.ndarray:
    """(frames, channels) -> (frames,) float32, by picking a channel or averaging."""
    x = block[:, channel] if channel is not None else block.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def _zero_non_finite(x: np.ndarray, path: str | Path, warned: bool) -> bool:
    """Set NaN/inf samples to 0 in place; log once per file. Returns the new warned flag."""
    bad = ~np.isfinite(x)
    if bad.any():
        x[bad] = 0.0
        if not warned:
            logger.warning("%s: non-finite samples replaced by 0.0", path)
        return True
    return warned


def _segment_frames(path: str | Path, start_s: float, end_s: float | None, info: AudioInfo) -> tuple[int, int]:
    """[first, stop) source frames of the segment, clipped to the file."""
    if not start_s >= 0 or (end_s is not None and not end_s >= start_s):
        raise ValueError(f"{path}: need 0 <= start_s <= end_s, got start_s={start_s}, end_s={end_s}")
    first = min(round(start_s * info.sample_rate), info.frames)
    stop = info.frames if end_s is None else min(round(end_s * info.sample_rate), info.frames)
    return first, stop


def load_audio(
    path: str | Path, sample_rate: int, channel: int | None = None, start_s: float = 0.0, end_s: float | None = None
) -> np.ndarray:
    """Decode a (short) file or segment to float32 mono at ``sample_rate`` Hz, shape (samples,).

    Down-mixes by mean over channels unless ``channel`` (0-based) picks one.
    ``start_s``/``end_s`` (seconds, end None = end of file) select a segment,
    clipped to the file, so a segment past the end gives 0 samples. Use
    stream_audio for long recordings.
    """
    with _open(path) as f:
        info = _info(f, path, whole_file=False)  # a segment: counting an MP3's frames would read all of it
        _check_rate_and_channel(path, sample_rate, channel, info.channels)
        first, stop = _segment_frames(path, start_s, end_s, info)
        _warn_if_truncated(info, path)
        try:
            f.seek(first)
            data = f.read(stop - first, dtype="float32", always_2d=True)  # (frames, channels)
        except sf.LibsndfileError as e:
            raise AudioReadError(path, "corrupt", f"decode error ({e})") from e
    x = _mono(data, channel)
    _zero_non_finite(x, path, warned=False)
    if info.sample_rate != sample_rate and x.size:
        x = soxr.resample(x, info.sample_rate, sample_rate, quality=RESAMPLE_QUALITY)
    return x.astype(np.float32, copy=False)


def stream_audio(
    path: str | Path, sample_rate: int, channel: int | None = None, block_seconds: float = BLOCK_SECONDS
) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks at ``sample_rate`` Hz; memory is independent of file length.

    One soxr stream per file is flushed at the end, so the concatenated blocks
    equal load_audio(path, sample_rate, channel) (to ~1e-4). Blocks are never
    empty but their lengths vary; callers must not assume a fixed size.

    A truncated file is read as far as its data goes, with a logged warning.
    A decode error raises AudioReadError(kind="corrupt"), possibly after some
    blocks were already yielded: the caller decides whether to keep them.
    """
    if not block_seconds > 0:
        raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
    with _open(path) as f:
        info = _info(f, path)
        _check_rate_and_channel(path, sample_rate, channel, info.channels)
        _warn_if_truncated(info, path)
        source = read_mono_blocks(f, path, info, channel, block_seconds)
        if info.sample_rate == sample_rate:
            yield from source
        else:
            yield from resample_segments(source, ResampleGrid(info.sample_rate, sample_rate), 0)


def read_mono_blocks(f: sf.SoundFile, path: str | Path, info: AudioInfo, channel: int | None,
                     block_seconds: float) -> Iterator[np.ndarray]:
    """Mono float32 source blocks from the file's current position to its end; non-finite
    samples become 0. A decode error raises AudioReadError after the blocks before it, and so
    does decoding that stops more than SHORTFALL_SECONDS before the length the file declares
    (kind "truncated"): a cut MP3 keeps the frame count of its Xing header, so without this
    check the scan would call it complete."""
    # cap a block at MAX_BLOCK_SAMPLES so 384 kHz or many channels stay within tens of MB
    block_frames = max(1, min(round(block_seconds * info.sample_rate), MAX_BLOCK_SAMPLES // info.channels))
    warned = False
    while True:
        start = f.tell()
        error: sf.LibsndfileError | None = None
        try:
            block = f.read(block_frames, dtype="float32", always_2d=True)  # (frames, channels)
        except sf.LibsndfileError as e:
            block, failed = _salvage(f, path, start, block_frames, info.channels)
            error = e if failed else None  # keep what decodes before the damage, then stop with the error
        x = _mono(block, channel)
        warned = _zero_non_finite(x, path, warned)
        if x.size:
            yield x
        if error is not None:
            raise AudioReadError(path, "corrupt", f"decode error at frame {start + len(block)} ({error})") from error
        if len(block) < block_frames:
            end = start + len(block)
            if info.frames - end > SHORTFALL_SECONDS * info.sample_rate:
                raise AudioReadError(path, "truncated", f"decoding stopped at {end / info.sample_rate:.3f} s of the "
                                     f"{info.duration_s:.3f} s the file declares: it was probably cut short")
            return


def _salvage(f: sf.SoundFile, path: str | Path, start: int, frames: int, channels: int) -> tuple[np.ndarray, bool]:
    """After a read from ``start`` failed, read those ``frames`` again SALVAGE_FRAMES at a time.
    Returns what decoded and whether the stream must stop there. A damaged compressed file (a
    FLAC whose recorder died mid-write) loses only the audio from the damage on, not the whole
    block before it. libsndfile's FLAC decoder cannot seek once it has lost sync, so the file is
    then opened afresh for the salvage, and the stream stops after it whatever it finds."""
    parts: list[np.ndarray] = []
    got = 0  # frames in parts
    fresh: sf.SoundFile | None = None
    failed = False
    try:
        try:
            f.seek(start)
            handle = f
        except RuntimeError:  # LibsndfileError is one
            fresh = handle = sf.SoundFile(path)
            handle.seek(start)
        while got < frames:
            part = handle.read(min(SALVAGE_FRAMES, frames - got), dtype="float32", always_2d=True)
            parts.append(part)
            got += len(part)
            if len(part) < SALVAGE_FRAMES:
                break
    except RuntimeError:
        failed = True
    finally:
        if fresh is not None:
            fresh.close()
    block = np.concatenate(parts) if parts else np.zeros((0, channels), dtype=np.float32)
    return block, failed or fresh is not None


@dataclass(frozen=True)
class ResampleGrid:
    """The fixed segments a file is resampled in (RESAMPLE_SEGMENT_SECONDS): segment k turns
    source frames [k * seg_in, (k + 1) * seg_in) into output samples [k * seg_out, ...), read
    with ``ctx_in`` frames of context on each side. All three are whole multiples of the rate
    ratio's steps, so every boundary falls on a source frame and an output sample alike."""

    sr_in: int
    sr_out: int

    @property
    def steps(self) -> tuple[int, int]:
        """(source frames, output samples) that span the same time exactly."""
        g = math.gcd(self.sr_in, self.sr_out)
        return self.sr_in // g, self.sr_out // g

    @property
    def seg_out(self) -> int:
        step_in, step_out = self.steps
        return max(1, round(RESAMPLE_SEGMENT_SECONDS * self.sr_out / step_out)) * step_out

    @property
    def seg_in(self) -> int:
        step_in, step_out = self.steps
        return self.seg_out // step_out * step_in

    @property
    def ctx_in(self) -> int:
        step_in, _ = self.steps
        return max(1, math.ceil(RESAMPLE_CONTEXT_SECONDS * self.sr_in / step_in)) * step_in

    def source_start(self, segment: int) -> int:
        """First source frame that segment ``segment`` reads (its left context included)."""
        return max(0, segment * self.seg_in - self.ctx_in)


def resample_segments(blocks: Iterable[np.ndarray], grid: ResampleGrid, first: int) -> Iterator[np.ndarray]:
    """Resampled output from segment ``first`` on, given mono source ``blocks`` that start at
    ``grid.source_start(first)``. Yields one array per segment (the last one may be shorter).

    A decode error in ``blocks`` first yields the audio read before it, resampled as the
    file's end, then is raised: what could be read is not lost."""
    pending: list[np.ndarray] = []
    buf_start, have = grid.source_start(first), 0  # pending holds source frames [buf_start, buf_start + have)
    source = iter(blocks)
    k, ended = first, False
    while True:
        lo, hi = grid.source_start(k), (k + 1) * grid.seg_in + grid.ctx_in
        error = None
        while not ended and buf_start + have < hi:
            try:
                block = next(source)
            except StopIteration:
                ended = True
                break
            except AudioReadError as e:
                ended, error = True, e
                break
            pending.append(block)
            have += len(block)
        if not pending:  # nothing was read: an empty stream, or a decode error at the first block
            if error is not None:
                raise error
            return
        x = np.concatenate(pending) if len(pending) != 1 else pending[0]
        seg = x[lo - buf_start:min(hi, buf_start + have) - buf_start]
        if seg.size == 0:
            if error is not None:
                raise error
            return
        y = soxr.resample(seg, grid.sr_in, grid.sr_out, quality=RESAMPLE_QUALITY)
        drop = (k * grid.seg_in - lo) // grid.steps[0] * grid.steps[1]
        last = ended and (error is not None or buf_start + have <= (k + 1) * grid.seg_in)
        out = y[drop:] if last else y[drop:drop + grid.seg_out]
        if out.size:
            yield np.ascontiguousarray(out, dtype=np.float32)
        if error is not None:
            raise error
        if last:
            return
        k += 1
        keep_from = grid.source_start(k)
        x = x[keep_from - buf_start:].copy()  # the next segment's left context, not the whole buffer
        pending, buf_start, have = [x], keep_from, len(x)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_audio(root: Path, errors: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Audio files under root, hidden files and folders skipped, sorted by relative path.

    A folder that cannot be listed (permission denied, vanished) is appended to ``errors`` as
    (folder, reason) instead of being skipped in silence: a run must report what it did not see.
    Symlinked files are listed (a dangling one fails later, visibly); symlinked folders are not
    followed, so a link cannot pull a whole other tree, or a loop, into the scan.
    """
    extensions = audio_extensions()
    found: list[Path] = []

    def onerror(e: OSError) -> None:
        folder = Path(e.filename) if e.filename else root
        logger.warning("cannot read folder %s: %s; its files are not scanned", folder, e.strerror or e)
        if errors is not None:
            errors.append((folder, e.strerror or str(e)))

    for folder, dirs, files in os.walk(root, onerror=onerror):
        dirs[:] = [d for d in dirs if not _is_hidden(d)]
        for name in files:
            if not _is_hidden(name) and Path(name).suffix.lower().lstrip(".") in extensions:
                found.append(Path(folder) / name)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def find_audio_files(paths: Sequence[str | Path],
                     errors: list[tuple[Path, str]] | None = None) -> list[tuple[Path, Path]]:
    """Expand files and folders into (root, path) pairs, in argument order.

    A folder is recursed (sorted, hidden entries skipped, extensions matched
    case-insensitively against audio_extensions()) and is the root of what it
    holds, so outputs can mirror ``path.relative_to(root)``. A file is returned
    with its parent as root even if its extension is unknown (or it is a dangling
    symlink), so that it fails visibly later. Paths are made absolute but not
    resolved: a symlink keeps its own name and place. Folders that cannot be read
    go to ``errors`` (see _walk_audio). A missing path raises FileNotFoundError.
    """
    pairs: list[tuple[Path, Path]] = []
    for arg in paths:
        p = Path(os.path.abspath(arg))
        if p.is_dir():
            pairs.extend((p, f) for f in _walk_audio(p, errors))
        elif p.exists() or p.is_symlink():
            pairs.append((p.parent, p))
        else:
            raise FileNotFoundError(f"no such file or folder: {arg}")
    return pairs
