"""Posed-object classes of the embedded data set (``nut``, ``plate``): scene and pose, engraving,
the two renderers and their defects, background dust and the shadow/composite finishing step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .drawing import (
    _F32,
    _Rng,
    _bezier,
    _blob,
    _disk,
    _down,
    _fill,
    _fix,
    _grid,
    _grow,
    _line,
    _noise,
    _quantise,
    _rings,
    _ss,
    _walk,
)

_LIGHT = -0.75 * math.pi  # light from the top-left (image y points down)


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

