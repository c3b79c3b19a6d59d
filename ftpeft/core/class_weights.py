"""Class-weighted cross-entropy for imbalanced labels: ``--class_weights balanced|none|FILE``.

- ``balanced``: scikit-learn's ``compute_class_weight("balanced")`` on the training labels,
  ``n_samples / (n_classes * count(class))``: a class half as frequent weighs twice as much.
- ``FILE``: a JSON object ``{"label": weight, ...}`` or a CSV of ``label,weight`` rows (a header row is
  allowed), naming every class of the data once, each weight a finite number >= 0.

The loss is ``torch.nn.functional.cross_entropy(logits, labels, weight=w)``: per batch, the weighted mean
``sum_i w[y_i] * nll_i / sum_i w[y_i]``, the same on every DDP rank (each computes ``w`` from the whole
training split). ``FtpeftTrainer(class_weights=...)`` applies it to any model whose forward returns logits.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftpeft.core.errors import FtpeftError

MODES = ("none", "balanced")
FLAG = "--class_weights"


def read_weights_file(path: str | Path) -> dict[str, float]:
    """label -> weight from a JSON object or a two-column CSV; every weight finite and >= 0."""
    path = Path(path)
    if not path.is_file():
        raise FtpeftError(f"{FLAG} {path}: no such file (expected balanced, none or a JSON/CSV file).")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as error:
            raise FtpeftError(f"{FLAG} {path}: not valid JSON ({error}).") from None
        if not isinstance(raw, dict) or not raw:
            raise FtpeftError(f'{FLAG} {path}: expected a JSON object {{"label": weight, ...}}.')
        items = [(str(label), value) for label, value in raw.items()]
    elif path.suffix.lower() == ".csv":
        rows = [row for row in csv.reader(text.splitlines()) if row and any(cell.strip() for cell in row)]
        if rows and not _is_number(rows[0][-1]):
            rows = rows[1:]  # a header row
        if not rows or any(len(row) != 2 for row in rows):
            raise FtpeftError(f"{FLAG} {path}: expected two columns, label,weight, one row per class.")
        items = [(label.strip(), value.strip()) for label, value in rows]
    else:
        raise FtpeftError(f"{FLAG} {path}: unknown format '{path.suffix}'; use a .json or .csv file.")
    weights: dict[str, float] = {}
    for label, value in items:
        if label in weights:
            raise FtpeftError(f"{FLAG} {path}: label '{label}' is given twice.")
        number = float(value) if _is_number(value) else math.nan
        if not math.isfinite(number) or number < 0:
            raise FtpeftError(f"{FLAG} {path}: the weight of '{label}' must be a finite number >= 0, got {value!r}.")
        weights[label] = number
    if not any(weights.values()):
        raise FtpeftError(f"{FLAG} {path}: every weight is 0; at least one class must count.")
    return weights


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def check_class_weights(value: str) -> None:
    """Parse-time check of ``--class_weights``: a mode, or a readable file of valid weights."""
    if value not in MODES:
        read_weights_file(value)


def compute_class_weights(value: str, train_labels: Sequence[int], label_names: list[str]) -> list[float] | None:
    """The weight of each class id (None for ``none``); refuses labels the data does not have, or lacks."""
    if value == "none":
        return None
    if value == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        labels = np.asarray(train_labels)
        missing = [label_names[i] for i in range(len(label_names)) if not (labels == i).any()]
        if missing:
            raise FtpeftError(
                f"{FLAG} balanced: class(es) {', '.join(missing)} have no training examples; pass a weights FILE."
            )
        return compute_class_weight("balanced", classes=np.arange(len(label_names)), y=labels).tolist()
    weights = read_weights_file(value)
    unknown = [label for label in weights if label not in label_names]
    if unknown:
        raise FtpeftError(f"{FLAG} {value}: unknown label(s) {unknown}; the data's labels are {label_names}.")
    absent = [label for label in label_names if label not in weights]
    if absent:
        raise FtpeftError(f"{FLAG} {value}: no weight for label(s) {absent}; give every class a weight.")
    return [weights[label] for label in label_names]


def weighted_cross_entropy(logits, labels, weights):
    """``cross_entropy(weight=weights)``: the batch's weighted mean (in float32); labels of -100 are ignored."""
    import torch

    logits = logits.reshape(-1, logits.shape[-1]).float()
    return torch.nn.functional.cross_entropy(
        logits, labels.reshape(-1), weight=weights.to(logits.device, torch.float32)
    )


def class_weights_for_run(run, value: str, train_labels: Sequence[int], label_names: list[str]):
    """(weights or None, the card's note or None) for a run; a weighted loss is recorded in resolved_settings.json."""
    weights = compute_class_weights(value, train_labels, label_names)
    if weights is None:
        return None, None
    note = describe(value, weights, label_names)
    run.record("class_weights", value, {name: round(w, 6) for name, w in zip(label_names, weights)}, note)
    return weights, f"Loss: {note}."


def describe(value: str, weights: list[float] | None, label_names: list[str]) -> str:
    """One line for the card and the log: the mode and each class's weight."""
    if weights is None:
        return "unweighted cross-entropy (--class_weights none)"
    shown = ", ".join(f"{name} {weight:.3g}" for name, weight in zip(label_names, weights))
    source = "balanced: n_samples / (n_classes * count) on the training labels" if value == "balanced" else value
    return f"class-weighted cross-entropy (--class_weights {source}): {shown}"
