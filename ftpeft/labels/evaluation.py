"""The final evaluation of a label-set or regression run: validation first (where a label set's thresholds are
chosen), then test once, at the chosen thresholds and at 0.5; metrics.json and the per-label or per-target report."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from ftpeft.labels.reports import SCATTER_FILE, per_label_markdown, per_target_markdown, save_scatter
from ftpeft.labels.scores import (
    THRESHOLD_METRICS,
    multi_label_scores,
    raw_outputs,
    regression_scores,
    sigmoid,
    unscale,
)
from ftpeft.labels.target import DEFAULT_THRESHOLD, Target
from ftpeft.labels.thresholds import choose_thresholds

logger = logging.getLogger("ftpeft")
REPORT_FILE = "classification_report.md"  # the per-label (or per-target) table, where single-label runs put theirs
# the validation rows' raw outputs and labels: what the thresholds were chosen on, and what the ladder bootstraps
VALIDATION_OUTPUTS_FILE = "validation_outputs.npz"


@dataclasses.dataclass(frozen=True)
class ThresholdRule:
    """How a label set's thresholds are decided: --threshold (auto or a number) and --min_threshold_positives."""

    threshold: str | float = "auto"
    min_positives: int = 10


def decided_thresholds(probabilities, references, target: Target, rule: ThresholdRule):
    """The target with its thresholds: chosen on these (validation) rows for 'auto', else the number given."""
    if rule.threshold != "auto":
        thresholds = (float(rule.threshold),) * target.num_outputs
        return dataclasses.replace(target, thresholds=thresholds), f"--threshold {rule.threshold}"
    min_positives = rule.min_positives
    thresholds, note = choose_thresholds(probabilities, references, min_positives)
    why = "per label by F1 on validation"
    if note["global_labels"]:
        shared = [target.names[j] for j in note["global_labels"]]
        why += (
            f"; {len(shared)} label(s) with fewer than {min_positives} validation positives share "
            f"{note['global_threshold']:.2f} ({', '.join(shared[:10])})"
        )
    return dataclasses.replace(target, thresholds=thresholds), why


def split_scores(prefix: str, values, references, target: Target) -> dict[str, float]:
    """A split's metrics from ``values`` (label probabilities, or numbers in the target's units): label sets at the
    target's thresholds and ``_at_0.5`` beside them; numbers in their units."""
    if target.is_multi_label:
        tuned = multi_label_scores(values, references, target.decision_thresholds())
        at_half = multi_label_scores(values, references, (DEFAULT_THRESHOLD,) * target.num_outputs)
        scores = {f"{prefix}_{name}": value for name, value in tuned.items()}
        return scores | {f"{prefix}_{name}_at_{DEFAULT_THRESHOLD}": at_half[name] for name in THRESHOLD_METRICS}
    return {f"{prefix}_{name}": value for name, value in regression_scores(values, references, target.names).items()}


def write_reports(output_dir, metrics: dict, split: str, values, references, target: Target, why: str) -> None:
    """metrics.json, and the per-label (label sets) or per-target table and scatter plot (numbers) of ``split``."""
    from ftpeft.core.outputs import atomic_write_text, write_json

    output_dir = Path(output_dir)
    write_json(output_dir / "metrics.json", metrics)
    kind = "label" if target.is_multi_label else "target"
    title = f"# Per-{kind} results ({split} split, {len(references)} rows)\n\n"
    if target.is_multi_label:
        note = f"Thresholds: {why}. A label with no positives in this split is left out of mAP; its F1 is 0.\n\n"
        atomic_write_text(output_dir / REPORT_FILE, title + note + per_label_markdown(values, references, target))
    else:
        atomic_write_text(output_dir / REPORT_FILE, title + per_target_markdown(values, references, target))
        save_scatter(output_dir / SCATTER_FILE, values, references, target.names, f"{split}: prediction against truth")


def target_values(prediction, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """(values, references) of a Trainer prediction: label probabilities and multi-hot rows, or numbers in the
    target's units."""
    outputs = raw_outputs(prediction.predictions)
    if target.is_multi_label:
        return sigmoid(outputs), np.asarray(prediction.label_ids)
    return unscale(outputs, target), unscale(np.asarray(prediction.label_ids), target)


def evaluate_target(
    trainer,
    eval_dataset,
    test_dataset,
    target: Target,
    output_dir,
    extra_metrics=None,
    rule: ThresholdRule = ThresholdRule(),
):
    """(metrics, the target as saved). Label sets: eval_/test_<metric> at the chosen thresholds and
    <metric>_at_0.5 beside them; the thresholds come from validation only. Numbers: in the target's units."""
    metrics: dict[str, float] = dict(extra_metrics or {})
    validation = trainer.predict(eval_dataset, metric_key_prefix="eval")
    test = trainer.predict(test_dataset, metric_key_prefix="test") if test_dataset is not None else None
    why = ""
    if target.is_multi_label:
        val_probabilities, val_references = target_values(validation, target)
        target, why = decided_thresholds(val_probabilities, val_references, target, rule)
        logger.info("label thresholds: %s (%s)", dict(zip(target.names, target.decision_thresholds())), why)
        if rule.threshold == "auto":
            metrics["thresholds_chosen_on"] = "validation"
    for prefix, prediction in (("eval", validation), ("test", test)):
        if prediction is not None:  # the loss and timing, then the metrics at the decided thresholds
            metrics.update(prediction.metrics)
            metrics.update(split_scores(prefix, *target_values(prediction, target), target))
    if trainer.is_world_process_zero():
        split, prediction = ("test", test) if test is not None else ("eval", validation)
        write_reports(output_dir, metrics, split, *target_values(prediction, target), target, why)
        outputs = raw_outputs(validation.predictions)
        np.savez(Path(output_dir) / VALIDATION_OUTPUTS_FILE, outputs=outputs, labels=validation.label_ids)
    return metrics, target
