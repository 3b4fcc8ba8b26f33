"""Choose the layer subset per class from normal images alone (``--layers auto``), and its regret.

The study found that the best subset differs between classes, but a user has no defect masks for a
new product. So the training images are split, seeded, into ``FOLDS`` parts; the first part (20%,
at least one image) validates and the others fit. Each validation image gets ``COPIES`` synthetic
defects with exact masks (:func:`spadim.data.defects.make_defects`, structural and appearance kinds,
patches cut from the fit part), and every subset of layers 1-4 is fitted on the fit part and scored
on the validation images, normal and defective. The subset with the highest synthetic pixel AUPR
wins; ties (within ``TOLERANCE``) go to fewer, then lower layers. The caller then refits on all
training images with the chosen subset. ``validated=FOLDS`` turns this into full cross-validation
(pooled AUPR over the folds); it changed no mean regret beyond noise here and costs FOLDS times as
much (README), so one part validates by default.

The backbone pass is shared: training features are extracted once (their validation rows are
reused as the normal validation images and their frames as the defect canvases) and each synthetic
image passes once through ``fx.frames``. Selection only ever receives training paths or features,
so it cannot read a test label (tested by failing any access to ``ground_truth/``).

PaDiM needs one Gaussian fit per subset. The fit part has fewer images than PaDiM has channels, so
each covariance has low rank and :func:`spadim.methods.padim.fit_padim` scores it exactly through the
Woodbury identity (an N x N factorisation per position instead of d x d): every subset is fitted
and scored on the full grid with the reference's distances. SPADE's per-layer maps are computed
once and every subset is their fusion (as in the layer sweep).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spadim.data.mvtec import ClassData, load_class, load_masks
from spadim.data.defects import KINDS, DefectConfig, make_defects
from spadim.errors import SpadimError
from spadim.features.extractor import ALL_COMBOS, FeatureExtractor, FeatureSet
from .layersweep import combo_name, spade_subsets
from spadim.methods.maps import upsample_blur
from spadim.metrics.ranking import pixel_aupr, undefined_notes
from spadim.methods.padim import fit_padim
from spadim.methods.spade import Spade
from spadim.run.pipeline import ClassRun, Settings, evaluate_class, evaluate_fitted, make_extractor, score_class

FOLDS = 5  # the training images are split into 5 seeded parts (each 20%) ...
VALIDATED = 1  # ... of which this many validate in turn (FOLDS for full cross-validation)
COPIES = 2  # synthetic defective copies per validation image
TOLERANCE = 1e-9  # AUPRs closer than this are a tie
#: every kind (appearance and structure) at sizes up to 30% of the frame side: with only the four
#: appearance kinds up to 18%, selection leaned towards layer 2 whatever the real defects were
DEFECTS = DefectConfig(kinds=KINDS, min_size=0.06, max_size=0.3)


@dataclass
class Selection:
    """One method's choice on one class, with everything needed to audit it."""

    method: str
    chosen: tuple[int, ...]
    synthetic_aupr: dict[str, float]  # subset name ("1+2") -> pixel AUPR on the synthetic set
    folds: list[list[int]]  # training rows validated in each fold (which fits on the other rows)
    kinds: list[str]  # defect kind of each synthetic image
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)  # shared (split, defects, frames) and scoring

    @property
    def name(self) -> str:
        return combo_name(self.chosen)

    @property
    def aupr(self) -> float:
        return self.synthetic_aupr[self.name]

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "chosen": self.name, "synthetic_aupr_chosen": self.aupr}


@dataclass
class Folds:
    """The training features, the synthetic frames and, per fold, which rows validate.

    Fold f fits on the training rows outside ``val_rows[f]`` and validates on those rows (normal)
    followed by their synthetic copies ``synth[synth_rows[f]]``. Folds are materialised one at a
    time (:meth:`fold`), so memory holds the features once, not once per fold.
    """

    train: FeatureSet
    synth: FeatureSet
    val_rows: list[list[int]]
    synth_rows: list[list[int]]
    masks: list[np.ndarray]  # per fold: bool [n_val + n_synth, crop, crop]; False for normal images
    kinds: list[str]  # defect kind of each synthetic frame, in order

    def fold(self, f: int) -> tuple[FeatureSet, FeatureSet]:
        fit = take(self.train, other_rows(len(self.train), self.val_rows[f]))
        return fit, concat([take(self.train, self.val_rows[f]), take(self.synth, self.synth_rows[f])])


