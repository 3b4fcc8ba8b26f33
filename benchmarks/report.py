"""The printed tables."""

from __future__ import annotations

from .common import CLASS, METHODS
from .targets import _ok


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _method_rows(b: dict) -> list[str]:
    bb = b.get("backbone_ms_per_img")
    runs = []
    if "methods" in b["cases"]:
        runs.append((f"N={b['n_train']}, {b['n_test']} test", b))
    if "growth" in b["cases"]:
        runs.append((f"N={b['n50']['n_train']}, {b['n50']['n_test']} test", b["n50"]))
    if b.get("large"):
        runs.append((f"N={b['large']['n_train']}, {b['large']['n_test']} test", b["large"]))
    if not runs:
        return []
    lines = [
        "| run | method | fit s | infer ms/img | infer / backbone | backbone ms/img in run | peak RSS GiB "
        "| total s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, block in runs:
        for name in METHODS:
            if name not in block:
                continue
            r = block[name]
            if not _ok(r):
                lines.append(f"| {label} | {name} | failed: {r.get('error', '?')[:60]} | | | | | |")
                continue
            lines.append(
                f"| {label} | {name} | {r['fit_s']:.2f} | {r['infer_ms_per_img']:.1f} | "
                f"{_fmt(r['infer_ms_per_img'] / bb if bb else None)}x | "
                f"{r['backbone_ms_per_img']:.1f} | "
                f"{r['peak_rss_gib']:.2f} | {r['total_s']:.1f} |"
            )
    pc = b.get("patchcore")
    if _ok(pc) and pc.get("coreset_s") is not None:
        layers = "+".join(map(str, pc["layers"]))
        lines += [
            "",
            f"PatchCore (layers {layers}): greedy selection of "
            f"{pc['coreset_kept']:,} of {pc['coreset_points']:,} patch vectors "
            f"{pc['coreset_s']:.1f} s; backbone over the {pc['n_train']} training images (to layer "
            f"{pc['last_layer']}) {pc['backbone_train_s']:.1f} s; infer / its own backbone "
            f"{pc['infer_ms_per_img'] / pc['backbone_ms_per_img']:.2f}x",
        ]
        used = pc.get("search") or {}
        if used.get("first_call_s"):
            lines.append(
                "PatchCore search: {} picked ({} on its first {} queries)".format(
                    used["choice"],
                    ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in used["first_call_s"].items()),
                    used["first_call_queries"],
                )
            )
    return lines


