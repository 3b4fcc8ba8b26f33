"""Deterministic synthetic inspection data set in the MVTec AD layout (the embedded default data).

Four classes: two textures (``tile``, ``fabric``) and two posed objects on a plain background
(``nut`` in colour, ``plate`` in grayscale), each with two defect types and pixel masks.
Images are rendered at twice the output size and reduced with area averaging (anti-aliasing).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree

from spadim.errors import SpadimError

GENERATOR_VERSION = "spadim-synth/1"
DEFAULT_CLASSES = ("tile", "fabric", "nut", "plate")
DEFECTS = {
    "tile": ("crack", "stain"),
    "fabric": ("hole", "thread"),
    "nut": ("scratch", "chip"),
    "plate": ("dent", "contamination"),
}
MARKER_NAME = ".spadim-synth.json"

_AREA_RANGE = (0.003, 0.05)  # accepted mask area fraction of a defect
_TRIES = 30  # defect redraws before accepting the first non-empty one
_DUST_P = {"train": 0.15, "test": 0.5}  # chance of background dust on object classes
_LIGHT = -0.75 * math.pi  # light from the top-left (image y points down)
_F32 = np.float32
_Rng = np.random.Generator


# ----------------------------------------------------------------------------- primitives


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


# ----------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class _Tex:
    img: np.ndarray  # (S, S, 3) float RGB
    thread: np.ndarray | None = None  # fabric: id of the visible thread per pixel


_TILE_CHIPS = np.array(
    [  # RGB of terrazzo aggregate
        [0.30, 0.30, 0.32],
        [0.14, 0.14, 0.15],
        [0.93, 0.92, 0.89],
        [0.62, 0.42, 0.33],
        [0.70, 0.62, 0.50],
        [0.47, 0.50, 0.46],
        [0.55, 0.55, 0.57],
    ],
    _F32,
)
_TILE_P = np.array([0.2, 0.12, 0.2, 0.1, 0.16, 0.1, 0.12])


def _tile(rng: _Rng, n: int) -> _Tex:
    """Terrazzo: mottled matrix with warped-Voronoi aggregate chips and small dark pores."""
    s = n / 512
    xx, yy = _grid(n)
    matrix = np.array([0.79, 0.76, 0.71], _F32) * rng.uniform(0.97, 1.03)
    img = matrix * (1.0 + 0.05 * _noise(rng, n, 120 * s, 5))[..., None]
    cell = 26 * s
    m = int((n / cell + 4) ** 2)
    seeds = rng.uniform(-2 * cell, n + 2 * cell, (m, 2))
    wx = xx + 7 * s * _noise(rng, n, 40 * s, 3)
    wy = yy + 7 * s * _noise(rng, n, 40 * s, 3)
    d, idx = cKDTree(seeds).query(np.stack([wx.ravel(), wy.ravel()], 1), k=2)
    gap = (d[:, 1] - d[:, 0]).reshape(n, n).astype(_F32)
    lab = idx[:, 0].reshape(n, n)
    is_chip = (rng.random(m) < 0.6).astype(_F32)
    shrink = rng.uniform(2.0, 12.0, m).astype(_F32) * s
    colour = _TILE_CHIPS[rng.choice(len(_TILE_CHIPS), m, p=_TILE_P)] * rng.uniform(
        0.88, 1.12, (m, 1)
    )
    cov = _ss(shrink[lab], shrink[lab] + 2.0 * s, gap) * is_chip[lab]
    chip = colour[lab].astype(_F32) * (1.0 + 0.05 * _noise(rng, n, 8 * s, 2))[..., None]
    img = img * (1 - cov[..., None]) + chip * cov[..., None]
    pores = cv2.GaussianBlur(
        (_noise(rng, n, 3 * s, 1) > 2.6).astype(_F32), (0, 0), 1.0 * s
    )
    img *= (1.0 - 0.5 * np.clip(pores * 3, 0, 1))[..., None]
    return _Tex(img.astype(_F32))


def _tile_crack(rng: _Rng, t: _Tex) -> tuple[_Tex, np.ndarray]:
    """Thin dark irregular crack with an optional branch; mask = crack grown by ~1.5 px."""
    n = t.img.shape[0]
    s = n / 512
    step = 5 * s
    pts = _walk(
        rng,
        rng.uniform(0.15, 0.85, 2) * n,
        rng.uniform(0, 2 * math.pi),
        int(rng.uniform(0.3, 0.55) * n / step),
        step,
        0.12,
    )
    pts += rng.normal(0.0, 1.2 * s, pts.shape)
    th = max(1, round(rng.uniform(2.0, 3.5) * s))
    crack = _line((n, n), pts, th)
    if rng.random() < 0.6:
        k = int(rng.integers(len(pts) // 4, 3 * len(pts) // 4))
        head = math.atan2(*(pts[k + 1] - pts[k])[::-1]) + rng.choice(
            [-1, 1]
        ) * rng.uniform(0.5, 1.1)
        branch = _walk(rng, pts[k], head, len(pts) // 3, step, 0.2) + rng.normal(
            0.0, 1.2 * s, (len(pts) // 3 + 1, 2)
        )
        crack = np.maximum(crack, _line((n, n), branch, max(1, th - 1)))
    halo = cv2.GaussianBlur(crack, (0, 0), 3 * s)
    img = t.img * np.clip(1.0 - 0.7 * crack - 0.3 * halo, 0, 1)[..., None]
    return replace(t, img=img), _grow(crack > 0.3, max(1, round(3 * s)))


_STAINS = np.array(
    [[0.72, 0.45, 0.20], [0.35, 0.30, 0.26], [0.55, 0.62, 0.45], [0.45, 0.42, 0.60]],
    _F32,
)


def _tile_stain(rng: _Rng, t: _Tex) -> tuple[_Tex, np.ndarray]:
    """Soft-edged tinted blob with a darker drying rim; mask = blend > 0.3."""
    n = t.img.shape[0]
    rad = rng.uniform(0.05, 0.09) * n
    blob = _fill((n, n), _blob(rng, rng.uniform(0.2, 0.8, 2) * n, rad, 0.35))
    soft = cv2.GaussianBlur(blob, (0, 0), 0.18 * rad)
    alpha = np.clip(soft * (1.0 + 0.3 * _noise(rng, n, 0.5 * rad, 2)), 0, 1)
    alpha = np.clip(0.75 * alpha + 1.2 * alpha * (1 - alpha), 0, 1) * rng.uniform(
        0.75, 1.0
    )
    tint = _STAINS[rng.integers(len(_STAINS))] * 1.2
    img = t.img * (1 - alpha[..., None] + alpha[..., None] * tint)
    return replace(t, img=img.astype(_F32)), alpha > 0.3


_WARP = np.array([0.22, 0.30, 0.50], _F32)
_WEFT = np.array([0.80, 0.77, 0.70], _F32)
_BACKING = np.array([0.07, 0.07, 0.08], _F32)


def _fabric(rng: _Rng, n: int) -> _Tex:
    """2/2 twill: warp and weft floats with rounded profile, yarn twist, per-thread shade, random phase."""
    s = n / 512
    p = 13 * s  # thread pitch
    xx, yy = _grid(n)
    a = rng.uniform(-0.02, 0.02)
    u = (
        math.cos(a) * xx
        + math.sin(a) * yy
        + rng.uniform(0, 4 * p)
        + 1.5 * s * _noise(rng, n, 70 * s, 2)
    ) / p
    v = (
        -math.sin(a) * xx
        + math.cos(a) * yy
        + rng.uniform(0, 4 * p)
        + 1.5 * s * _noise(rng, n, 70 * s, 2)
    ) / p
    i, j = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = (u - i).astype(_F32), (v - j).astype(_F32)
    warp_top = (j - i) % 4 < 2
    along = np.where(
        warp_top, ((j - i) % 4 + fv) / 2, ((i - j - 1) % 4 + fu) / 2
    ).astype(_F32)
    across = np.where(warp_top, fu, fv)
    twist = np.sin(2 * math.pi * np.where(warp_top, fu + 2.5 * v, fv + 2.5 * u)).astype(
        _F32
    )
    shade = (
        (np.sin(math.pi * across) ** 0.6)
        * (0.5 + 0.5 * np.sin(math.pi * along) ** 0.6)
        * (1 + 0.08 * twist)
    )
    i0, j0 = i.min(), j.min()
    ni, nj = i.max() - i0 + 1, j.max() - j0 + 1
    gain = np.where(
        warp_top,
        rng.normal(1.0, 0.06, ni).astype(_F32)[i - i0],
        rng.normal(1.0, 0.05, nj).astype(_F32)[j - j0],
    )
    width = np.where(
        warp_top,
        rng.uniform(0.8, 1.15, ni).astype(_F32)[i - i0],
        rng.uniform(0.8, 1.15, nj).astype(_F32)[j - j0],
    )
    cover = _ss(0.08, 0.45, np.sin(math.pi * across) * width)
    colour = (
        np.where(warp_top[..., None], _WARP, _WEFT)
        * (gain * (0.35 + 0.75 * shade))[..., None]
    )
    img = _BACKING * (1 - cover[..., None]) + colour * cover[..., None]
    mottle = 1.0 + 0.04 * _noise(rng, n, 60 * s, 3) + 0.04 * _noise(rng, n, 2 * s, 1)
    img *= mottle[..., None]
    thread = np.where(warp_top, i - i0, -(j - j0) - 1)
    return _Tex(img.astype(_F32), thread)


def _fabric_hole(rng: _Rng, t: _Tex) -> tuple[_Tex, np.ndarray]:
    """Irregular region where the weave is missing (frayed thread ends) over a dark backing."""
    n = t.img.shape[0]
    s = n / 512
    rad = rng.uniform(0.045, 0.08) * n
    soft = cv2.GaussianBlur(
        _fill((n, n), _blob(rng, rng.uniform(0.2, 0.8, 2) * n, rad, 0.35)),
        (0, 0),
        0.3 * rad,
    )
    ids = t.thread - t.thread.min()
    fray = rng.uniform(-0.3, 0.3, ids.max() + 1).astype(_F32)[ids]
    hole = (soft + fray) > 0.5
    cover = cv2.GaussianBlur(hole.astype(_F32), (0, 0), 0.8 * s)
    backing = _BACKING * (1.2 + 0.4 * _noise(rng, n, 4 * s, 2))[..., None]
    shadow = 1.0 - 0.4 * cv2.GaussianBlur(hole.astype(_F32), (0, 0), 4 * s)
    cover = cover[..., None]
    img = t.img * shadow[..., None] * (1 - cover) + backing * cover
    return replace(t, img=img.astype(_F32)), hole


_YARNS = np.array(
    [
        [0.80, 0.16, 0.10],
        [0.90, 0.75, 0.15],
        [0.20, 0.60, 0.25],
        [0.06, 0.06, 0.06],
        [0.95, 0.95, 0.95],
    ],
    _F32,
)


def _fabric_thread(rng: _Rng, t: _Tex) -> tuple[_Tex, np.ndarray]:
    """Foreign curved yarn of another colour lying on the weave, with tube shading and shadow."""
    n = t.img.shape[0]
    s = n / 512
    length = rng.uniform(0.35, 0.6) * n
    ang = rng.uniform(0, 2 * math.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    p0 = rng.uniform(0.5 * n - 0.3 * n, 0.5 * n + 0.3 * n, 2) - d * length / 2
    p3 = p0 + d * length
    p1 = p0 + d * length / 3 + nrm * rng.uniform(-0.3, 0.3) * length
    p2 = p0 + 2 * d * length / 3 + nrm * rng.uniform(-0.3, 0.3) * length
    centre = _line((n, n), _bezier(p0, p1, p2, p3), 1) > 0.5
    dist = cv2.distanceTransform((~centre).astype(np.uint8), cv2.DIST_L2, 5)
    r = rng.uniform(2.2, 3.2) * s
    cover = _ss(r + 0.8, r - 0.8, dist)
    tube = np.sqrt(np.clip(1 - (dist / r) ** 2, 0, 1))
    shade = 0.45 + 0.55 * tube
    m = np.float32([[1, 0, 2.5 * s], [0, 1, 2.5 * s]])
    shadow = cv2.GaussianBlur(cv2.warpAffine(cover, m, (n, n)), (0, 0), 2 * s)
    yarn = _YARNS[rng.integers(len(_YARNS))] * shade[..., None]
    img = t.img * (1 - 0.45 * shadow)[..., None]
    img = img * (1 - cover[..., None]) + yarn * cover[..., None]
    return replace(t, img=img.astype(_F32)), _grow(cover > 0.5, max(1, round(2 * s)))


def _finish_texture(rng: _Rng, t: _Tex, size: int, dusty: bool) -> np.ndarray:
    return _quantise(rng, _down(t.img, size), 0.008)


# ----------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class _Scene:
    bg: np.ndarray  # (S, S, C) background
    obj: np.ndarray  # (S, S, C) object colour
    alpha: np.ndarray  # (S, S) object coverage
    # (S, S) coverage of the intact object (keeps dust out of chipped-off parts)
    footprint: np.ndarray
    cx: float
    cy: float
    rot: float  # canonical -> world rotation (rad)
    unit: float  # object size unit in px (nut apothem, plate radius)
    light: float  # light azimuth (rad, image coordinates)
    shadow: float  # shadow strength on the background


@dataclass(frozen=True)
class _Pose:
    cx: float
    cy: float
    rot: float
    x: np.ndarray  # canonical coordinates per pixel
    y: np.ndarray
    r: np.ndarray
    phw: np.ndarray  # world azimuth of each pixel around the centre
    lin: np.ndarray  # background lighting ramp, positive towards the light
    light: float


def _pose(rng: _Rng, n: int) -> _Pose:
    cx, cy = (float(v) for v in n / 2 + rng.uniform(-0.08, 0.08, 2) * n)
    rot = rng.uniform(0, 2 * math.pi)
    light = _LIGHT + rng.uniform(-0.15, 0.15)
    xx, yy = _grid(n)
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(rot), math.sin(rot)
    x, y = c * dx + s * dy, -s * dx + c * dy
    lin = ((xx - n / 2) * math.cos(light) + (yy - n / 2) * math.sin(light)) / n
    return _Pose(cx, cy, rot, x, y, np.hypot(x, y), np.arctan2(dy, dx), lin, light)


def _to_world(sc: _Scene, pts: np.ndarray) -> np.ndarray:
    c, s = math.cos(sc.rot), math.sin(sc.rot)
    return np.stack(
        [sc.cx + c * pts[:, 0] - s * pts[:, 1], sc.cy + s * pts[:, 0] + c * pts[:, 1]],
        1,
    )


def _engrave(raster: np.ndarray, ps: _Pose, light: float, s: float) -> np.ndarray:
    """Sample a canonical engraving raster in the pose; returns a shading offset (recess + lit rim)."""
    h = raster.shape[0] / 2 - 0.5
    e = cv2.remap(raster, ps.x + h, ps.y + h, cv2.INTER_LINEAR, borderValue=0)
    e = cv2.GaussianBlur(e, (0, 0), 0.7 * s)
    k = 2.0 * s
    m = np.float32([[1, 0, -k * math.cos(light)], [0, 1, -k * math.sin(light)]])
    rim = e - cv2.warpAffine(e, m, e.shape[::-1])
    return -0.22 * e + 0.25 * rim


def _text(c: np.ndarray, text: str, centre: tuple[float, float], height: float) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    th = max(1, round(height / 7))
    (w, h), _ = cv2.getTextSize(text, font, 1.0, th)
    scale = height / h
    org = (int(centre[0] - w * scale / 2), int(centre[1] + height / 2))
    cv2.putText(c, text, org, font, scale, 255, th, cv2.LINE_AA)


def _nut_marks(n: int, a: float) -> np.ndarray:
    """Canonical engraving raster of the nut face: size/grade text, tick marks and a dot."""
    side = int(2.4 * a) // 2 * 2
    h = side / 2
    c = np.zeros((side, side), np.uint8)
    _text(c, "M12", (h, h - 0.78 * a), 0.17 * a)
    _text(c, "8.8", (h, h + 0.78 * a), 0.17 * a)
    for ang in np.linspace(math.radians(150), math.radians(210), 7):
        p = np.array([math.cos(ang), math.sin(ang)])
        cv2.line(
            c,
            tuple(_fix(h + 0.68 * a * p)),
            tuple(_fix(h + 0.86 * a * p)),
            255,
            max(1, round(a / 60)),
            cv2.LINE_AA,
            shift=4,
        )
    cv2.circle(
        c,
        tuple(_fix((h + 0.78 * a, h))),
        int(0.045 * a * 16),
        255,
        -1,
        cv2.LINE_AA,
        shift=4,
    )
    return c.astype(_F32) / 255.0


def _edge(r: np.ndarray, at: float, w: float) -> np.ndarray:
    return np.exp(-(((r - at) / w) ** 2))


def _nut(rng: _Rng, n: int) -> _Scene:
    """Hexagonal steel nut, turned face with anisotropic sheen, chamfers, threaded bore and stamping."""
    s = n / 512
    ps = _pose(rng, n)
    a = 0.195 * n * rng.uniform(0.985, 1.015)
    x, y, r = ps.x, ps.y, ps.r
    hexd = np.maximum(
        np.abs(x), np.maximum(np.abs(0.5 * x + 0.866 * y), np.abs(0.5 * x - 0.866 * y))
    )
    aa = 1.0 * s + 0.5
    alpha = _ss(a + aa, a - aa, hexd) * _ss(0.40 * a - aa, 0.40 * a + aa, r)
    out_lit = np.cos(ps.phw - ps.light)
    sheen = np.cos(2 * (ps.phw - ps.light))
    face = 0.56 + 0.035 * _rings(rng, r, 3 * s) + 0.13 * sheen - 0.12 * ps.lin
    chamfer = 0.42 + 0.30 * out_lit
    sink = 0.40 - 0.28 * out_lit
    thread = (
        0.20
        + 0.07 * np.sin(2 * math.pi * r / (0.035 * a) + np.arctan2(y, x))
        - 0.05 * out_lit
    )
    v = np.select(
        [r > 0.96 * a, r > 0.60 * a, r > 0.48 * a], [chamfer, face, sink], thread
    )
    w = 1.5 * s
    v *= 1 - 0.25 * (
        _edge(r, 0.96 * a, w) + _edge(r, 0.60 * a, w) + _edge(r, 0.48 * a, w)
    )
    v += _engrave(_nut_marks(n, a), ps, ps.light, s) + 0.015 * _noise(rng, n, 2 * s, 1)
    obj = (v[..., None] * np.array([0.96, 0.98, 1.02], _F32)).astype(_F32)
    tone = np.array([0.17, 0.18, 0.20], _F32) * rng.uniform(0.95, 1.05)
    bg = tone * (1 + 0.3 * ps.lin + 0.04 * _noise(rng, n, 200 * s, 3))[..., None]
    alpha = alpha.astype(_F32)
    return _Scene(
        bg.astype(_F32), obj, alpha, alpha, ps.cx, ps.cy, ps.rot, a, ps.light, 0.55
    )


def _nut_scratch(rng: _Rng, sc: _Scene) -> tuple[_Scene, np.ndarray]:
    """Thin bright or dark curved scratch across the face."""
    n = sc.alpha.shape[0]
    s = n / 512
    a = sc.unit
    t0, span = rng.uniform(0, 2 * math.pi), rng.uniform(1.4, 2.4)
    p0 = rng.uniform(0.78, 0.92) * a * np.array([math.cos(t0), math.sin(t0)])
    p3 = (
        rng.uniform(0.78, 0.92)
        * a
        * np.array([math.cos(t0 + span), math.sin(t0 + span)])
    )
    d = p3 - p0
    nrm = np.array([-d[1], d[0]]) / np.linalg.norm(d)
    p1 = p0 + d / 3 + nrm * rng.uniform(-0.25, 0.25) * a
    p2 = p0 + 2 * d / 3 + nrm * rng.uniform(-0.25, 0.25) * a
    line = _line(
        (n, n),
        _to_world(sc, _bezier(p0, p1, p2, p3)),
        max(1, round(rng.uniform(2.5, 4.0) * s)),
    )
    line *= sc.alpha
    tone = 0.95 if rng.random() < 0.6 else 0.08
    k = (0.85 * line)[..., None]
    obj = sc.obj * (1 - k) + tone * k
    return replace(sc, obj=obj.astype(_F32)), _grow(
        line > 0.3, max(1, round(2 * s))
    ) & (sc.alpha > 0.5)


def _nut_chip(rng: _Rng, sc: _Scene) -> tuple[_Scene, np.ndarray]:
    """Missing piece of the rim (often a corner) with a bright or dark fracture facet."""
    n = sc.alpha.shape[0]
    s = n / 512
    psi = (
        math.pi / 6 + math.pi / 3 * int(rng.integers(6)) + rng.uniform(-0.15, 0.15)
        if rng.random() < 0.6
        else rng.uniform(0, 2 * math.pi)
    )
    delta = (psi + math.pi / 6) % (math.pi / 3) - math.pi / 6
    centre = sc.unit / math.cos(delta) * np.array([math.cos(psi), math.sin(psi)])
    pts = _blob(rng, centre, rng.uniform(0.06, 0.095) * n, 0.3, n=48, jag=0.12)
    chip = _fill((n, n), _to_world(sc, pts))
    removed = np.minimum(chip, sc.alpha)
    alpha = sc.alpha * (1 - chip)
    rim = np.clip(cv2.dilate(chip, _disk(max(1, round(4 * s)))) - chip, 0, 1) * alpha
    k = (0.8 * rim)[..., None]
    obj = sc.obj * (1 - k) + (0.85 if rng.random() < 0.5 else 0.15) * k
    return replace(sc, obj=obj.astype(_F32), alpha=alpha.astype(_F32)), removed > 0.5


def _plate_marks(n: int, rad: float) -> np.ndarray:
    """Canonical engraving raster of the plate: part number and lot text."""
    side = int(2.2 * rad) // 2 * 2
    h = side / 2
    c = np.zeros((side, side), np.uint8)
    _text(c, "SPD-40", (h, h + 0.54 * rad), 0.085 * rad)
    _text(c, "LOT 07", (h, h - 0.54 * rad), 0.07 * rad)
    return c.astype(_F32) / 255.0


def _plate(rng: _Rng, n: int) -> _Scene:
    """Turned round plate (grayscale): hub, groove, bore, four chamfered bolt holes, edge notch, text."""
    s = n / 512
    ps = _pose(rng, n)
    rad = 0.25 * n * rng.uniform(0.985, 1.015)
    x, y, r = ps.x, ps.y, ps.r
    hang = math.pi / 4 + math.pi / 2 * np.arange(4)
    hx, hy = (
        0.66 * rad * np.cos(hang).astype(_F32),
        0.66 * rad * np.sin(hang).astype(_F32),
    )
    ddx, ddy = x[..., None] - hx, y[..., None] - hy
    dh = np.hypot(ddx, ddy)
    k = dh.argmin(-1)[..., None]
    dmin = np.take_along_axis(dh, k, -1)[..., 0]
    hole_az = (
        np.arctan2(
            np.take_along_axis(ddy, k, -1)[..., 0],
            np.take_along_axis(ddx, k, -1)[..., 0],
        )
        + ps.rot
    )
    dn = np.hypot(x - rad, y)
    notch_az = np.arctan2(y, x - rad) + ps.rot
    rb, rn = 0.08 * rad, 0.07 * rad
    aa = 1.0 * s + 0.5
    alpha = (
        _ss(rad + aa, rad - aa, r)
        * _ss(0.22 * rad - aa, 0.22 * rad + aa, r)
        * _ss(rb - aa, rb + aa, dmin)
        * _ss(rn - aa, rn + aa, dn)
    )
    out_lit = np.cos(ps.phw - ps.light)
    sheen = np.cos(2 * (ps.phw - ps.light))
    face = 0.52 + 0.03 * _rings(rng, r, 3 * s) + 0.15 * sheen - 0.1 * ps.lin
    hub = 0.66 + 0.015 * _rings(rng, r, 2 * s) + 0.08 * sheen
    v = np.select(
        [
            dmin < 0.105 * rad,
            dn < rn + 0.025 * rad,
            r > 0.95 * rad,
            r > 0.42 * rad,
            r > 0.40 * rad,
            r > 0.30 * rad,
        ],
        [
            0.42 - 0.3 * np.cos(hole_az - ps.light),
            0.42 - 0.3 * np.cos(notch_az - ps.light),
            0.42 + 0.3 * out_lit,
            face,
            np.full_like(r, 0.28),
            hub,
        ],
        0.42 - 0.3 * out_lit,
    )
    w = 1.5 * s
    v *= 1 - 0.25 * (
        _edge(r, 0.95 * rad, w) + _edge(r, 0.30 * rad, w) + _edge(dmin, 0.105 * rad, w)
    )
    v += _engrave(_plate_marks(n, rad), ps, ps.light, s) + 0.012 * _noise(
        rng, n, 2 * s, 1
    )
    bg = (
        0.78
        * rng.uniform(0.97, 1.03)
        * (1 + 0.12 * ps.lin + 0.012 * _noise(rng, n, 250 * s, 2))
    )
    alpha = alpha.astype(_F32)
    return _Scene(
        bg[..., None].astype(_F32),
        v[..., None].astype(_F32),
        alpha,
        alpha,
        ps.cx,
        ps.cy,
        ps.rot,
        rad,
        ps.light,
        0.4,
    )


def _on_plate_face(rng: _Rng, sc: _Scene) -> np.ndarray:
    """World position on the plate face between two bolt holes."""
    th = math.pi / 2 * int(rng.integers(4)) + rng.uniform(-0.4, 0.4)
    p = rng.uniform(0.5, 0.82) * sc.unit * np.array([[math.cos(th), math.sin(th)]])
    return _to_world(sc, p)[0]


def _plate_dent(rng: _Rng, sc: _Scene) -> tuple[_Scene, np.ndarray]:
    """Soft elliptical dent (or bump): relief shading against the light, smoothed turning marks."""
    n = sc.alpha.shape[0]
    c = _on_plate_face(rng, sc)
    ax = rng.uniform(0.05, 0.075) * n
    bx = ax * rng.uniform(0.5, 0.8)
    th = rng.uniform(0, math.pi)
    xx, yy = _grid(n)
    u = (xx - c[0]) * math.cos(th) + (yy - c[1]) * math.sin(th)
    w = -(xx - c[0]) * math.sin(th) + (yy - c[1]) * math.cos(th)
    q2 = (u / ax) ** 2 + (w / bx) ** 2
    h = np.exp(-q2)
    gy, gx = np.gradient(h)
    depth = rng.uniform(0.25, 0.4) * (1 if rng.random() < 0.75 else -1)
    relief = depth * ax * (gx * math.cos(sc.light) + gy * math.sin(sc.light)) - 0.05 * h
    v = sc.obj[..., 0]
    v = v * (1 - h) + cv2.GaussianBlur(v, (0, 0), 3.0) * h + relief * sc.alpha
    return replace(sc, obj=v[..., None].astype(_F32)), (q2 < 1) & (sc.alpha > 0.5)


def _plate_contamination(rng: _Rng, sc: _Scene) -> tuple[_Scene, np.ndarray]:
    """Opaque irregular blob of dark glossy grease with a few satellite droplets."""
    n = sc.alpha.shape[0]
    s = n / 512
    c = _on_plate_face(rng, sc)
    rad = rng.uniform(0.04, 0.065) * n
    blob = _fill((n, n), _blob(rng, c, rad, 0.45, n=36))
    for _ in range(int(rng.integers(0, 4))):
        ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(1.1, 1.5) * rad
        drop = _blob(
            rng,
            c + dist * np.array([math.cos(ang), math.sin(ang)]),
            rng.uniform(0.12, 0.25) * rad,
            0.2,
        )
        blob = np.maximum(blob, _fill((n, n), drop))
    cover = cv2.GaussianBlur(blob, (0, 0), 1.0 * s) * sc.alpha * rng.uniform(0.92, 1.0)
    xx, yy = _grid(n)
    hc = c + 0.35 * rad * np.array([math.cos(sc.light), math.sin(sc.light)])
    gloss = 0.3 * np.exp(
        -((xx - hc[0]) ** 2 + (yy - hc[1]) ** 2) / (2 * (0.25 * rad) ** 2)
    )
    grease = rng.uniform(0.08, 0.16) + 0.03 * _noise(rng, n, 0.3 * rad, 2) + gloss
    v = sc.obj[..., 0] * (1 - cover) + grease * cover
    return replace(sc, obj=v[..., None].astype(_F32)), cover > 0.5


def _dust(rng: _Rng, img: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """A few specks and lint fibres on the background only (clutter, not anomalies)."""
    n = footprint.shape[0]
    s = n / 512
    keep_out = _grow(footprint > 0.01, max(1, round(0.03 * n)))
    light_bg = float(img[~keep_out].mean()) > 0.5
    free = np.argwhere(
        ~keep_out[int(0.04 * n) : int(0.96 * n), int(0.04 * n) : int(0.96 * n)]
    ) + int(0.04 * n)
    layers = {True: np.zeros((n, n), np.uint8), False: np.zeros((n, n), np.uint8)}
    n_specks, n_lint = int(rng.integers(2, 7)), int(rng.integers(1, 3))
    picks = free[rng.integers(0, len(free), n_specks + n_lint)][:, ::-1].astype(float)
    for k, p in enumerate(picks):
        bright = rng.random() < (0.2 if light_bg else 0.8)
        if k < n_specks:
            cv2.circle(
                layers[bright],
                tuple(_fix(p)),
                int(rng.uniform(1.5, 3.5) * s * 16),
                255,
                -1,
                cv2.LINE_AA,
                shift=4,
            )
        else:
            fibre = _walk(
                rng,
                p,
                rng.uniform(0, 2 * math.pi),
                12,
                rng.uniform(0.003, 0.007) * n,
                0.3,
            )
            cv2.polylines(
                layers[bright],
                [_fix(fibre)],
                False,
                255,
                max(1, round(1.5 * s)),
                cv2.LINE_AA,
                shift=4,
            )
    free_f = (~keep_out).astype(_F32)
    lite = (layers[True].astype(_F32) / 255 * free_f)[..., None]
    dark = (layers[False].astype(_F32) / 255 * free_f)[..., None]
    return img * (1 - 0.85 * dark) * (1 - 0.8 * lite) + 0.8 * 0.85 * lite


def _finish_object(rng: _Rng, sc: _Scene, size: int, dusty: bool) -> np.ndarray:
    """Cast the soft shadow, composite the object, add optional dust, reduce and add sensor noise."""
    n = sc.alpha.shape[0]
    off = 0.022 * n
    m = np.float32(
        [[1, 0, -off * math.cos(sc.light)], [0, 1, -off * math.sin(sc.light)]]
    )
    shade = cv2.GaussianBlur(cv2.warpAffine(sc.alpha, m, (n, n)), (0, 0), 0.015 * n)
    a = sc.alpha[..., None]
    img = sc.bg * (1 - sc.shadow * shade)[..., None] * (1 - a) + sc.obj * a
    if dusty:
        img = _dust(rng, img, sc.footprint)
    return _quantise(rng, _down(img.astype(_F32), size), 0.006)


# ----------------------------------------------------------------------------- registry

_State = _Tex | _Scene
_DefectFn = Callable[[_Rng, _State], tuple[_State, np.ndarray]]


@dataclass(frozen=True)
class _Kind:
    render: Callable[[_Rng, int], _State]
    defects: dict[str, _DefectFn]
    finish: Callable[[_Rng, _State, int, bool], np.ndarray]
    is_object: bool


_KINDS: dict[str, _Kind] = {
    "tile": _Kind(_tile, {"crack": _tile_crack, "stain": _tile_stain}, _finish_texture, False),
    "fabric": _Kind(_fabric, {"hole": _fabric_hole, "thread": _fabric_thread}, _finish_texture, False),
    "nut": _Kind(_nut, {"scratch": _nut_scratch, "chip": _nut_chip}, _finish_object, True),
    "plate": _Kind(_plate, {"dent": _plate_dent, "contamination": _plate_contamination}, _finish_object, True),
}


def render_image(
    cls: str, rng: _Rng, size: int, defect: str | None = None, test: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (uint8 RGB (H, W, 3), or (H, W) for plate) and its boolean defect mask (None if good)."""
    kind = _KINDS[cls]
    dusty = kind.is_object and rng.random() < _DUST_P["test" if test else "train"]
    state = kind.render(rng, 2 * size)
    mask = None
    if defect is not None:
        chosen = None
        for _ in range(_TRIES):
            cand, m2 = kind.defects[defect](rng, state)
            m = _down(m2.astype(_F32), size) >= 0.5
            frac = float(m.mean())
            if _AREA_RANGE[0] <= frac <= _AREA_RANGE[1]:
                chosen = (cand, m)
                break
            if chosen is None and frac > 0:
                chosen = (cand, m)  # fallback: the first visible draw
        if chosen is None:
            raise RuntimeError(
                f"synth: could not draw a visible {cls}/{defect} defect at size {size}"
            )
        state, mask = chosen
    img = kind.finish(rng, state, size, dusty)
    return (img[..., 0] if img.shape[-1] == 1 else img), mask


