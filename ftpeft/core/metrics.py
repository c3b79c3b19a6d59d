"""Classification metrics through ``evaluate`` that work with no Hub, plus the confusion-matrix figure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ftpeft.core.errors import FtpeftError


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """A validation metric that something chooses by: early stopping, --metric_for_best_model, the ladder,
    --hp_search. ``needs_threshold``: its value depends on a decision threshold (label sets)."""

    name: str
    greater_is_better: bool
    needs_threshold: bool = False
    description: str = ""
    share: bool = False  # a share of the validation rows in [0, 1]: its binomial standard error measures its noise


# The one registry of metrics that choose; every chooser reads the direction from here. Label sets (multi_label) and
# numbers (regression) have their own; ``needs_threshold``: a label-set metric that depends on the thresholds.
METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("accuracy", True, description="share of rows whose top class is the label", share=True),
        MetricSpec(
            "macro_f1", True, description="unweighted mean of the per-class (or per-label) F1 scores", share=True
        ),
        MetricSpec("loss", False, description="the training loss on validation"),
        MetricSpec("map", True, description="label sets: mean average precision over labels (threshold-free)"),
        MetricSpec("micro_f1", True, True, "label sets: F1 of all (row, label) decisions pooled"),
        MetricSpec("samples_f1", True, True, "label sets: mean over rows of each row's F1"),
        MetricSpec("subset_accuracy", True, True, "label sets: share of rows whose whole set is right", share=True),
        MetricSpec("hamming_loss", False, True, "label sets: share of wrong (row, label) decisions"),
        MetricSpec("rmse", False, description="numbers: root mean squared error, in the target's units"),
        MetricSpec("mae", False, description="numbers: mean absolute error, in the target's units"),
        MetricSpec("r2", True, description="numbers: coefficient of determination"),
        MetricSpec("pearson", True, description="numbers: Pearson correlation of prediction and truth"),
        MetricSpec("spearman", True, description="numbers: Spearman rank correlation of prediction and truth"),
    )
}
PER_CLASS_F1 = "f1_"  # f1_<label>: one class's F1, as compute_metrics reports it
# What a run stops and chooses on unless told otherwise, by problem type: threshold-free for label sets.
DEFAULT_METRICS = {"single_label_classification": "accuracy", "multi_label_classification": "map", "regression": "rmse"}


# Which metrics a run of each problem type reports (per-class f1_<class> and per-target <metric>_<target> too).
PROBLEM_METRICS = {
    "single_label_classification": ("accuracy", "macro_f1", "loss"),
    "multi_label_classification": (
        "map",
        "micro_f1",
        "macro_f1",
        "samples_f1",
        "subset_accuracy",
        "hamming_loss",
        "loss",
    ),
    "regression": ("rmse", "mae", "r2", "pearson", "spearman", "loss"),
}


def check_metric_fits(name: str, problem_type: str, flag: str = "--metric_for_best_model") -> None:
    """Refuse a metric that runs of ``problem_type`` do not report (accuracy for numbers, RMSE for classes)."""
    key = name.removeprefix("eval_")
    spec = metric_spec(name, flag)
    base = "f1" if key.startswith(PER_CLASS_F1) and key not in METRICS else spec.name.split("_")[0]
    allowed = PROBLEM_METRICS[problem_type]
    per_item = (base == "f1" and problem_type == "single_label_classification") or (
        problem_type == "regression" and key.split("_")[0] in allowed
    )
    if key not in allowed and not per_item:
        short = problem_type.replace("_classification", "")
        raise FtpeftError(f"{flag} {name}: not a metric of {short} runs; use one of {', '.join(allowed)}.")


def chosen_metric(requested: str | None, problem_type: str, flag: str = "--metric_for_best_model") -> str:
    """The metric a chooser uses: ``requested``, or for None / 'auto' the problem type's default (accuracy, mAP or
    RMSE); a metric the problem type does not report is refused, naming ``flag``."""
    if requested is None or requested == "auto":
        return default_metric(problem_type)
    check_metric_fits(requested, problem_type, flag)
    return requested


def default_metric(problem_type: str = "single_label_classification") -> str:
    """What a run of ``problem_type`` (HF's long name) stops and chooses on unless told otherwise."""
    return DEFAULT_METRICS[problem_type]


def metric_spec(name: str, flag: str = "--metric_for_best_model") -> MetricSpec:
    """The registry entry of ``name`` (with or without the ``eval_`` prefix); an unknown name is refused. A
    per-target regression metric (``rmse_<target>``) reads its direction from its metric."""
    key = name.removeprefix("eval_")
    if key in METRICS:
        return METRICS[key]
    if key.startswith(PER_CLASS_F1) and len(key) > len(PER_CLASS_F1):
        return MetricSpec(key, True, description=f"F1 of class {key[len(PER_CLASS_F1) :]!r}")
    for base in ("rmse", "mae", "r2", "pearson", "spearman"):
        if key.startswith(base + "_") and len(key) > len(base) + 1:
            return dataclasses.replace(
                METRICS[base], name=key, description=f"{base} of target {key[len(base) + 1 :]!r}"
            )
    raise FtpeftError(f"{flag} {name!r}: unknown metric; use one of {', '.join(METRICS)} (or f1_<label>).")


def is_better(spec: MetricSpec, value: float, than: float) -> bool:
    return value > than if spec.greater_is_better else value < than


def standard_error(spec: MetricSpec, value: float, rows: int) -> float:
    """The noise of ``value`` measured on ``rows`` validation rows: one binomial standard error for a share (0 for a
    metric that is not one, or unknown rows)."""
    if not spec.share or rows <= 0:
        return 0.0
    return (max(value * (1 - value), 0.0) / rows) ** 0.5


def paired_standard_error(first_correct: np.ndarray, second_correct: np.ndarray) -> float:
    """One standard error of the difference of two accuracies scored on the same rows (per-row correctness of each
    model), from the rows where they disagree (McNemar's paired test): two checkpoints of one run that agree on most
    rows are told apart more finely than either score's binomial error says."""
    rows = len(first_correct)
    only_first = int(np.count_nonzero(first_correct & ~second_correct))
    only_second = int(np.count_nonzero(second_correct & ~first_correct))
    return max(only_first + only_second - (only_first - only_second) ** 2 / rows, 0.0) ** 0.5 / rows


def _metric_class():
    import datasets
    import evaluate
    from sklearn.metrics import accuracy_score, f1_score

    class ClassificationMetrics(evaluate.Metric):
        """Accuracy and macro-F1 (scikit-learn), as a local ``evaluate`` metric: no Hub download."""

        def _info(self):
            return evaluate.MetricInfo(
                description="accuracy and macro-F1",
                citation="",
                inputs_description="predictions and references: class ids",
                features=datasets.Features(
                    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                ),
            )

        def _compute(self, predictions, references, num_labels: int | None = None):
            labels = list(range(num_labels)) if num_labels else None
            return {
                "accuracy": float(accuracy_score(references, predictions)),
                "macro_f1": float(f1_score(references, predictions, average="macro", labels=labels, zero_division=0)),
            }

    return ClassificationMetrics


_METRIC = None


def classification_metric():
    """The shared in-memory ``evaluate`` metric (in memory: DDP ranks never share cache files)."""
    global _METRIC
    if _METRIC is None:
        _METRIC = _metric_class()(keep_in_memory=True)
    return _METRIC


def make_compute_metrics(label_names: list[str], target=None):
    """A Trainer ``compute_metrics``: accuracy, macro-F1 and per-class F1 (``f1_<label>``) for one class per row; the
    label-set or regression metrics of ``target`` (``ftpeft.labels.target.Target``) otherwise."""
    from sklearn.metrics import f1_score

    if target is not None and not target.is_single_label:
        from ftpeft.labels.scores import make_target_metrics

        return make_target_metrics(target)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        predictions = np.asarray(logits).argmax(-1)
        references = np.asarray(eval_prediction.label_ids)
        scores = classification_metric().compute(
            predictions=predictions, references=references, num_labels=len(label_names)
        )
        per_class = f1_score(references, predictions, labels=range(len(label_names)), average=None, zero_division=0)
        scores.update({f"f1_{name}": float(f1) for name, f1 in zip(label_names, per_class)})
        return scores

    return compute_metrics


def save_confusion_matrix(path: str | Path, references, predictions, label_names: list[str], title: str = "") -> None:
    """Confusion matrix (counts) as a PNG; tick labels are the class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.45 * len(label_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        references,
        predictions,
        labels=list(range(len(label_names))),
        display_labels=label_names,
        ax=ax,
        colorbar=False,
        include_values=len(label_names) <= 30,
        xticks_rotation="vertical" if len(label_names) > 6 else "horizontal",
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def classification_report_markdown(references, predictions, label_names: list[str]) -> str:
    """Per-class precision/recall/F1/support as a markdown table."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, labels=range(len(label_names)), zero_division=0
    )
    rows = ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for name, p, r, f, s in zip(label_names, precision, recall, f1, support):
        rows.append(f"| {name} | {p:.3f} | {r:.3f} | {f:.3f} | {s} |")
    return "\n".join(rows) + "\n"