def fold_rows(n: int, seed: int, folds: int = FOLDS) -> list[list[int]]:
    """Seeded partition of ``range(n)`` into min(folds, n) validation parts (each fits on the rest)."""
    if n < 2:
        raise SpadimError(f"--layers auto needs at least 2 training images to split (got {n})")
    perm = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in perm[f::min(folds, n)]) for f in range(min(folds, n))]


def other_rows(n: int, rows: list[int]) -> list[int]:
    """The rows of ``range(n)`` not in ``rows``: a fold's fit part."""
    held = set(rows)
    return [i for i in range(n) if i not in held]


def take(fs: FeatureSet, rows: list[int]) -> FeatureSet:
    """Rows of a FeatureSet (copies)."""
    idx = torch.as_tensor(rows, dtype=torch.long)
    return FeatureSet([fs.paths[i] for i in rows], {l: t[idx] for l, t in fs.layers.items()},
                      None if fs.pooled is None else fs.pooled[idx], fs.images[rows], [fs.shapes[i] for i in rows])


def concat(parts: list[FeatureSet]) -> FeatureSet:
    return FeatureSet([p for fs in parts for p in fs.paths], {l: torch.cat([fs.layers[l] for fs in parts])
                      for l in parts[0].layers},
                      None if parts[0].pooled is None else torch.cat([fs.pooled for fs in parts]),
                      np.concatenate([fs.images for fs in parts]), [s for fs in parts for s in fs.shapes])


def validation_folds(fx: FeatureExtractor, train: FeatureSet, seed: int, folds: int = FOLDS,
                     copies: int = COPIES, cfg: DefectConfig = DEFECTS, validated: int = VALIDATED
                     ) -> tuple[Folds, dict[str, float]]:
    """The first ``validated`` folds with their synthetic defects (patches cut from the fold's fit
    part); all synthetic frames pass the backbone in one call, nothing else does."""
    t0 = time.perf_counter()
    parts = fold_rows(len(train), seed, folds)[:validated]
    defective, masks, kinds, synth_rows = [], [], [], []
    for f, val_rows in enumerate(parts):
        fit_rows = other_rows(len(train), val_rows)
        fold_masks = [np.zeros((len(val_rows), *train.images.shape[1:3]), bool)]
        start = sum(len(d) for d in defective)
        for c in range(copies):
            img, m, k = make_defects(train.images[val_rows], train.images[fit_rows],
                                     seed * 1000 + 17 * f + c, cfg)
            defective.append(img)
            fold_masks.append(m)
            kinds += k
        synth_rows.append(list(range(start, start + copies * len(val_rows))))
        masks.append(np.concatenate(fold_masks))
    t1 = time.perf_counter()
    synth = fx.frames(np.concatenate(defective), "synthetic defects")
    t2 = time.perf_counter()
    seconds = {"defects": t1 - t0, "synthetic_features": t2 - t1}
    return Folds(train, synth, parts, synth_rows, masks, kinds), seconds


def subset_auprs(method: str, folds: Folds, s: Settings, combos=ALL_COMBOS) -> dict[str, float]:
    """Synthetic pixel AUPR of every layer subset of ``method``, pooled over the folds (each fitted on
    its fit part). Only native-resolution distance grids are kept per fold; a subset's maps are
    upsampled once, from all folds together."""
    masks = np.concatenate(folds.masks)
    spade_mean = method == "spade" and s.spade_fusion == "mean"
    used = tuple(sorted({l for c in combos for l in c}))
    grids: dict = {}  # SPADE: layer -> grids per fold; others: combo -> grids per fold
    for f in range(len(folds.val_rows)):
        fit, val = folds.fold(f)
        if spade_mean:  # per-layer grids once per fold; every subset is their fusion
            spade = s.method("spade", used).fit(fit)
            for l, g in spade.layer_grids(val, spade.neighbours(val)[1]).items():
                grids.setdefault(l, []).append(g)
            continue
        for combo in combos:  # PaDiM keeps its distance grids; any other method its maps
            if method == "padim":
                grid = fit_padim(combo, s.padim_d, s.seed, fit).distance_grid(val)
            else:
                grid = torch.from_numpy(s.method(method, combo).fit(fit).score(val, s.crop)[0])
            grids.setdefault(combo, []).append(grid)
    joined = {k: torch.cat(v) for k, v in grids.items()}
    if spade_mean:
        return {combo_name(c): pixel_aupr(Spade.fuse([joined[l] for l in c], s.crop), masks) for c in combos}
    if method == "padim":
        return {combo_name(c): pixel_aupr(upsample_blur(joined[c], s.crop), masks) for c in combos}
    return {combo_name(c): pixel_aupr(joined[c].numpy(), masks) for c in combos}


