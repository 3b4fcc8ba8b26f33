"""Every target in one place. Each ratio divides by the backbone time measured in the same process
and the same stretch of time as the case it judges, so a disturbed standalone backbone run cannot
flatter it."""

from __future__ import annotations

import math


def _ok(r: dict | None) -> bool:
    return bool(r) and "error" not in r


def _target(name: str, value, limit: float, unit: str = "", op: str = "<=") -> dict:
    bad = value is None or (isinstance(value, float) and math.isnan(value))
    ok = None if bad else bool(value <= limit if op == "<=" else value >= limit)
    return {
        "name": name,
        "value": None if bad else round(value, 4),
        "limit": limit,
        "unit": unit,
        "op": op,
        "pass": ok,
    }


def _get(r, key):
    return r[key] if _ok(r) else None


def _ratio(v, ref):
    return None if v is None or not ref else v / ref


def _targets(b: dict) -> list[dict]:
    """The targets of the cases that ran: backbone and methods, then the inspection path."""
    cases = b["cases"]
    sp, pd = b.get("spade"), b.get("padim")
    d = b["padim_d"]
    t = []
    if "methods" in cases:
        # each against the backbone that ran in its own process, in the same stretch of time
        t += [
            _target(
                "PaDiM inference / its backbone (per image)",
                _ratio(_get(pd, "infer_ms_per_img"), _get(pd, "backbone_ms_per_img")),
                1.5,
                "x",
            ),
            _target(
                "PaDiM one image alone / the backbone on one image",
                _ratio(_get(pd, "one_image_ms"), _get(pd, "backbone_one_ms")),
                1.5,
                "x",
            ),
            _target(
                "SPADE inference / its backbone (per image, K=5)",
                _ratio(_get(sp, "infer_ms_per_img"), _get(sp, "backbone_ms_per_img")),
                4.0,
                "x",
            ),
            _target(
                "PaDiM fit / its backbone over the training images",
                _ratio(_get(pd, "fit_s"), _get(pd, "backbone_train_s")),
                2.0,
                "x",
            ),
        ]
        pc = b.get("patchcore")
        if pc is not None:  # against the backbone PatchCore runs (to layer 3), measured in the same process
            t += [
                _target(
                    "PatchCore inference / its backbone (per image, layers 2+3)",
                    _ratio(_get(pc, "infer_ms_per_img"), _get(pc, "backbone_ms_per_img")),
                    2.0,
                    "x",
                ),
                _target(
                    f"PatchCore coreset selection / its backbone over the {b['n_train']} training images",
                    _ratio(_get(pc, "coreset_s"), _get(pc, "backbone_train_s")),
                    2.0,
                    "x",
                ),
                _target(f"PatchCore peak RSS, N={b['n_train']}", _get(pc, "peak_rss_gib"), 4.0, "GiB"),
            ]
        t += [
            _target(f"SPADE peak RSS, N={b['n_train']}", _get(sp, "peak_rss_gib"), 6.0, "GiB"),
            _target(f"PaDiM peak RSS, N={b['n_train']}, d={d}", _get(pd, "peak_rss_gib"), 6.0, "GiB"),
        ]
        if "growth" in cases:
            n50 = b["n50"]
            p50, p200 = _get(n50["padim"], "peak_rss_gib"), _get(pd, "peak_rss_gib")
            growth = None if p50 is None or p200 is None else abs(p200 - p50) / p50
            t.append(
                _target(
                    f"PaDiM peak RSS change N={n50['n_train']} -> N={b['n_train']}", growth, 0.10, "fraction"
                )
            )
    big = b.get("large")
    if big is not None:
        for m in ("spade", "padim"):
            t.append(
                _target(
                    f"{m.upper() if m == 'spade' else 'PaDiM'} peak RSS, "
                    f"{big['n_train']} train / {big['n_test']} test",
                    _get(big[m], "peak_rss_gib"),
                    6.0,
                    "GiB",
                )
            )
    if "sweep" in cases:
        t.append(
            _target(
                "SPADE 15-subset sweep / one scoring with layers 1,2,3,4", _get(b["sweep"], "ratio"), 1.3, "x"
            )
        )
    if "calibration" in cases:
        for m in b["calibration"]:
            r = b["calibration"][m]
            label = {"spade": "SPADE", "padim": "PaDiM", "patchcore": "PatchCore"}[m]
            t.append(
                _target(
                    f"{label} fit_model calibration / (features + fit), "
                    f"N={_get(r, 'n_images') or b['n_train']}",
                    _get(r, "ratio"),
                    1.0,
                    "x",
                )
            )
    if "stream" in cases:
        runs = b["stream"]["runs"]
        for r in runs:
            t.append(
                _target(
                    f"predict stream / backbone-only rate, {r['n']} images", _get(r, "ratio"), 0.8, "x", ">="
                )
            )
        if len(runs) >= 2:
            small, large = runs[0], runs[-1]
            t.append(
                _target(
                    f"predict stream peak RSS, {large['n']} / {small['n']} images",
                    _ratio(_get(large, "peak_rss_gib"), _get(small, "peak_rss_gib")),
                    1.1,
                    "x",
                )
            )
    sv = b.get("serve")
    if sv is not None and sv.get("available"):
        t.append(
            _target(
                "serve median POST /predict latency / backbone forward of 1 image",
                _get(sv, "ratio"),
                1.5,
                "x",
            )
        )
        t.append(
            _target(
                f"serve errors, {sv.get('clients', '?')} concurrent clients x {sv.get('total', '?')} "
                f"requests",
                _get(sv, "concurrent_errors"),
                0,
                "errors",
            )
        )
    return t