def _inspect_lines(b: dict) -> list[str]:
    """The inspection cases: fit_model's calibration cost, the predict stream, the server."""
    lines = []
    if "calibration" in b["cases"]:
        lines += [
            "",
            "fit_model (frame whole, the final fit, then its leave-one-out calibration):",
            "",
            "| method | images | folds | features s | calibration s | fit s | calibration / (features + fit) "
            "| peak RSS GiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in b["calibration"]:
            r = b["calibration"][m]
            if not _ok(r):
                lines.append(f"| {m} | failed: {r.get('error', '?')[:60]} | | | | | | |")
                continue
            lines.append(
                f"| {m} | {r['n_images']} | {r['folds']} | {r['features_s']:.1f} | {r['calibration_s']:.1f} "
                f"| {r['fit_s']:.1f} | {r['ratio']:.2f}x | {r['peak_rss_gib']:.2f} |"
            )
    if "stream" in b["cases"]:
        st = b["stream"]
        lines += [
            "",
            f"predict_paths (PaDiM, frame whole, batch {b['batch_size']}; JSON lines, CSV, mask, heatmap and "
            f"overlay per image), each size in a fresh process; backbone alone = the same frames and "
            f"batches through the model's extractor (to layer {st.get('last_layer', '?')}):",
            "",
            "| images | stream s | stream img/s | backbone-only s | backbone-only img/s | stream / backbone "
            "| peak RSS GiB |",
            "|---|---|---|---|---|---|---|",
        ]
        if not _ok(st.get("model")):
            lines.append(
                f"| failed to fit the model: {st.get('model', {}).get('error', '?')[:80]} | | | | | | |"
            )
        for r in st["runs"]:
            if not _ok(r):
                lines.append(f"| {r['n']} | failed: {r.get('error', '?')[:60]} | | | | | |")
                continue
            lines.append(
                f"| {r['n']} | {r['stream_s']:.1f} | {r['stream_img_s']:.2f} | {r['backbone_s']:.1f} | "
                f"{r['backbone_img_s']:.2f} | {r['ratio']:.2f}x | {r['peak_rss_gib']:.2f} |"
            )
    sv = b.get("serve")
    if sv is not None:
        lines.append("")
        if not sv.get("available"):
            lines.append(f"serve: not available ({sv.get('reason', '?')})")
        elif not _ok(sv):
            lines.append(f"serve: failed: {sv.get('error', '?')}")
        else:
            lines.append(
                f"serve (uvicorn at {sv['url']}, PaDiM, frame whole): median POST /predict "
                f"{sv['latency_ms_median']:.1f} ms over {sv['requests']} warm requests "
                f"({sv['single_errors']} errors) vs backbone forward of 1 image "
                f"{sv['backbone_1_ms_median']:.1f} ms = {sv['ratio']:.2f}x; {sv['clients']} concurrent "
                f"clients, {sv['total']} requests: "
                f"{sv['concurrent_errors']} errors, {sv['concurrent_req_s']:.2f} req/s, p50 "
                f"{_fmt(sv['concurrent_ms_p50'], '.0f')} ms, p95 {_fmt(sv['concurrent_ms_p95'], '.0f')} ms"
            )
    return lines


def _table(b: dict) -> str:
    bb = b.get("backbone_ms_per_img")
    m = b["machine"]
    w = f"ImageNet ({b['weights_source']})" if b["weights"] == "imagenet" else "RANDOM (untrained)"
    gpu = "GPU present, unused" if m["gpu"] else "no GPU"
    load = "/".join(f"{x:.2f}" for x in m["load_avg_start"])
    lines = [
        f"spadim benchmark: {m['nproc']} CPU cores, {gpu}, torch {m['torch']} ({m['torch_threads']} threads)",
        f"cpu {m['cpu_model']}; load average at start {load} (1/5/15 min)",
        f"arch {b['arch']}, weights {w}",
        f"data: synthetic '{CLASS}', {b['n_train']} train / {b['n_test']} test at {b['image_size']} px, "
        f"crop {b['crop']}; PaDiM d={b['padim_d']}, SPADE K={b['k']}, batch {b['batch_size']}",
        f"cases: {', '.join(b['cases'])}",
        "nearest-neighbour search: the probe picked {picked} ({probe}); SPADE layer-1 search "
        "(3136 x 15680 x 256): {full}; brute force at PatchCore's shape (784 x 15680 x 1024, random rows): "
        "{pc}".format(
            picked=b["search"]["picked"],
            probe=", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in b["search"]["seconds"].items()),
            full=", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in b["search"]["spade_layer1_s"].items()),
            pc=", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in b["search"]["patchcore_s"].items()),
        )
        if "search" in b
        else "",
    ]
    if "backbone" in b["cases"]:
        lines += [
            "",
            f"backbone alone (load + forward to layer 4): {_fmt(bb, '.1f')} ms/img "
            f"({b['backbone'].get('n_images', '-')} images)",
        ]
    rows = _method_rows(b)
    if rows:
        lines += [""] + rows
    if "sweep" in b["cases"]:
        sw = b["sweep"]
        if _ok(sw):
            lines += [
                "",
                f"SPADE layer sweep ({sw['n_combos']} subsets of layers 1-4): "
                f"one scoring {sw['one_score_s']:.1f} s;"
                f" sweep {sw['sweep_s']:.1f} s (neighbours + per-layer maps {sw['grids_s']:.1f} s, "
                f"fusions {sw['fuse_s']:.1f} s) = {sw['ratio']:.2f}x",
            ]
        lines.append(f"PaDiM layer sweep: {b['padim_sweep']['note']}")
    lines += _inspect_lines(b)
    lines += ["", "| target | value | limit | result |", "|---|---|---|---|"]
    for t in b["targets"]:
        res = "skipped/failed" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        unit = t["unit"]
        lines.append(
            f"| {t['name']} | {_fmt(t['value'], '.3f')} {unit} | {t['op']} {t['limit']} {unit} | {res} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main
