"""The predictions CSV (Kaggle's shape): one class per row: id, the predicted label, one probability column per class;
label sets: id, the predicted ``labels`` (joined with the run's separator), one probability column per label;
numbers: id, one column per target."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftpeft.core.errors import FtpeftError

LABEL_COLUMN = "label"
LABEL_SET_COLUMN = "labels"


def check_output(path: str | Path, overwrite: bool) -> None:
    """Refuse, before any work, to replace an existing --output unless --overwrite."""
    path = Path(path)
    if path.is_dir():
        raise FtpeftError(f"--output {path} is a directory; name the CSV file to write.")
    if path.exists() and not overwrite:
        raise FtpeftError(f"--output {path} exists; pass --overwrite to replace it, or choose another --output.")


def prediction_columns(id_column: str, label_names: list[str], target=None) -> list[str]:
    """[id, label(s), <class 0>, <class 1>, ...] ([id, <target 0>, ...] for numbers); a class named like the id or
    label column would be ambiguous."""
    if target is not None and target.is_regression:
        if id_column in label_names:
            raise FtpeftError(
                f"the model has a target named {id_column!r} like the id column; pass another --id_column."
            )
        return [id_column, *label_names]
    label_column = LABEL_SET_COLUMN if target is not None and target.is_multi_label else LABEL_COLUMN
    clash = [name for name in label_names if name in (id_column, label_column)]
    if clash:
        raise FtpeftError(
            f"the model has a class named {clash[0]!r}, which is also the name of the id or label column of the "
            "output; pass another --id_column."
        )
    return [id_column, label_column, *label_names]


def predicted_labels(scores: np.ndarray, label_names: list[str], target=None) -> list[str]:
    """Per row, the top class; for label sets, every label at or above its threshold, joined with the separator."""
    if target is not None and target.is_multi_label:
        chosen = scores >= np.asarray(target.decision_thresholds())[None, :]
        separator = target.separator or ","
        return [separator.join(n for n, on in zip(label_names, row) if on) for row in chosen]
    return [label_names[i] for i in scores.argmax(axis=1)]


def write_predictions(
    path: str | Path, id_column: str, ids: list[str], label_names: list[str], probabilities: np.ndarray, target=None
) -> Path:
    """Write the CSV atomically (a temporary file renamed into place) and return its path. ``probabilities``: the
    predictor's outputs (class or label probabilities, or the numbers of a regression ``target``)."""
    import pandas as pd

    from ftpeft.core.outputs import staged

    columns = prediction_columns(id_column, label_names, target)
    frame = pd.DataFrame({columns[0]: ids})
    if target is None or not target.is_regression:
        frame[columns[1]] = predicted_labels(probabilities, label_names, target)
    frame = pd.concat([frame, pd.DataFrame(probabilities, columns=label_names)], axis=1)
    with staged(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def skipped_list_path(output: str | Path) -> Path:
    """preds.csv -> preds.skipped.txt: the unreadable images, one 'path<TAB>reason' a line."""
    output = Path(output)
    return output.with_name(f"{output.stem}.skipped.txt")
