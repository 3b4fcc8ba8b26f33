"""Rules that turn held-out normal statistics into a level with a target false-alarm rate ``far``.

``conformal``: the split-conformal quantile (distribution-free; below ``images_needed(far)`` images
it is the single largest score). ``gumbel``: the 1 - far quantile of a Gumbel law fitted to the
median and interquartile range (robust to one odd image; maxima of smooth maps are near-Gumbel).
``gauss``: the same with a normal law (median, 1.4826 MAD).
"""

from __future__ import annotations

import math

import numpy as np

from spadim.decision.conformal import conformal_threshold

RULES = ("conformal", "gumbel", "gauss")
_GUMBEL_IQR = math.log(-math.log(0.25)) - math.log(-math.log(0.75))  # 1.5725: IQR of a unit Gumbel
_GUMBEL_MEDIAN = -math.log(math.log(2.0))  # 0.3665: median of a unit Gumbel


def level(rule: str, normal: np.ndarray, far: float) -> float:
    normal = np.asarray(normal, np.float64)
    if rule == "conformal":
        return conformal_threshold(normal, far)[0]
    median = float(np.median(normal))
    if rule == "gumbel":
        low, high = np.percentile(normal, [25, 75])
        scale = (high - low) / _GUMBEL_IQR
        return median - _GUMBEL_MEDIAN * scale - scale * math.log(-math.log(1.0 - far))
    if rule == "gauss":
        from statistics import NormalDist

        spread = 1.4826 * float(np.median(np.abs(normal - median)))
        return median + NormalDist().inv_cdf(1.0 - far) * spread
    raise ValueError(f"unknown rule {rule!r}: one of {RULES}")
