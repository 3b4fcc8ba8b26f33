"""A calibration grown by ``spadim update``: which statistics the level rests on, and the promise it keeps,
each against an independent computation."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from spadim.decision.conformal import (
    Calibration,
    conformal_threshold,
    deciding,
    fewest_guaranteeing,
    grow,
    summarize,
)
from spadim.decision.regions import region_score
from spadim.methods import PatchCore

sys.path.insert(0, str(Path(__file__).parents[1] / "methods"))
from test_update import _fs, _parts  # noqa: E402


def _level(stats, far: float) -> float:
    """The ceil((n + 1)(1 - far))-th smallest of n, or the largest when that rank passes n."""
    ordered = np.sort(np.asarray(stats, np.float64))
    return float(ordered[min(math.ceil((len(ordered) + 1) * (1 - far)), len(ordered)) - 1])


def _fitted(far: float, regions, sizes, model_images: int) -> Calibration:
    maps = [np.full((4, 4), r, np.float32) for r in regions]
    return Calibration(
        far,
        "leave-one-out",
        len(regions),
        len(regions),
        **summarize(np.asarray(regions), maps, np.asarray(regions), sizes),
        model_images=model_images,
    )


@pytest.mark.parametrize("far", [0.05, 0.1, 0.2, 0.01, 0.3])
def test_fewest_guaranteeing_is_the_first_count_whose_rank_is_an_order_statistic(far):
    least = fewest_guaranteeing(far)
    assert conformal_threshold(np.arange(least, dtype=float), far)[1]
    assert least == 1 or not conformal_threshold(np.arange(least - 1, dtype=float), far)[1]
    assert least == math.ceil(round(1 / far - 1, 9))


def test_the_level_rests_on_models_of_at_least_half_the_images():
    """The hazelnut benchmark's shape: a fit on 10 (leave-one-out by 9-image models), then batches of 10
    scored by models of 10, 20, 30 and 40 images; the model holds 50."""
    sizes = np.repeat([9, 10, 20, 30, 40], 10)
    assert deciding(sizes, 50, 0.05).tolist() == (sizes >= 25).tolist()  # 20 statistics, >= 19 needed
    # far 0.1 needs 9: still the newest two batches; far 0.03 needs 33: the 20-image batch joins, then 10
    assert deciding(sizes, 50, 0.1).tolist() == (sizes >= 25).tolist()
    assert deciding(sizes, 50, 0.03).tolist() == (sizes >= 10).tolist()
    assert deciding(sizes, 50, 0.01).all()  # 99 needed: every statistic, and no guarantee
    assert deciding(sizes, None, 0.05).all()  # a calibration that never recorded sizes


def test_a_grown_calibration_decides_on_the_statistics_of_the_larger_models():
    rng = np.random.default_rng(0)
    first = rng.normal(30, 2, size=10)  # small models score high
    calibration = _fitted(0.05, first, [9] * 10, 10)
    held, batches = 10, []
    for mean in (26, 24, 23, 22.5):
        batch = rng.normal(mean, 1, size=10)
        batches.append((held, batch))
        calibration = grow(
            calibration,
            batch,
            [np.full((4, 4), r) for r in batch],
            batch,
            scored_by=held,
            model_images=held + 10,
        )
        held += 10
    newest = np.concatenate([batch for size, batch in batches if 2 * size >= held])
    assert calibration.model_images == 50 and calibration.n_images == 50 and calibration.n_deciding == 20
    assert calibration.region_threshold == _level(newest, 0.05) and calibration.guaranteed
    assert calibration.region_threshold < _level(np.concatenate([first, *[b for _, b in batches]]), 0.05)
    assert sorted(calibration.deciding_region_scores) == sorted(newest.tolist())
    # the sizes travel with their scores, through the file too
    assert sorted(zip(calibration.region_scores, calibration.region_scored_by)) == sorted(
        [*zip(first.tolist(), [9] * 10), *[(r, s) for s, b in batches for r in b.tolist()]]
    )
    loaded = Calibration.from_json(calibration.to_json())
    assert loaded.region_threshold == calibration.region_threshold and loaded.n_deciding == 20
    assert loaded.image_threshold == _level(newest, 0.05)  # image scores follow the same rule
    assert "20 calibration images the level rests on" in calibration.to_json()["promise"]
    assert "highest of the 20 held-out statistics" in calibration.advice()


def test_a_calibration_without_sizes_grows_as_if_its_model_scored_them():
    old = _fitted(0.1, np.arange(20.0), None, 20)
    old_json = {
        k: v
        for k, v in old.to_json().items()
        if k not in ("model_images", "image_scored_by", "region_scored_by")
    }
    legacy = Calibration.from_json(old_json)
    assert legacy.region_threshold == _level(np.arange(20.0), 0.1) and legacy.n_deciding == 20
    grown = grow(legacy, [5.0], [np.full((4, 4), 5.0)], [5.0], scored_by=30, model_images=31)
    assert grown.region_scored_by == [30] * 21  # the model they calibrated held 30 (a held-out folder of 20)
    assert grown.n_deciding == 21 and grown.region_threshold == _level([*range(20), 5.0], 0.1)


def test_the_grown_level_keeps_the_promise_when_memory_only_grows():
    """Monte Carlo of the guarantee the docs state: statistics are nearest-neighbour distances to a memory
    that only grows (fit on 10 with leave-one-out, then 4 batches of 10, each scored before it joins); a new
    normal point against the full memory exceeds the grown level at rate <= far. Resting on all statistics
    also keeps it, but wastes most of it (about 0.009 against 0.034 here; a refit's leave-one-out 0.039)."""
    rng = np.random.default_rng(1)
    far, trials = 0.05, 3000
    flags = {"window": 0, "all": 0}
    for _ in range(trials):
        points = rng.normal(size=(51, 2))
        memory, fresh = points[:50], points[50]
        distance = np.linalg.norm(memory[:, None] - memory[None], axis=-1)
        np.fill_diagonal(distance, np.inf)
        stats, sizes = list(distance[:10, :10].min(axis=1)), [9] * 10
        for start in range(10, 50, 10):
            stats += list(distance[start : start + 10, :start].min(axis=1))
            sizes += [start] * 10
        stats, new = np.asarray(stats), np.linalg.norm(memory - fresh, axis=1).min()
        flags["window"] += new > _level(stats[deciding(sizes, 50, far)], far)
        flags["all"] += new > _level(stats, far)
    rate = {key: count / trials for key, count in flags.items()}
    assert rate["window"] <= far + 3 * math.sqrt(far * (1 - far) / trials)
    assert rate["all"] < rate["window"] - 0.01


def test_patchcore_maps_and_region_statistics_only_fall_as_its_memory_grows():
    """What the guarantee needs of a nearest-neighbour method: after an update every pixel of every map is
    at most what it was, so is the region statistic."""
    train, test = _fs(8, 5, c=(3, 40, 60, 5)), _fs(3, 6, c=(3, 40, 60, 5))
    first, second = _parts(train, 4)
    model = PatchCore(layers=(2, 3), dim=200, target_dim=150, seed=2, coreset=0.5).fit(first)
    before, _ = model.score(test, 16)
    model.update(second)
    after, _ = model.score(test, 16)
    assert (after <= before + 1e-6).all() and (after < before - 1e-6).any()
    for old, new in zip(before, after):
        assert region_score(new, 3) <= region_score(old, 3) + 1e-6