def pick(auprs: dict[str, float], tolerance: float = TOLERANCE) -> tuple[int, ...]:
    """Highest AUPR; within ``tolerance`` of it, fewer layers, then lower layers win."""
    combos = [tuple(int(x) for x in name.split("+")) for name in auprs]
    valid = [c for c in combos if not math.isnan(auprs[combo_name(c)])]
    if not valid:
        raise SpadimError("no layer subset gave a defined synthetic AUPR (no synthetic defect fitted the frames)")
    best = max(auprs[combo_name(c)] for c in valid)
    return min((c for c in valid if auprs[combo_name(c)] >= best - tolerance), key=lambda c: (len(c), c))


def training_features(fx: FeatureExtractor, data) -> FeatureSet:
    """Training features from a FeatureSet, ClassData, class folder or list of training paths."""
    if isinstance(data, FeatureSet):
        return data
    if isinstance(data, (str, Path)):
        data = load_class(data, need_test=False)  # indexes train/good only: no test, no ground_truth
    if isinstance(data, ClassData):
        return fx(data.train, f"{data.name} train")
    return fx(list(data), "train")


def select_many(fx: FeatureExtractor, data, s: Settings, methods, seed: int | None = None,
                folds: int = FOLDS, copies: int = COPIES, tolerance: float = TOLERANCE,
                cfg: DefectConfig = DEFECTS, validated: int = VALIDATED) -> dict[str, Selection]:
    """One :class:`Selection` per method, sharing the split, the defects and their backbone pass.

    ``data`` is training data only (see :func:`training_features`); ``fx`` must keep all four
    layers (and the pooled vector for SPADE): ``make_extractor(s, progress, methods, ALL_COMBOS)``.
    """
    seed = s.seed if seed is None else seed
    t0 = time.perf_counter()
    train = training_features(fx, data)
    t_train = time.perf_counter() - t0
    missing = [l for l in (1, 2, 3, 4) if l not in train.layers]
    if missing:
        raise SpadimError(f"layer selection needs all 4 layers; the features lack {missing}: "
                          f"make the extractor with layer_sets=ALL_COMBOS")
    parts, shared = validation_folds(fx, train, seed, folds, copies, cfg, validated)
    out = {}
    for m in methods:
        t1 = time.perf_counter()
        auprs = subset_auprs(m, parts, s, ALL_COMBOS)
        seconds = {"train_features": t_train, **shared, "scoring": time.perf_counter() - t1}
        out[m] = Selection(m, pick(auprs, tolerance), auprs, parts.val_rows, parts.kinds, seed, seconds)
    return out


def select_layers(fx: FeatureExtractor, data, s: Settings, method: str, seed: int | None = None,
                  **kw) -> Selection:
    """The layer subset for ``method`` on one class, chosen from its training images alone."""
    return select_many(fx, data, s, [method], seed, **kw)[method]


def selection_seconds(sels: dict[str, Selection]) -> float:
    """Wall time of a :func:`select_many` call: shared parts once, scoring per method."""
    first = next(iter(sels.values())).seconds
    shared = sum(v for k, v in first.items() if k != "scoring")
    return shared + sum(sel.seconds["scoring"] for sel in sels.values())


def evaluate_auto(fx: FeatureExtractor, class_dir: Path, s: Settings, methods: list[str]
                  ) -> tuple[ClassRun, dict[str, dict], dict[str, Selection]]:
    """``evaluate`` with ``--layers auto``: select per method on the training images, refit each
    method on all of them with its subset (features held, not re-extracted), stream the test set."""
    data = load_class(class_dir)
    train = fx(data.train, f"{data.name} train")
    sels = select_many(fx, train, s, methods)
    fitted = {m: s.method(m, sels[m].chosen).fit(train) for m in methods}
    run, metrics = evaluate_fitted(fx, data, s, fitted, train)
    return run, metrics, sels


# ---------------------------------------------------------------- the layer-select study
REGRET_COLUMNS = ["class", "method", "chosen", "synthetic_aupr", "auto_aupr", "oracle_layers", "oracle_aupr",
                  "regret", "fixed_aupr", "selection_s", "evaluate_s", "cost_ratio"]
MEAN_COLUMNS = ("synthetic_aupr", "auto_aupr", "oracle_aupr", "regret", "fixed_aupr", "selection_s",
                "evaluate_s", "cost_ratio")


