"""Hostile images refused before decoding: a file is judged by its header, not by what it expands to.

A 1 MB PNG can declare 30,000 x 30,000 pixels (2.7 GB once decoded), a 20-byte JPEG 65,535 x 65,535;
a PNG text or ICC chunk can inflate without bound, and a TIFF can hold thousands of pages. Pillow reads
the header (size, frames, ancillary chunks with its own size limits) without decoding the pixels; only
an image that passes goes on to OpenCV. ``fit``, ``predict``, ``evaluate`` and ``serve`` all decode
through :func:`spadim.data.mvtec.read_rgb` / ``decode_rgb``, which call :func:`check_header`.
"""

from __future__ import annotations

import io
import warnings

from spadim.errors import SpadimError

DEFAULT_MAX_PIXELS = 50_000_000  # 50 megapixels: above any inspection camera in common use
_limit = {"pixels": DEFAULT_MAX_PIXELS}


def set_max_pixels(pixels: int) -> None:
    """The process-wide limit (``serve --max-pixels``); every later decode is checked against it."""
    if not pixels >= 1:
        raise SpadimError(f"`max_pixels` must be a positive pixel count (got {pixels})")
    _limit["pixels"] = int(pixels)


def max_pixels() -> int:
    return _limit["pixels"]


class ImageRefused(SpadimError):
    """An image refused from its header alone (too many pixels, several frames, an inflating chunk)."""


def check_header(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) of an encoded image whose header passes; raises :class:`ImageRefused` otherwise.
    Formats Pillow does not know are left to OpenCV, whose decoder then answers for itself."""
    from PIL import Image, UnidentifiedImageError

    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # the header only: no pixel is decoded
                width, height = image.size
                several = bool(getattr(image, "is_animated", False))
    except Image.DecompressionBombError as exc:
        raise ImageRefused(
            f"image {name} is refused before decoding ({str(exc).split(',')[0]}), over the limit of "
            f"{limit / 1e6:g} megapixels: resize it (or raise `max_pixels` where the host has the memory)"
        ) from None
    except UnidentifiedImageError:
        return 0, 0
    except (ValueError, OSError, SyntaxError) as exc:  # e.g. a PNG text/ICC chunk that inflates too far
        raise ImageRefused(f"image {name} has a malformed or oversized header ({exc}): re-save the image") from None
    if width * height > limit:
        raise ImageRefused(
            f"image {name} declares {width} x {height} = {width * height / 1e6:.3g} megapixels, over the limit "
            f"of {limit / 1e6:g}: resize it (or raise `max_pixels` where the host has the memory)"
        )
    if several:
        raise ImageRefused(f"image {name} holds several frames or pages: send one single-frame image")
    return width, height
