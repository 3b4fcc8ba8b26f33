"""Low-level raster helpers shared by the texture and object renderers of the embedded data set:
smooth noise, anti-aliased lines and fills, random outlines, morphology, reduction and quantisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

_F32 = np.float32
_Rng = np.random.Generator


def _ss(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Smoothstep from e0 to e1 (e1 < e0 gives a falling edge)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _noise(
    rng: _Rng, n: int, scale: float, octaves: int = 4, gain: float = 0.5
) -> np.ndarray:
    """n x n multi-octave smooth noise (zero mean, unit std); `scale` is the coarsest feature in px."""
    out = np.zeros((n, n), _F32)
    amp = 1.0
    for _ in range(octaves):
        s = max(scale, 1.0)
        g = math.ceil(n / s) + 2
        up = cv2.resize(
            rng.standard_normal((g, g), dtype=_F32),
            (int(g * s), int(g * s)),
            interpolation=cv2.INTER_CUBIC,
        )
        oy, ox = rng.integers(0, up.shape[0] - n + 1, 2)
        out += amp * up[oy : oy + n, ox : ox + n]
        amp *= gain
        scale /= 2.0
    return (out - out.mean()) / (out.std() + 1e-6)


def _rings(rng: _Rng, r: np.ndarray, period: float) -> np.ndarray:
    """Concentric turning marks: smoothed 1-D noise along the radius, about unit amplitude."""
    n = int(r.max() / period) + 3
    vals = np.convolve(rng.standard_normal(n), [0.25, 0.5, 0.25], mode="same")
    return np.interp(r / period, np.arange(n), vals).astype(_F32) * 1.6


def _canvas_draw(
    shape: tuple[int, int], draw: Callable[[np.ndarray], None]
) -> np.ndarray:
    """Run a cv2 drawing call on a blank uint8 canvas and return coverage in [0, 1]."""
    c = np.zeros(shape, np.uint8)
    draw(c)
    return c.astype(_F32) / 255.0


def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * 16.0).astype(np.int32)


def _line(shape: tuple[int, int], pts: np.ndarray, thickness: int) -> np.ndarray:
    return _canvas_draw(
        shape,
        lambda c: cv2.polylines(
            c, [_fix(pts)], False, 255, thickness, cv2.LINE_AA, shift=4
        ),
    )


def _fill(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    return _canvas_draw(
        shape, lambda c: cv2.fillPoly(c, [_fix(pts)], 255, cv2.LINE_AA, shift=4)
    )


def _walk(
    rng: _Rng, start: np.ndarray, angle: float, n: int, step: float, wiggle: float
) -> np.ndarray:
    """Random-walk polyline of n steps with a drifting heading."""
    ang = angle + np.cumsum(rng.normal(0.0, wiggle, n))
    steps = step * np.stack([np.cos(ang), np.sin(ang)], 1)
    return np.vstack([start, start + np.cumsum(steps, 0)])


def _bezier(
    p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, n: int = 80
) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (
        (1 - t) ** 3 * p0
        + 3 * (1 - t) ** 2 * t * p1
        + 3 * (1 - t) * t**2 * p2
        + t**3 * p3
    )


def _blob(
    rng: _Rng,
    centre: np.ndarray,
    radius: float,
    rough: float,
    n: int = 40,
    jag: float = 0.0,
) -> np.ndarray:
    """Irregular closed outline: low-order Fourier radius, random aspect and optional jagged vertices."""
    th = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    k = np.arange(2, 7)[:, None]
    amp = rng.normal(0.0, rough, (5, 1)) / k
    rad = 1.0 + (amp * np.cos(k * th + rng.uniform(0, 2 * math.pi, (5, 1)))).sum(0)
    rad *= 1.0 + rng.uniform(-jag, jag, n)
    asp, rot = rng.uniform(0.7, 1.0), rng.uniform(0, math.pi)
    x, y = np.cos(th) * rad, np.sin(th) * rad * asp
    c, s = math.cos(rot), math.sin(rot)
    return centre + radius * np.clip(
        np.stack([c * x - s * y, s * x + c * y], 1), -2.0, 2.0
    )


def _disk(d: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * d + 1, 2 * d + 1))


def _grow(mask: np.ndarray, d: int) -> np.ndarray:
    """Dilate a boolean mask by d pixels."""
    return cv2.dilate(mask.astype(np.uint8), _disk(d)) > 0 if d > 0 else mask


def _down(img: np.ndarray, size: int) -> np.ndarray:
    """Area-average a (S, S[, C]) render to size x size, keeping the channel axis."""
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return out.reshape(size, size, -1) if img.ndim == 3 else out


def _quantise(rng: _Rng, img: np.ndarray, sigma: float) -> np.ndarray:
    noisy = img + rng.normal(0.0, sigma, img.shape).astype(_F32)
    return np.clip(noisy * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(_F32)
    return xx + 0.5, yy + 0.5

