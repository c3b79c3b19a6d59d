"""The final evaluation of a head on label-set or numeric features, as the Trainer recipes do theirs
(``ftpeft.labels.evaluation``): validation first, where a label set's thresholds are chosen, then test once, at the
chosen thresholds and at 0.5; metrics.json, the per-label or per-target table, and the scatter plot for numbers."""

from __future__ import annotations

import numpy as np

from ftpeft.core.errors import FtpeftError
from ftpeft.labels.evaluation import REPORT_FILE, ThresholdRule, decided_thresholds
from ftpeft.labels.reports import SCATTER_FILE, per_label_markdown, per_target_markdown, save_scatter
from ftpeft.labels.scores import THRESHOLD_METRICS, multi_label_scores, regression_scores
from ftpeft.labels.target import DEFAULT_THRESHOLD, Target

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
    from pathlib import Path

    from ftpeft.core.outputs import atomic_write_text, write_json

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
        if split not in outputs:
            continue
        if target.is_multi_label:
            tuned = multi_label_scores(outputs[split], references[split], target.decision_thresholds())
            at_half = multi_label_scores(outputs[split], references[split], (DEFAULT_THRESHOLD,) * target.num_outputs)
            metrics.update({f"{prefix}_{name}": value for name, value in tuned.items()})
            metrics.update({f"{prefix}_{name}_at_{DEFAULT_THRESHOLD}": at_half[name] for name in THRESHOLD_METRICS})
        else:
            scores = regression_scores(outputs[split], references[split], target.names)
            metrics.update({f"{prefix}_{name}": value for name, value in scores.items()})
    output_dir = Path(output_dir)
    write_json(output_dir / "metrics.json", metrics)
    split = "test" if "test" in outputs else "validation"
    kind = "label" if target.is_multi_label else "target"
    title = f"# Per-{kind} results ({PREFIXES[split]} split, {len(references[split])} rows)\n\n"
    if target.is_multi_label:
        note = f"Thresholds: {why}. A label with no positives in this split is left out of mAP; its F1 is 0.\n\n"
        table = per_label_markdown(outputs[split], references[split], target)
        atomic_write_text(output_dir / REPORT_FILE, title + note + table)
    else:
        table = per_target_markdown(outputs[split], references[split], target)
        atomic_write_text(output_dir / REPORT_FILE, title + table)
        scatter_title = f"{PREFIXES[split]}: prediction against truth"
        save_scatter(output_dir / SCATTER_FILE, outputs[split], references[split], target.names, scatter_title)
    return metrics, target
