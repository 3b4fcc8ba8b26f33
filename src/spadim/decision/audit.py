"""The audit of a calibration set: good images whose held-out region statistic stands apart from the
others (a defect filed as good, or a rare variant), each with the level the calibration would have
without it."""

from __future__ import annotations

import numpy as np

from .conformal import conformal_threshold


#: the audit's cut: modified z-score (Iglewicz & Hoaglin) above 3.5, on the region statistic
AUDIT_Z = 3.5


def audit(region_stats: np.ndarray, names: list[str], far: float, z_cut: float = AUDIT_Z) -> list[dict]:
    """Good images whose held-out region statistic stands apart from the others, highest first.

    The rule is stated and robust: modified z = 0.6745 (x - median) / MAD > ``z_cut`` (3.5, Iglewicz and
    Hoaglin's cut), so that one outlier cannot hide itself by inflating the spread. Each entry says what
    the region level would be without that image, and without every flagged image: what dropping it
    from the folder would do (the model's scores of the others barely move; the audit test measures it).
    """
    stats = np.asarray(region_stats, np.float64)
    median = float(np.median(stats))
    mad = float(np.median(np.abs(stats - median)))
    scale = mad / 0.6745 if mad > 0 else max(float(np.std(stats)), 1e-12)
    robust_z = (stats - median) / scale
    flagged = [int(i) for i in np.argsort(-stats) if robust_z[i] > z_cut]
    if not flagged:
        return []
    rest = np.delete(stats, flagged)
    without_all = conformal_threshold(rest, far)[0] if len(rest) else None
    level = conformal_threshold(stats, far)[0]
    out = []
    for i in flagged:
        without = conformal_threshold(np.delete(stats, i), far)[0]
        out.append(
            {
                "image": names[i],
                "region_score": float(stats[i]),
                "robust_z": float(robust_z[i]),
                "level": level,
                "level_without_it": without,
                "level_without_all_flagged": without_all,
            }
        )
    return out
