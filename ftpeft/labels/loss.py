"""The loss weights of a run by its problem type: --class_weights for one class per row, --pos_weight for label sets
(BCE's positive weight per label); numbers take neither. A flag that does not fit the problem type is refused."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftpeft.core.errors import FtpeftError
from ftpeft.labels.target import Target

POS_WEIGHT_CAP = 100.0  # a label with very few positives would otherwise dominate the loss


def balanced_pos_weight(label_matrix) -> list[float]:
    """negatives / positives per label on the training rows, capped at POS_WEIGHT_CAP (and for labels with none)."""
    matrix = np.asarray(label_matrix, dtype=float)
    positives = matrix.sum(axis=0)
    negatives = len(matrix) - positives
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), POS_WEIGHT_CAP)
    return [float(min(r, POS_WEIGHT_CAP)) for r in ratio]


def pos_weight_from_file(path: str, names: Sequence[str]) -> list[float]:
    """{label: weight} from a JSON file; labels it does not name weigh 1."""
    try:
        weights = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise FtpeftError(f"--pos_weight {path}: could not read it as JSON ({error}).") from None
    if not isinstance(weights, dict):
        raise FtpeftError(f"--pos_weight {path}: expected a JSON object {{label: weight}}.")
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise FtpeftError(f"--pos_weight {path}: unknown label(s) {unknown[:5]}; the labels are {list(names)}.")
    values = [weights.get(name, 1.0) for name in names]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        raise FtpeftError(f"--pos_weight {path}: every weight must be a number > 0.")
    return [float(v) for v in values]


def loss_weights(target: Target, class_weights: str, pos_weight: str, train_labels):
    """(class weights or None, positive weights or None) for ``target``'s training labels; a flag that does not fit
    the problem type is refused."""
    check_loss_flags(target, class_weights, pos_weight)
    if target.is_single_label:
        from ftpeft.core.class_weights import compute_class_weights

        return compute_class_weights(class_weights, train_labels, list(target.names)), None
    if not target.is_multi_label or pos_weight == "none":
        return None, None
    if pos_weight == "balanced":
        return None, balanced_pos_weight(train_labels)
    return None, pos_weight_from_file(pos_weight, target.names)


def check_loss_flags(target: Target, class_weights: str, pos_weight: str) -> None:
    if not target.is_single_label and class_weights != "none":
        raise FtpeftError(
            f"--class_weights is for one class per row; this run is {target.short_name}"
            + (" (use --pos_weight for label sets)." if target.is_multi_label else ".")
        )
    if not target.is_multi_label and pos_weight != "none":
        raise FtpeftError(f"--pos_weight is for label sets (multi_label); this run is {target.short_name}.")


def loss_weights_for_run(run, target: Target, class_weights: str, pos_weight: str, train_labels):
    """(class weights or None, positive weights or None, the card's note or None); recorded in resolved_settings."""
    check_loss_flags(target, class_weights, pos_weight)
    if target.is_single_label:
        from ftpeft.core.class_weights import class_weights_for_run

        weights, note = class_weights_for_run(run, class_weights, train_labels, list(target.names))
        return weights, None, note
    if target.is_regression:
        return None, None, "Loss: mean squared error on standardised targets."
    if pos_weight == "none":
        return None, None, "Loss: binary cross-entropy with logits, one per label."
    weights = (
        balanced_pos_weight(train_labels)
        if pos_weight == "balanced"
        else pos_weight_from_file(pos_weight, target.names)
    )
    shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(target.names, weights))
    note = f"binary cross-entropy with logits, positive weight per label (--pos_weight {pos_weight}): {shown}"
    run.record("pos_weight", pos_weight, dict(zip(target.names, weights)), note)
    return None, weights, f"Loss: {note}."
