"""Crafted hostile images, built byte by byte (no file is stored in the repository)."""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A grayscale PNG header declaring width x height, one tiny IDAT and IEND (valid CRCs)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + extra
        + _chunk(b"IDAT", zlib.compress(b"\0" * (min(width, 64) + 1)))
        + _chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=1)
def hostile() -> dict[str, bytes]:
    """name -> bytes: a pixel bomb, inflating text and ICC chunks, a huge JPEG header, many pages, frames."""
    inflating = zlib.compress(bytes(50_000_000), 9)  # 49 KB that inflate to 50 MB
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 65535, 65535, 1) + b"\x01\x11\x00"
    frames = [Image.new("L", (8, 8), i) for i in range(200)]
    tiff, apng = io.BytesIO(), io.BytesIO()
    frames[0].save(tiff, "TIFF", save_all=True, append_images=frames[1:])
    frames[0].save(apng, "PNG", save_all=True, append_images=frames[1:4])
    return {
        "bomb.png": png(30000, 30000),
        "ztxt.png": png(8, 8, _chunk(b"zTXt", b"comment\0\0" + inflating)),
        "iccp.png": png(8, 8, _chunk(b"iCCP", b"icc\0\0" + inflating)),
        "huge.jpg": b"\xff\xd8" + sof + b"\xff\xd9",
        "pages.tif": tiff.getvalue(),
        "animated.png": apng.getvalue(),
    }
