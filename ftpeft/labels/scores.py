"""The metrics of label sets and numbers, from a model's raw outputs (logits) and the encoded labels.

Label sets: micro, macro and samples F1, subset accuracy and Hamming loss at the run's thresholds, and mAP (the macro
average precision, threshold-free). A label with no positives in a split is left out of mAP (and counted:
``map_labels_left_out``); its F1 follows scikit-learn's ``zero_division=0``: it enters macro-F1 as 0.
Numbers: RMSE, MAE, R², Pearson and Spearman per target in the target's own units, and their mean over targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftpeft.labels.target import Target

THRESHOLD_METRICS = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2", "pearson", "spearman")


def sigmoid(logits) -> np.ndarray:
    from scipy.special import expit

    return expit(np.asarray(logits, dtype=np.float64))


def raw_outputs(predictions) -> np.ndarray:
    """A Trainer's predictions (a tuple when the model returns more than logits) as one 2-D float array."""
    logits = predictions[0] if isinstance(predictions, tuple) else predictions
    logits = np.asarray(logits, dtype=np.float64)
    return logits.reshape(len(logits), -1)


def multi_label_scores(probabilities, references, thresholds: Sequence[float]) -> dict[str, float]:
    """Label-set metrics of ``probabilities`` (rows x labels) against multi-hot ``references``."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

    references = np.asarray(references).astype(int)
    predicted = (np.asarray(probabilities) >= np.asarray(thresholds)[None, :]).astype(int)
    with_positives = [j for j in range(references.shape[1]) if references[:, j].any()]
    ap = [average_precision_score(references[:, j], probabilities[:, j]) for j in with_positives]
    return {
        "micro_f1": float(f1_score(references, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(references, predicted, average="macro", zero_division=0)),
        "samples_f1": float(f1_score(references, predicted, average="samples", zero_division=0)),
        "subset_accuracy": float(accuracy_score(references, predicted)),
        "hamming_loss": float(hamming_loss(references, predicted)),
        "map": float(np.mean(ap)) if ap else float("nan"),
        "map_labels_left_out": float(references.shape[1] - len(with_positives)),
    }


def unscale(values, target: Target) -> np.ndarray:
    """Standardised regression outputs (rows x targets) in the targets' own units."""
    values = np.asarray(values, dtype=np.float64).reshape(-1, target.num_outputs)
    return values * np.asarray(target.std) + np.asarray(target.mean)


def regression_scores(predictions, truth, names: Sequence[str]) -> dict[str, float]:
    """RMSE, MAE, R², Pearson and Spearman: the mean over targets, and per target (``rmse_<name>``) when several."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predictions = np.asarray(predictions, dtype=np.float64).reshape(len(truth), -1)
    truth = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    per_target = []
    for j in range(truth.shape[1]):
        p, t = predictions[:, j], truth[:, j]
        varies = len(t) > 1 and np.ptp(t) > 0 and np.ptp(p) > 0
        per_target.append(
            {
                "rmse": float(np.sqrt(mean_squared_error(t, p))),
                "mae": float(mean_absolute_error(t, p)),
                "r2": float(r2_score(t, p)) if len(t) > 1 else float("nan"),
                "pearson": float(pearsonr(t, p)[0]) if varies else float("nan"),
                "spearman": float(spearmanr(t, p)[0]) if varies else float("nan"),
            }
        )
    scores = {name: float(np.mean([s[name] for s in per_target])) for name in REGRESSION_METRICS}
    if len(names) > 1:
        scores.update({f"{metric}_{name}": s[metric] for name, s in zip(names, per_target) for metric in s})
    return scores


def target_scores(predictions, label_ids, target: Target) -> dict[str, float]:
    """The metrics of a multi-label or regression run's raw outputs against its encoded labels."""
    outputs = raw_outputs(predictions)
    if target.is_multi_label:
        return multi_label_scores(sigmoid(outputs), label_ids, target.decision_thresholds())
    return regression_scores(unscale(outputs, target), unscale(label_ids, target), target.names)


def make_target_metrics(target: Target):
    """A Trainer ``compute_metrics`` for a multi-label or regression run."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        return target_scores(eval_prediction.predictions, eval_prediction.label_ids, target)

    return compute_metrics


def bootstrap_standard_error(
    outputs, label_ids, target: Target, metric: str, resamples: int = 200, seed: int = 0
) -> float:
    """The standard deviation of ``metric`` over bootstrap resamples of the validation rows (raw ``outputs`` and
    encoded ``label_ids``): the noise of a metric that is not a share, for the ladder's tolerance."""
    outputs, label_ids = np.asarray(outputs), np.asarray(label_ids)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, len(outputs), len(outputs))
        value = target_scores(outputs[rows], label_ids[rows], target).get(metric)
        if value is not None and np.isfinite(value):
            values.append(value)
    return float(np.std(values)) if len(values) > 1 else 0.0
