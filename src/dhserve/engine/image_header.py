"""The size an image file declares in its header, read without decoding a pixel.

Why: a still image is a decompression bomb's favourite shape. A 746 KB PNG can declare
16000x16000 pixels, and FFmpeg, asked to open it, decodes the whole picture (7 s, 740 MB)
before anyone could look at its size. Reading the few header bytes first lets probe refuse it
(video.too_large) in no time. Pure byte parsing: no PyAV, no numpy, nothing decoded.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

HEADER_BYTES = 64             # enough for every format's size field but JPEG's
# Start-of-frame markers: every one but DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_MAX_SEGMENTS = 256       # EXIF, ICC and other APPn blocks before the frame header


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) an image file declares in its header (PNG/APNG, JPEG, GIF, WebP, BMP),
    read without decoding a pixel; None for anything else."""
    with open(path, "rb") as f:
        # A cut header reads as size 0: FFmpeg then judges the file
        head = f.read(HEADER_BYTES).ljust(HEADER_BYTES, b"\0")
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:2] == b"BM":
            if struct.unpack("<I", head[14:18])[0] == 12:          # OS/2 BITMAPCOREHEADER
                return struct.unpack("<HH", head[18:22])
            w, h = struct.unpack("<ii", head[18:26])
            return abs(w), abs(h)
        if head[:3] == b"\xff\xd8\xff":
            f.seek(2)
            return _jpeg_size(f)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """The size in a WebP file's first chunk: lossy (VP8), lossless (VP8L) or extended
    (VP8X)."""
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return (int.from_bytes(head[24:27], "little") + 1,
                int.from_bytes(head[27:30], "little") + 1)
    return None


def _jpeg_size(f: BinaryIO, max_segments: int = JPEG_MAX_SEGMENTS) -> tuple[int, int] | None:
    """The first start-of-frame's size, walking the marker segments (EXIF and other APPn
    blocks come first); None when the scan starts without one."""
    for _ in range(max_segments):
        byte = f.read(1)
        while byte == b"\xff":                  # fill bytes before the marker code
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:   # TEM, RSTn, SOI: no length
            continue
        length = f.read(2)
        if len(length) < 2 or marker in (0xD9, 0xDA):  # EOI or start of scan
            return None
        if marker in JPEG_SOF:
            sof = f.read(5)
            if len(sof) < 5:
                return None
            height, width = struct.unpack(">HH", sof[1:5])
            return width, height
        f.seek(struct.unpack(">H", length)[0] - 2, os.SEEK_CUR)
        nxt = f.read(1)
        if nxt != b"\xff":
            return None
    return None
