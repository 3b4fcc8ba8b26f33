"""Held-out calibration of a fitted model on its own training images, and the image counts a run
needs. The levels themselves are :mod:`spadim.decision.conformal`'s.

The statistic of a training image must be the one a *new* normal image would get from the deployed
model, so each training image is scored by the fitted model without that image (leave-one-out, at
the cost of one scoring pass): SPADE's gallery without the image, PatchCore's coreset without the
patches it took from it, PaDiM's Gaussians downdated by the image in closed form. Refitting on
``folds`` parts (out-of-fold, what a method without ``score_left_out`` gets) thins the model to
(k-1)/k of the images and inflates the held-out scores of few-image classes (docs/inspection.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spadim.decision.conformal import DEFAULT_FAR, DEFAULT_PIXEL_FAR, Calibration, region_scores, summarize
from spadim.decision.regions import DEFAULT_MIN_AREA
from spadim.errors import SpadimError
from spadim.features.extractor import FeatureSet, take
from spadim.methods.registry import METHODS
from .layerchoice import fold_rows, other_rows

DEFAULT_FOLDS = 5


#: choosing layers from normal images holds at least one image out to validate on the others
LAYER_CHOICE_IMAGES = 2


def check_image_count(
    n: int, methods, where: str, *, calibrate: bool = True, choose_layers: bool = False
) -> None:
    """Raise SpadimError, before any features are computed, when ``n`` good images at ``where`` are too few
    for what the run does with them: a held-out calibration of every method in ``methods`` (at least 2,
    or the method's ``min_calibration_images``) and, with ``choose_layers``, the layer choice."""
    needs = []
    if choose_layers:
        needs.append((LAYER_CHOICE_IMAGES, "choosing the layers (one image validates, the others fit)"))
    if calibrate:
        for name in methods:
            if name.lower() not in METHODS:
                raise SpadimError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
            least = max(2, METHODS[name.lower()].min_calibration_images)
            needs.append((least, f"{name.lower()}'s held-out calibration"))
    for least, what in sorted(needs, key=lambda need: -need[0]):
        if n < least:
            raise SpadimError(
                f"{where} holds {n} good image(s): {what} needs at least {least}; add good images"
            )


def image_count_check(*, calibrate: bool, choose_layers: bool):
    """A ``check_counts`` for :func:`spadim.run.session.start_study`: :func:`check_image_count` on each
    class's training images, before any features are computed."""

    def check(methods, data) -> None:
        where = f"{data.name} (training images)"
        check_image_count(len(data.train), methods, where, calibrate=calibrate, choose_layers=choose_layers)

    return check


@dataclass
class HeldOut:
    """How each training image scores when the model has not seen it, in training order."""

    how: str  # "leave-one-out" or "out-of-fold"
    folds: int  # n for leave-one-out
    image_scores: np.ndarray
    maps: list[np.ndarray]
    region_scores: np.ndarray
    scored_by: np.ndarray  # per image: the images held by the model that scored it


def held_out(
    method_name: str,
    settings,
    layers: tuple[int, ...],
    train: FeatureSet,
    folds: int = DEFAULT_FOLDS,
    fitted=None,
    min_area: float = DEFAULT_MIN_AREA,
) -> HeldOut:
    """Leave-one-out from ``fitted`` (a model fitted on all of ``train`` in this process) where the
    method can score a training image without it (``score_left_out``); else ``folds`` seeded parts, each
    scored by a model fitted on the others (PaDiM folds use the exact low-rank fit when a fold has fewer
    images than channels; the channel subset is the deployed model's, same seed)."""
    n = len(train)
    least = max(2, fitted.min_calibration_images) if fitted is not None else 2
    if n < least:
        raise SpadimError(
            f"the training set holds {n} good image(s): {method_name}'s held-out calibration needs at "
            f"least {least}; add good images"
        )
    if fitted is not None and fitted.abilities.leave_one_out:
        maps, scores = fitted.score_left_out(train, settings.backbone.crop)
        maps, how, folds = list(maps), "leave-one-out", n
        scored_by = np.full(n, n - 1)
    else:
        scores = np.zeros(n, np.float64)
        maps: list[np.ndarray | None] = [None] * n
        folds = min(folds, n)
        scored_by = np.zeros(n, np.int64)
        for held in fold_rows(n, settings.seed, folds):
            fit_part = take(train, other_rows(n, held))
            scored_by[held] = len(fit_part)
            model = settings.method(method_name, layers).fit_to_score(fit_part)
            fold_maps, fold_scores = model.score(take(train, held), settings.backbone.crop)
            for j, row in enumerate(held):
                scores[row], maps[row] = fold_scores[j], fold_maps[j]
        how = "out-of-fold"
    regions = region_scores(maps, train.shapes, settings.backbone.pre, min_area)
    return HeldOut(how, folds, np.asarray(scores, np.float64), maps, regions, scored_by)


def calibrate_held_out(
    method_name: str,
    settings,
    layers,
    train: FeatureSet,
    far: float = DEFAULT_FAR,
    folds: int = DEFAULT_FOLDS,
    pixel_far: float = DEFAULT_PIXEL_FAR,
    fitted=None,
    min_area: float = DEFAULT_MIN_AREA,
) -> tuple[Calibration, HeldOut]:
    """The calibration of a model fitted on ``train`` (``fitted``), and the held-out scores behind it."""
    scores = held_out(method_name, settings, layers, train, folds, fitted, min_area)
    what = "leave-one-out" if scores.how == "leave-one-out" else f"{scores.folds}-fold out-of-fold"
    calibration = Calibration(
        far,
        scores.how,
        scores.folds,
        len(train),
        **summarize(scores.image_scores, scores.maps, scores.region_scores, scores.scored_by),
        pixel_far=pixel_far,
        source=f"{what} scores of the training images",
        min_area=min_area,
        model_images=len(train),
    )
    return calibration, scores
