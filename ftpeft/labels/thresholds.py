"""Label-set thresholds chosen on validation: one per label by F1, or one global threshold for the labels with
too few validation positives to choose their own (``--min_threshold_positives``). Never chosen on test.

Every distinct validation probability is a candidate (a fixed grid cannot separate the probabilities of a model
whose outputs crowd together); the threshold is the midpoint between the best candidate and the next lower
probability, and ties go to the candidate nearest 0.5."""

from __future__ import annotations

import numpy as np


def best_threshold(probabilities, positives) -> float:
    """The threshold that maximises F1 of the decisions ``probabilities >= threshold`` (pooled over any shape)."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    y = np.asarray(positives).reshape(-1).astype(bool)
    if not y.any() or len(p) == 0:
        return 0.5
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(p) != 0), len(p) - 1]  # predict every row down to this one
    true_pos = np.cumsum(y)[last_of_value]
    f1 = 2 * true_pos / (last_of_value + 1 + y.sum())
    values = p[last_of_value]
    lower = np.r_[values[1:], 0.0]  # the next lower distinct probability (0 below the lowest)
    midpoints = (values + lower) / 2
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(midpoints[best[np.argmin(np.abs(midpoints[best] - 0.5))]])


def choose_thresholds(
    probabilities, references, min_positives: int
) -> tuple[tuple[float, ...], dict[str, list[int] | float | None]]:
    """(one threshold per label, a note: which labels took the global threshold and its value)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    references = np.asarray(references).astype(int)
    positives = references.sum(axis=0)
    shared = [j for j in range(references.shape[1]) if positives[j] < min_positives]
    thresholds = [best_threshold(probabilities[:, j], references[:, j]) for j in range(references.shape[1])]
    global_threshold = None
    if shared:
        global_threshold = best_threshold(probabilities[:, shared], references[:, shared])
        for j in shared:
            thresholds[j] = global_threshold
    return tuple(float(t) for t in thresholds), {"global_labels": shared, "global_threshold": global_threshold}
