"""Binary classification metrics for detectors and probes (numpy, host-side: they run once per evaluation).

:func:`auroc` is the Mann-Whitney statistic with average ranks over ties; :func:`macro_f1` averages the two
classes' F1 with scikit-learn's ``zero_division=0`` convention.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "macro_f1"]


def auroc(scores, labels) -> float:
    """Returns the area under the ROC curve of ``scores`` [N] for binary ``labels`` [N] (1 = positive):
    P(score of a random positive > score of a random negative) + 0.5 P(tie) (Mann-Whitney, average ranks)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must both be [N], got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if y.dtype.kind not in "biu" or not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 integers")
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"AUROC needs both classes, got {pos} positives and {neg} negatives")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of each distinct value's last member
    ranks = (upper - (counts - 1) / 2.0)[inverse]  # average rank over each tie group
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def macro_f1(predictions, labels) -> float:
    """Returns the macro-averaged F1 of binary ``predictions`` [N] against ``labels`` [N] (mean of the two
    classes' F1; a class with no true and no predicted member scores 0, as scikit-learn's zero_division=0)."""
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"predictions and labels must both be [N], got {p.shape} and {y.shape}")
    if not (np.isin(p, (0, 1)).all() and np.isin(y, (0, 1)).all()):
        raise ValueError("predictions and labels must be 0/1")
    f1s = []
    for c in (0, 1):
        tp = float(np.sum((p == c) & (y == c)))
        fp, fn = float(np.sum((p == c) & (y != c))), float(np.sum((p != c) & (y == c)))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))
