"""How long an MP3 really is, by walking its frame headers (no decoding).

Why: libsndfile (through mpg123) takes an MP3's length from its Xing/Info/VBRI header, and
without one estimates it from the first frame's bitrate and the file size, then decodes no
further than that estimate. For a variable-bitrate MP3 without such a header the estimate can
be far too short: a 60 s test file read as 24.3 s, with no error. Counting the frames that are
there lets ``audio`` say how much libsndfile will leave unread instead of losing it silently.

Each MPEG audio frame starts with a 4-byte header giving its version, layer, bitrate, sample
rate and padding, hence its length in bytes and in samples (ISO/IEC 11172-3, 13818-3). The walk
skips a leading ID3v2 tag, stops at a trailing ID3v1 or APE tag, and after bytes that are not
a frame resynchronises on the next header that is followed by another one, and gives up after
MAX_JUNK_BYTES without a frame.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

# kbit/s by bitrate index 1..14, for (MPEG-1 | MPEG-2/2.5) x layer
_BITRATES = {
    (1, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits
VBR_TAGS = (b"Xing", b"Info", b"VBRI")  # a frame-count header: libsndfile's length is then exact
CHUNK_BYTES = 1 << 20  # bytes read at a time
MAX_JUNK_BYTES = 1 << 20  # give up after this many bytes without a frame (trailing cover art, not audio)
TAG_SEARCH_BYTES = 64  # where a Xing/Info/VBRI tag can lie inside the first frame (after side info)


def frame_at(data: bytes | memoryview, pos: int) -> tuple[int, int, int] | None:
    """(length in bytes, samples, sample rate) of the frame whose header starts at ``pos``, or
    None when no valid MPEG audio frame header is there (free-format frames count as invalid)."""
    if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return None
    b1, b2 = data[pos + 1], data[pos + 2]
    version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    layer = 4 - layer_bits  # bits 3, 2, 1 = layers I, II, III
    mpeg1 = version == 3
    bitrate = _BITRATES[(1 if mpeg1 else 2, layer)][bitrate_index - 1] * 1000
    rate = _RATES[version][rate_index]
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4, 384, rate
    if layer == 2 or mpeg1:
        return 144 * bitrate // rate + padding, 1152, rate
    return 72 * bitrate // rate + padding, 576, rate  # layer III, MPEG-2/2.5


def _id3v2_size(head: bytes) -> int:
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
    return 10 + size + (10 if head[5] & 0x10 else 0)  # header, body, footer


class _Reader:
    """Random access to a file through one CHUNK_BYTES buffer, so that walking an hour of MP3
    holds a megabyte, not the whole file, in memory."""

    def __init__(self, fh, size: int) -> None:
        self.fh, self.size, self.base, self.buf = fh, size, 0, b""

    def window(self, pos: int, need: int) -> tuple[bytes, int]:
        """(buffer, offset of ``pos`` in it) holding at least ``need`` bytes from ``pos`` (fewer at EOF)."""
        if not (self.base <= pos and pos + need <= self.base + len(self.buf)):
            self.fh.seek(pos)
            self.base, self.buf = pos, self.fh.read(max(need, CHUNK_BYTES))
        return self.buf, pos - self.base


def _frame(reader: _Reader, pos: int) -> tuple[int, int, int] | None:
    buf, i = reader.window(pos, 4)
    return frame_at(buf, i)


def _is_tail_tag(reader: _Reader, pos: int) -> bool:
    """A trailing tag, not audio: ID3v1 ("TAG", last 128 bytes) or APE ("APETAGEX")."""
    buf, i = reader.window(pos, 8)
    return buf[i:i + 3] == b"TAG" and reader.size - pos <= 128 or buf[i:i + 8] == b"APETAGEX"


def _walk(fh, size: int, stop_at_tag: bool) -> tuple[int, int, bool]:
    """``walk`` over an open file of ``size`` bytes. With ``stop_at_tag``, a file whose first frame
    holds a Xing/Info/VBRI header is not walked (0 samples): libsndfile's length is then exact."""
    reader = _Reader(fh, size)
    pos = _id3v2_size(reader.window(0, 10)[0][:10])
    samples, rate, synced, first, has_tag, junk = 0, 0, False, True, False, 0
    while pos < size - 3 and not _is_tail_tag(reader, pos):
        frame = _frame(reader, pos)
        # in sync, a frame follows the last; after bytes that are not a frame (or at the start), a
        # header counts only when another frame, or the end of the file, follows it: a lone FF Ex
        # in a tag or damaged bytes is not a frame
        if frame is not None and not synced and pos + frame[0] < size - 3 and _frame(reader, pos + frame[0]) is None:
            frame = None
        if frame is None:
            synced = False
            buf, i = reader.window(pos + 1, CHUNK_BYTES)
            hit = buf.find(b"\xff", i)  # the next possible header, at C speed
            step = (hit - i + 1) if hit >= 0 else len(buf) - i + 1
            junk += step
            pos += step
            if junk > MAX_JUNK_BYTES:
                break  # a megabyte without a frame: whatever follows (cover art, other data) is not audio
            continue
        length, count, frame_rate = frame
        if first:
            buf, i = reader.window(pos, TAG_SEARCH_BYTES)
            has_tag = any(tag in buf[i:i + min(length, TAG_SEARCH_BYTES)] for tag in VBR_TAGS)
            rate, first = frame_rate, False
            if has_tag and stop_at_tag:
                return 0, rate, True
        samples, synced, junk = samples + count, True, 0
        pos += length
    return samples, rate, has_tag


def walk(data: bytes) -> tuple[int, int, bool]:
    """(samples per channel, sample rate, has a Xing/Info/VBRI header) of the MPEG audio in
    ``data``; (0, 0, False) when no frame is found."""
    return _walk(io.BytesIO(bytes(data)), len(data), stop_at_tag=False)


@functools.lru_cache(maxsize=256)
def _unread_cached(path: bytes, size: int, mtime_ns: int, decodable_s: float) -> float:
    with open(path, "rb") as fh:
        samples, rate, has_tag = _walk(fh, size, stop_at_tag=True)
    if has_tag or not rate:
        return 0.0
    return max(0.0, samples / rate - decodable_s)


def unread_seconds(path: str | Path, decodable_s: float) -> float:
    """Seconds of audio in an MP3's frames beyond the ``decodable_s`` libsndfile reports, for an
    MP3 without a Xing/Info/VBRI header (0.0 for one with such a header, whose length libsndfile
    takes from it, or when nothing lies beyond). Walks the file once per (path, size, mtime),
    holding a megabyte at a time: about 0.3 s for an hour of 16 kHz MP3. Cached, because a
    scan probes a file more than once."""
    name = os.fsencode(Path(path))
    st = os.stat(name)
    return _unread_cached(name, st.st_size, st.st_mtime_ns, float(decodable_s))