def _sweep_results(sweep: Path | None, name: str, s: Settings, weights_id: str) -> dict:
    """A layer sweep's stored per-class results ("1+2/padim" -> metrics), checked against our settings."""
    if sweep is None:
        return {}
    path = Path(sweep) / "per_class" / f"{name}.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    sig = saved.get("signature") or {}
    ours = {"arch": s.arch, "weights": weights_id, "resize": s.resize, "crop": s.crop, "k": s.k, "d": s.padim_d,
            "seed": s.seed}
    diff = {k: (sig.get(k), v) for k, v in ours.items() if sig.get(k) != v}
    if diff:
        raise SpadimError(f"--sweep {path} was run with other settings {diff}: give the same flags or drop --sweep")
    return saved.get("results", {})


def real_subsets(cr: ClassRun, s: Settings, methods, stored: dict) -> dict[str, dict]:
    """Real-test metrics of every subset per method ("1+2/padim" -> metrics), from the sweep where stored."""
    out = dict(stored)
    for m in methods:
        todo = [c for c in ALL_COMBOS if f"{combo_name(c)}/{m}" not in out]
        if not todo:
            continue
        if m == "spade" and s.spade_fusion == "mean":
            out.update({f"{combo_name(c)}/spade": r for c, r in spade_subsets(cr, s, todo).items()})
            continue
        for c in todo:
            out[f"{combo_name(c)}/{m}"] = score_class(cr, s, [m], c)[m]
    return out


def regret_rows(name: str, sels: dict[str, Selection], real: dict[str, dict], fixed=(1, 2, 3)) -> list[dict]:
    rows = []
    for m, sel in sels.items():
        aupr = {combo_name(c): real[f"{combo_name(c)}/{m}"]["pixel_aupr"] for c in ALL_COMBOS}
        defined = {k: v for k, v in aupr.items() if not math.isnan(v)}
        oracle = max(defined, key=defined.get) if defined else ""
        rows.append({"class": name, "method": m, "chosen": sel.name, "synthetic_aupr": sel.aupr,
                     "auto_aupr": aupr[sel.name], "oracle_layers": oracle,
                     "oracle_aupr": defined.get(oracle, float("nan")),
                     "regret": defined.get(oracle, float("nan")) - aupr[sel.name],
                     "fixed_aupr": aupr[combo_name(fixed)]})
    return rows


