"""The data report's label statistics for label sets (cardinality, per-label counts, labels below the threshold
minimum) and numbers (per-target min, max, mean and sd in the target's own units)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftpeft.labels.scores import unscale
from ftpeft.labels.target import Target


def target_statistics(labels: Mapping[str, Sequence], target: Target, min_threshold_positives: int) -> dict[str, Any]:
    """Per split, the statistics of its encoded ``labels`` (what data_report.json's ``targets`` holds); empty for one
    class per row (its label counts are already in the report)."""
    if target.is_single_label:
        return {}
    statistics: dict[str, Any] = {"problem_type": target.short_name, "why": target.why, "splits": {}}
    for split, values in labels.items():
        if target.is_multi_label:
            matrix = np.asarray(values, dtype=float).reshape(len(values), target.num_outputs)
            counts = matrix.sum(axis=0).astype(int)
            statistics["splits"][split] = {
                "label_cardinality": float(matrix.sum(axis=1).mean()) if len(matrix) else 0.0,
                "rows_without_labels": int((matrix.sum(axis=1) == 0).sum()),
                "label_counts": {name: int(n) for name, n in zip(target.names, counts)},
            }
            if split == "validation":
                statistics["labels_below_threshold_minimum"] = [
                    name for name, n in zip(target.names, counts) if n < min_threshold_positives
                ]
        elif len(values):
            numbers = unscale(values, target)
            statistics["splits"][split] = {
                name: {
                    "min": float(column.min()),
                    "max": float(column.max()),
                    "mean": float(column.mean()),
                    "sd": float(column.std()),
                }
                for name, column in zip(target.names, numbers.T)
            }
    return statistics
