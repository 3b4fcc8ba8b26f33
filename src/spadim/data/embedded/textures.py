"""Texture classes of the embedded data set (``tile``, ``fabric``): renderers, their defects and the
finishing step, kept apart from the posed objects because they share nothing but the drawing helpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy.spatial import cKDTree

from .drawing import (
    _F32,
    _Rng,
    _bezier,
    _blob,
    _down,
    _fill,
    _grid,
    _grow,
    _line,
    _noise,
    _quantise,
    _ss,
    _walk,
)


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
