"""The predictions CSV: id, predicted label, one probability column per class named by label (Kaggle's shape)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftpeft.core.errors import FtpeftError

LABEL_COLUMN = "label"


def check_output(path: str | Path, overwrite: bool) -> None:
    """Refuse, before any work, to replace an existing --output unless --overwrite."""
    path = Path(path)
    if path.is_dir():
        raise FtpeftError(f"--output {path} is a directory; name the CSV file to write.")
    if path.exists() and not overwrite:
        raise FtpeftError(f"--output {path} exists; pass --overwrite to replace it, or choose another --output.")


def prediction_columns(id_column: str, label_names: list[str]) -> list[str]:
    """[id, label, <class 0>, <class 1>, ...]; a class named like the id or label column would be ambiguous."""
    clash = [name for name in label_names if name in (id_column, LABEL_COLUMN)]
    if clash:
        raise FtpeftError(
            f"the model has a class named {clash[0]!r}, which is also the name of the id or label column of the "
            "output; pass another --id_column."
        )
    return [id_column, LABEL_COLUMN, *label_names]


def write_predictions(
    path: str | Path, id_column: str, ids: list[str], label_names: list[str], probabilities: np.ndarray
) -> Path:
    """Write the CSV atomically (a temporary file renamed into place) and return its path."""
    import pandas as pd

    from ftpeft.core.outputs import staged

    columns = prediction_columns(id_column, label_names)
    predicted = [label_names[i] for i in probabilities.argmax(axis=1)]
    frame = pd.DataFrame({columns[0]: ids, LABEL_COLUMN: predicted})
    frame = pd.concat([frame, pd.DataFrame(probabilities, columns=label_names)], axis=1)
    with staged(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def skipped_list_path(output: str | Path) -> Path:
    """preds.csv -> preds.skipped.txt: the unreadable images, one 'path<TAB>reason' a line."""
    output = Path(output)
    return output.with_name(f"{output.stem}.skipped.txt")