# ----------------------------------------------------------------------------- data set


def _write_png(path: Path, img: np.ndarray) -> None:
    out = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    if not cv2.imwrite(str(path), out):
        raise SpadimError(f"could not write {path}; check the folder is writable")


def _write_class(
    dest: Path, cls: str, n_train: int, n_good: int, n_defect: int, size: int, seed: int
) -> None:
    ci = DEFAULT_CLASSES.index(cls)
    jobs: list[tuple[Path, Path | None, int, int, str | None]] = []
    jobs += [(dest / "train" / "good", None, 0, i, None) for i in range(n_train)]
    jobs += [(dest / "test" / "good", None, 1, i, None) for i in range(n_good)]
    for k, d in enumerate(DEFECTS[cls]):
        jobs += [
            (dest / "test" / d, dest / "ground_truth" / d, 2 + k, i, d)
            for i in range(n_defect)
        ]
    for img_dir, mask_dir, split, i, defect in jobs:
        rng = np.random.default_rng([seed, ci, split, i])
        img, mask = render_image(cls, rng, size, defect, test=split > 0)
        img_dir.mkdir(parents=True, exist_ok=True)
        _write_png(img_dir / f"{i:03d}.png", img)
        if mask_dir is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
            _write_png(mask_dir / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)


def _read_marker(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def make_dataset(
    root: str | os.PathLike[str],
    classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES,
    n_train: int = 20,
    n_test_good: int = 4,
    n_test_defect: int = 4,
    size: int = 256,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Generate the synthetic data set under `root` (MVTec AD layout) and return `root`.

    Deterministic in its arguments; a matching marker file makes a rerun a no-op. The set is built
    in a hidden sibling folder and renamed into place, so an interrupted run leaves no partial set.
    `n_test_defect` is per defect type (two per class).
    """
    root = Path(root)
    classes = tuple(classes)
    for c in classes:
        if c not in _KINDS:
            raise SpadimError(
                f"unknown synthetic class {c!r}; valid classes: {', '.join(DEFAULT_CLASSES)}"
            )
    if len(set(classes)) != len(classes) or not classes:
        raise SpadimError(
            f"synthetic classes must be distinct and non-empty, got {list(classes)}"
        )
    for name, val, low in (
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_defect", n_test_defect, 0),
        ("size", size, 32),
        ("seed", seed, 0),
    ):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < low:
            raise SpadimError(
                f"synthetic data set: {name} must be an integer >= {low}, got {val!r}"
            )
    params = {
        "generator": GENERATOR_VERSION,
        "classes": list(classes),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect),
        "size": int(size),
        "seed": int(seed),
    }
    say = progress or (lambda _msg: None)
    marker = root / MARKER_NAME
    if root.exists():
        if root.is_dir() and _read_marker(marker) == params:
            say(f"synthetic data set already in {root}")
            return root
        if not root.is_dir():
            raise SpadimError(
                f"{root} is a file, not a folder; choose an empty folder or delete it"
            )
        if any(root.iterdir()):
            what = (
                "a different synthetic data set" if marker.exists() else "other files"
            )
            raise SpadimError(
                f"{root} already holds {what}; choose an empty folder or delete it"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        n_images = n_train + n_test_good + 2 * n_test_defect
        for c in classes:
            say(f"generating synthetic class {c!r} ({n_images} images, {size}px)")
            _write_class(tmp / c, c, n_train, n_test_good, n_test_defect, size, seed)
        (tmp / MARKER_NAME).write_text(
            json.dumps(params, indent=2, sort_keys=True) + "\n"
        )
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        # A concurrent run may have finished the same set first.
        if _read_marker(marker) == params:
            return root
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"synthetic data set written to {root}")
    return root
