"""What a multi-label or regression run writes beside its metrics: the per-label (or per-target) table and, for
numbers, a scatter plot of prediction against truth (in place of the confusion matrix)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftpeft.labels.target import Target

SCATTER_FILE = "predictions_scatter.png"


def per_label_markdown(probabilities, references, target: Target) -> str:
    """Per label: threshold, precision, recall, F1 (at the run's thresholds), AP (threshold-free) and support."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support

    references = np.asarray(references).astype(int)
    thresholds = np.asarray(target.decision_thresholds())
    predicted = (np.asarray(probabilities) >= thresholds[None, :]).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(references, predicted, zero_division=0)
    rows = ["| label | threshold | precision | recall | f1 | AP | support |", "|---|---|---|---|---|---|---|"]
    for j, name in enumerate(target.names):
        ap = average_precision_score(references[:, j], probabilities[:, j]) if references[:, j].any() else None
        ap_cell = f"{ap:.3f}" if ap is not None else "- (no positives: left out of mAP)"
        rows.append(
            f"| {name} | {thresholds[j]:.2f} | {precision[j]:.3f} | {recall[j]:.3f} | {f1[j]:.3f} | {ap_cell} | "
            f"{support[j]} |"
        )
    return "\n".join(rows) + "\n"


def per_target_markdown(predictions, truth, target: Target) -> str:
    """Per target: RMSE, MAE, R², Pearson, Spearman, and the RMSE of predicting the training mean."""
    from ftpeft.labels.scores import regression_scores

    predictions = np.asarray(predictions).reshape(len(truth), -1)
    truth = np.asarray(truth).reshape(len(truth), -1)
    rows = [
        "| target | RMSE | MAE | R² | Pearson | Spearman | RMSE of the training mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for j, name in enumerate(target.names):
        s = regression_scores(predictions[:, j], truth[:, j], [name])
        baseline = float(np.sqrt(np.mean((truth[:, j] - target.mean[j]) ** 2)))
        rows.append(
            f"| {name} | {s['rmse']:.4f} | {s['mae']:.4f} | {s['r2']:.3f} | {s['pearson']:.3f} | "
            f"{s['spearman']:.3f} | {baseline:.4f} |"
        )
    return "\n".join(rows) + "\n"


def save_scatter(path: str | Path, predictions, truth, names: Sequence[str], title: str = "") -> None:
    """Prediction against truth, one panel per target, with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predictions = np.asarray(predictions).reshape(len(truth), -1)
    truth = np.asarray(truth).reshape(len(truth), -1)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4.5), squeeze=False)
    for j, (ax, name) in enumerate(zip(axes[0], names)):
        ax.scatter(truth[:, j], predictions[:, j], s=6, alpha=0.5)
        low, high = (
            float(min(truth[:, j].min(), predictions[:, j].min())),
            float(max(truth[:, j].max(), predictions[:, j].max())),
        )
        ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
