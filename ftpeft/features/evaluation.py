"""The final evaluation of a head on label-set or numeric features, as the Trainer recipes do theirs
(``ftpeft.labels.evaluation``): validation first, where a label set's thresholds are chosen, then test once, at the
chosen thresholds and at 0.5; metrics.json, the per-label or per-target table, and the scatter plot for numbers."""

from __future__ import annotations

import numpy as np

from ftpeft.core.errors import FtpeftError
from ftpeft.labels.evaluation import ThresholdRule, decided_thresholds, split_scores, write_reports
from ftpeft.labels.target import Target

PREFIXES = {"validation": "eval", "test": "test"}


def evaluate_target_head(
    outputs: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    target: Target,
    rule: ThresholdRule,
    output_dir,
    extra_metrics: dict | None = None,
) -> tuple[dict, Target]:
    """(metrics, the target as saved) of a head's ``outputs`` (``heads.head_outputs``) per split against the stored
    ``references``. Label sets: eval_/test_<metric> at the thresholds decided on validation (never on test) and
    <metric>_at_0.5 beside them; numbers: RMSE, MAE, R², Pearson, Spearman in the target's units."""
    metrics: dict = dict(extra_metrics or {})
    why = ""
    if target.is_multi_label:
        if "validation" not in outputs and rule.threshold == "auto":
            raise FtpeftError("--threshold auto chooses thresholds on the validation split; these features have none.")
        target, why = decided_thresholds(outputs.get("validation"), references.get("validation"), target, rule)
        print(f"label thresholds: {dict(zip(target.names, target.decision_thresholds()))} ({why})")
        if rule.threshold == "auto":
            metrics["thresholds_chosen_on"] = "validation"
    for split, prefix in PREFIXES.items():
        if split in outputs:
            metrics.update(split_scores(prefix, outputs[split], references[split], target))
    split = "test" if "test" in outputs else "validation"
    write_reports(output_dir, metrics, PREFIXES[split], outputs[split], references[split], target, why)
    return metrics, target
