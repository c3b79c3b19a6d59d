"""The label-shape flags every recipe shares (text, knowledge, images, frozen features)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, check_fields
from ftpeft.labels.target import problem_type_name


def threshold_value(text: str) -> str | float:
    """--threshold: 'auto' or a number in (0, 1)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise FtpeftError(f"--threshold must be 'auto' or a number in (0, 1), got {text!r}.")
    return value


@dataclasses.dataclass
class LabelArguments:
    """What the labels are and how a label set is decided. ``auto`` reads the shape from the column types only."""

    problem_type: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "single_label (one class per row), multi_label (a set of labels per row) or regression (one or "
            "more numbers); HF's long names (multi_label_classification, ...) too. 'auto': a list-typed label column, "
            "--label_separator or several 0/1 --label_columns mean multi_label; non-integer numbers mean regression; "
            "anything else single_label (the decision and its reason: resolved_settings.json)."
        },
    )
    label_columns: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Several label columns: 0/1 columns, one per label (multi_label), or numeric targets "
            "(regression). Replaces --label_column."
        },
    )
    label_separator: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Split each label cell at this string into a label set (e.g. ',' or ' ' for Kaggle tag lists). "
            "Never guessed: without it a string is one class."
        },
    )
    allow_empty_labels: bool = dataclasses.field(
        default=False, metadata={"help": "multi_label: keep rows whose label set is empty (default: refused)."}
    )
    threshold: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "multi_label: the probability above which a label is predicted. 'auto': one threshold per "
            "label, chosen on validation by F1 (a label with fewer than --min_threshold_positives validation "
            "positives shares one global threshold, also chosen on validation); or a number in (0, 1)."
        },
    )
    min_threshold_positives: int = dataclasses.field(
        default=10,
        metadata={"help": "multi_label: validation positives a label needs for its own threshold.", "range": COUNT},
    )
    pos_weight: str = dataclasses.field(
        default="none",
        metadata={
            "help": "multi_label: the BCE loss's positive weight per label. 'balanced': negatives/positives in "
            "train (capped at 100); 'none'; or a JSON file {label: weight}."
        },
    )

    def threshold_rule(self):
        """--threshold and --min_threshold_positives, for the final evaluation."""
        from ftpeft.labels.evaluation import ThresholdRule

        return ThresholdRule(threshold_value(self.threshold), self.min_threshold_positives)

    def __post_init__(self):
        check_fields(self)
        self.problem_type = problem_type_name(self.problem_type)
        threshold_value(self.threshold)
        if self.label_separator == "":
            raise FtpeftError("--label_separator is empty; give the string that separates labels (e.g. ',').")
        if self.label_columns is not None and len(set(self.label_columns)) != len(self.label_columns):
            raise FtpeftError(f"--label_columns {self.label_columns} names a column twice; name each once.")
        if self.pos_weight not in ("balanced", "none") and not Path(self.pos_weight).is_file():
            raise FtpeftError(f"--pos_weight {self.pos_weight}: not 'balanced', 'none' or an existing JSON file.")
        if self.problem_type == "regression" and self.label_separator:
            raise FtpeftError("--label_separator makes label sets; it does not go with --problem_type regression.")