def run(s: Settings, data: Path, out: Path, methods: str = "spade,padim", classes: str | None = None,
        sweep: Path | None = None, command: str = "", time_evaluate: bool = True) -> list[dict]:
    """``spadim layer-select``: per class and method the auto choice, and with real masks its regret.

    Each finished class is saved to ``out/per_class/<class>.json``; a rerun with the same settings
    resumes after it."""
    from spadim.report.html import html_table, write_report
    from spadim.report.tables import METRIC_COLUMNS, with_means, write_table
    from spadim.run.session import (check_out_dir, class_summary, load_resumable, meta, progress, report_header,
                          save_atomic, say, staged, start_study)

    s = dataclasses.replace(s, layers=(1, 2, 3)) if s.auto_layers else s  # the fixed baseline
    check_out_dir(out)
    methods, dirs, fx = start_study(s, data, methods, classes, ALL_COMBOS)
    sig = {"arch": s.arch, "weights": fx.weights.sha256, "resize": s.resize, "crop": s.crop, "k": s.k,
           "d": s.padim_d, "seed": s.seed, "spade_fusion": s.spade_fusion, "methods": methods,
           "folds": FOLDS, "validated": VALIDATED, "copies": COPIES,
           "defects": {**dataclasses.asdict(DEFECTS), "kinds": list(DEFECTS.kinds)},  # as JSON reads it back
           "time_evaluate": time_evaluate, "sweep": str(sweep) if sweep else None}
    regret, results, subsets, summaries, choices = [], [], [], [], {}
    for cdir in dirs:
        data_c = load_class(cdir)
        saved = load_resumable(Path(out) / "per_class" / f"{data_c.name}.json", sig, "layer-select run")
        if saved:  # finished by an earlier, interrupted run with the same settings
            say(f"{data_c.name}: already done")
            regret += saved["regret"]
            results += saved["results"]
            subsets += saved["subsets"]
            summaries.append(saved["summary"])
            choices[data_c.name] = saved["choices"]
            continue
        n_rows = (len(regret), len(results), len(subsets))
        t0 = time.perf_counter()
        train = fx(data_c.train, f"{data_c.name} train")  # held: selection and the oracle share it
        sels = select_many(fx, train, s, methods)  # training features only
        t_sel = time.perf_counter() - t0
        choices[data_c.name] = {m: sel.to_json() for m, sel in sels.items()}
        say(f"{data_c.name}: chose " + ", ".join(f"{m} {sel.name} (synthetic AUPR {sel.aupr:.3f})"
                                                 for m, sel in sels.items()) + f" in {t_sel:.1f} s")
        stored = _sweep_results(sweep, data_c.name, s, fx.weights.sha256)
        t_eval = float("nan")
        if time_evaluate:  # one plain evaluate of the class, as `spadim evaluate` runs it
            efx = make_extractor(s, progress, methods)
            t1 = time.perf_counter()
            evaluate_class(efx, cdir, s, methods)
            t_eval = time.perf_counter() - t1
            del efx
        has_masks = bool(data_c.labels.any())
        summaries.append(class_summary(data_c))
        if has_masks:
            need = any(f"{combo_name(c)}/{m}" not in stored for c in ALL_COMBOS for m in methods)
            cr = None
            if need:
                te = fx(data_c.test, f"{data_c.name} test")
                cr = ClassRun(data_c, train, te, load_masks(data_c, fx.pre, te.shapes))
                for note in undefined_notes(cr.masks, cr.labels):
                    say(f"warning: {data_c.name}: {note}")
            real = real_subsets(cr, s, methods, stored) if need else stored
            rows = regret_rows(data_c.name, sels, real)
            for r in rows:
                results.append({"class": data_c.name, "method": r["method"], "layers": r["chosen"],
                                **real[f"{r['chosen']}/{r['method']}"]})
            for m, sel in sels.items():
                subsets += [{"class": data_c.name, "method": m, "layers": combo_name(c),
                             "synthetic_aupr": sel.synthetic_aupr[combo_name(c)],
                             "real_aupr": real[f"{combo_name(c)}/{m}"]["pixel_aupr"]} for c in ALL_COMBOS]
        else:
            rows = [{"class": data_c.name, "method": m, "chosen": sel.name, "synthetic_aupr": sel.aupr}
                    for m, sel in sels.items()]
        for r in rows:
            r.update({"selection_s": t_sel, "evaluate_s": t_eval, "cost_ratio": t_sel / t_eval})
        regret += rows
        save_atomic(Path(out) / "per_class" / f"{data_c.name}.json",
                    {"signature": sig, "regret": regret[n_rows[0]:], "results": results[n_rows[1]:],
                     "subsets": subsets[n_rows[2]:], "summary": summaries[-1], "choices": choices[data_c.name]})
        say(f"{data_c.name}: " + "; ".join(f"{r['method']} regret {r.get('regret', float('nan')):.4f}"
                                            for r in rows) + f"; selection/evaluate = {t_sel / t_eval:.2f}")
    regret = with_means(regret, ["method"], MEAN_COLUMNS)
    for r in regret:
        if r["class"] == "mean":
            r["chosen"] = r["oracle_layers"] = ""
    info = meta(s, fx, methods=methods, layer_choice="auto", folds=FOLDS, validated=VALIDATED, copies=COPIES,
                tolerance=TOLERANCE, sweep=str(sweep) if sweep else None,
                choices=choices)
    with staged(out) as stage:
        md = write_table(stage, "layer_select", regret, REGRET_COLUMNS,
                         "Layer subset chosen from normal images (--layers auto) and its regret", info)
        if subsets:
            write_table(stage, "subsets", subsets, ["class", "method", "layers", "synthetic_aupr", "real_aupr"],
                        "Synthetic vs real pixel AUPR of every subset", info)
        results = with_means(results, ["method"]) if results else []
        if results:
            write_table(stage, "results", results, ["class", "method", "layers", *METRIC_COLUMNS],
                        "Real test metrics of the chosen subsets", info)
        (stage / "summary.md").write_text(md)
        html = html_table(regret, REGRET_COLUMNS,
                          "regret = oracle AUPR - AUPR of the auto choice (real test masks); "
                          "fixed = layers 1,2,3; cost_ratio = selection time / one evaluate of the class")
        header = report_header("spadim layer-select", command, s, fx, Path(data), summaries)
        header["settings"]["layers"] = "auto"
        write_report(stage, {**header, "results": results,
                             "extra_sections": [{"title": "Layer subset chosen from normal images (regret)",
                                                 "html": html}]})
    print(md)
    say(f"results in {out}/ (report.html, layer_select.*, subsets.*, results.*, summary.md, per_class/)")
    return regret
