"""How long an MP3 really is, by walking its frame headers (no decoding).

Why: libsndfile (through mpg123) takes an MP3's length from its Xing/Info/VBRI header, and
without one estimates it from the first frame's bitrate and the file size, then decodes no
further than that estimate. For a variable-bitrate MP3 without such a header the estimate can
be far too short: a 60 s test file read as 24.3 s, with no error. Counting the frames that are
there lets ``audio`` say how much libsndfile will leave unread instead of losing it silently.

Each MPEG audio frame starts with a 4-byte header giving its version, layer, bitrate, sample
rate and padding, hence its length in bytes and in samples (ISO/IEC 11172-3, 13818-3). The walk
skips a leading ID3v2 tag, stops at a trailing ID3v1 or APE tag, and after bytes that are not
a frame resynchronises on the next header that is followed by another one.
"""

from __future__ import annotations

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
HEAD_BYTES = 65536  # read first, to find the first frame and its tag without reading the whole file
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


def _id3v2_size(data: bytes | memoryview) -> int:
    if len(data) < 10 or bytes(data[:3]) != b"ID3":
        return 0
    size = (data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F)
    return 10 + size + (10 if data[5] & 0x10 else 0)  # header, body, footer


def _stop(data: bytes | memoryview, pos: int) -> bool:
    """A trailing tag, not audio: ID3v1 ("TAG", last 128 bytes) or APE ("APETAGEX")."""
    return bytes(data[pos:pos + 3]) == b"TAG" and len(data) - pos <= 128 or bytes(data[pos:pos + 8]) == b"APETAGEX"


def walk(data: bytes | memoryview, stop_at_tag: bool = False) -> tuple[int, int, bool]:
    """(samples per channel, sample rate, has a Xing/Info/VBRI header) of the MPEG audio in
    ``data``; (0, 0, False) when no frame is found. With ``stop_at_tag``, a file with such a
    header is not walked (its samples are reported as 0): libsndfile's length is then exact."""
    pos, samples, rate, first = _id3v2_size(data), 0, 0, True
    n = len(data)
    while pos < n - 3 and not _stop(data, pos):
        frame = frame_at(data, pos)
        if frame is None or (first and frame_at(data, pos + frame[0]) is None and pos + frame[0] < n):
            pos += 1  # not a frame (or a false sync before the first real one): resynchronise
            continue
        length, count, frame_rate = frame
        if first:
            if any(tag in bytes(data[pos:pos + min(length, TAG_SEARCH_BYTES)]) for tag in VBR_TAGS):
                if stop_at_tag:
                    return 0, frame_rate, True
                has_tag = True
            else:
                has_tag = False
            rate, first = frame_rate, False
        samples += count
        pos += length
    return samples, rate, (False if first else has_tag)


def unread_seconds(path: str | Path, decodable_s: float) -> float:
    """Seconds of audio in an MP3's frames beyond the ``decodable_s`` libsndfile reports, for an
    MP3 without a Xing/Info/VBRI header (0.0 for one with such a header, whose length libsndfile
    takes from it, or when nothing lies beyond). Reads the whole file once without decoding:
    about 60 MB for an hour at 128 kbit/s, and well under a second of walking."""
    with open(os.fsencode(Path(path)), "rb") as fh:
        fh.seek(_id3v2_size(fh.read(10)))  # an ID3v2 tag can hold megabytes of cover art
        if walk(memoryview(fh.read(HEAD_BYTES)), stop_at_tag=True)[2]:
            return 0.0  # the first frame holds a frame count: libsndfile's length is exact
        fh.seek(0)
        data = fh.read()
    samples, rate, _ = walk(memoryview(data))
    return max(0.0, samples / rate - decodable_s) if rate else 0.0
