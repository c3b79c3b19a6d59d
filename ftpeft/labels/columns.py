"""Label formats of any ``datasets`` split, read once in one place (text and images): one class per row, a label set
(a list-typed column, a delimited string with --label_separator, or several 0/1 --label_columns), or numbers (one
or several numeric columns).

``encode_targets(splits, label_args, label_column)`` decides the problem type (``auto``: from the column types
only), checks every label cell against it, and returns the splits with one ``labels`` column -- class ids, multi-hot
float rows, or standardised floats -- and the ``Target`` that says how to read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ftpeft.core.errors import FtpeftError
from ftpeft.labels.args import LabelArguments
from ftpeft.labels.target import MULTI_LABEL, PROBLEM_TYPES, REGRESSION, SINGLE_LABEL, Target

RESERVED_COLUMNS = ("labels",)  # what the recipes write their encoded labels to


def label_source_columns(label_args: LabelArguments, label_column: str) -> list[str]:
    """The columns the labels are read from: --label_columns, else --label_column."""
    return list(label_args.label_columns) if label_args.label_columns else [label_column]


def label_flag(label_args: LabelArguments) -> str:
    return "--label_columns" if label_args.label_columns else "--label_column"


def check_header(column_names: Sequence[str], label_columns: Sequence[str], where: str) -> None:
    """Header ambiguity is refused before any work: a column name twice, or a reserved name beside other labels."""
    from collections import Counter

    twice = sorted(name for name, n in Counter(column_names).items() if n > 1)
    if twice:
        raise FtpeftError(f"{where}: the column name(s) {twice} occur more than once; rename one of each.")
    for reserved in RESERVED_COLUMNS:
        if reserved in column_names and reserved not in label_columns:
            raise FtpeftError(
                f"{where}: a column is named '{reserved}' (the name ftpeft gives the encoded labels) beside the "
                f"label column(s) {list(label_columns)}; rename it, or pass --label_column {reserved}."
            )


def is_list_feature(feature: Any) -> bool:
    return type(feature).__name__ in ("Sequence", "List", "LargeList")


def is_missing(value: Any) -> bool:
    """An empty cell as the readers give it: None, or NaN (a CSV column of numbers with a gap)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _label_text(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value).strip()


def decide_problem_type(train, columns: list[str], label_args: LabelArguments) -> tuple[str, str]:
    """(HF's problem type, why) for the label ``columns`` of the training split ``train``."""
    if label_args.problem_type != "auto":
        return PROBLEM_TYPES[label_args.problem_type], f"--problem_type {label_args.problem_type}"
    features = train.features
    if len(columns) > 1:
        dtypes = {getattr(features[c], "dtype", None) for c in columns}
        if dtypes <= {"bool", "int8", "int16", "int32", "int64", "uint8"}:
            return MULTI_LABEL, f"--label_columns: {len(columns)} integer columns (one 0/1 column per label)"
        return REGRESSION, f"--label_columns: {len(columns)} columns with non-integer numbers"
    column = columns[0]
    if is_list_feature(features[column]):
        return MULTI_LABEL, f"column '{column}' is list-typed (a label set per row)"
    if label_args.label_separator:
        return MULTI_LABEL, f"--label_separator {label_args.label_separator!r}: each cell is a label set"
    dtype = getattr(features[column], "dtype", None)
    if dtype in ("float16", "float32", "float64"):
        values = [v for v in train[column] if not is_missing(v)]
        if any(not float(v).is_integer() for v in values):
            return REGRESSION, f"column '{column}' holds non-integer numbers"
    return SINGLE_LABEL, f"column '{column}' holds one class per row"


def _label_sets(dataset, columns: list[str], label_args: LabelArguments, split: str) -> list[list[str]]:
    """Each row's label set, read from the one format the columns have."""
    if len(columns) > 1:
        table = dataset.select_columns(columns).to_dict()
        sets = []
        for row in range(len(dataset)):
            chosen = []
            for column in columns:
                value = _as_number(table[column][row])
                if value not in (0.0, 1.0):
                    raise FtpeftError(
                        f"{label_flag(label_args)}: column '{column}' of the {split} split has "
                        f"{table[column][row]!r} in row {row}; label-set columns hold 0 or 1."
                    )
                if value == 1.0:
                    chosen.append(column)
            sets.append(chosen)
        return sets
    column = columns[0]
    if is_list_feature(dataset.features[column]):
        return [[_label_text(v) for v in cell if not is_missing(v)] for cell in dataset[column]]
    if label_args.label_separator:
        separator = label_args.label_separator
        return [[part.strip() for part in str(cell).split(separator) if part.strip()] for cell in dataset[column]]
    raise FtpeftError(
        f"--problem_type multi_label: column '{column}' holds one value per row; give its separator "
        "(--label_separator ','), a list-typed column (JSON, parquet), or one 0/1 column per label (--label_columns)."
    )


def _encode_multi_label(splits, columns, label_args: LabelArguments, why: str):
    from datasets import Sequence as SequenceFeature
    from datasets import Value

    sets = {split: _label_sets(dataset, columns, label_args, split) for split, dataset in splits.items()}
    names = columns if len(columns) > 1 else sorted({label for row in sets["train"] for label in row})
    if len(names) < 2:
        raise FtpeftError(f"{label_flag(label_args)}: {len(names)} distinct label(s) in train; need at least 2.")
    index = {name: i for i, name in enumerate(names)}
    encoded = {}
    for split, dataset in splits.items():
        unseen = sorted({label for row in sets[split] for label in row if label not in index})
        if unseen:
            raise FtpeftError(f"the {split} split has label(s) {unseen[:5]} never seen in training (labels: {names}).")
        empty = sum(not row for row in sets[split])
        if empty and not label_args.allow_empty_labels:
            raise FtpeftError(
                f"the {split} split has {empty} row(s) with an empty label set; fix them, or pass "
                "--allow_empty_labels to keep them (rows with no label)."
            )
        hot = np.zeros((len(dataset), len(names)), dtype=np.float32)
        for row, labels in enumerate(sets[split]):
            hot[row, [index[label] for label in labels]] = 1.0
        dataset = dataset.remove_columns([c for c in columns if c in dataset.column_names])
        feature = SequenceFeature(Value("float32"), length=len(names))
        encoded[split] = dataset.add_column("labels", list(hot), feature=feature)
    target = Target(MULTI_LABEL, tuple(names), separator=label_args.label_separator or ",", why=why)
    return encoded, target


def _encode_regression(splits, columns, label_args: LabelArguments, why: str):
    from datasets import Sequence as SequenceFeature
    from datasets import Value

    values = {}
    for split, dataset in splits.items():
        table = dataset.select_columns(columns).to_dict()
        rows = np.zeros((len(dataset), len(columns)), dtype=np.float64)
        for j, column in enumerate(columns):
            for row, cell in enumerate(table[column]):
                number = _as_number(cell)
                if number is None or isinstance(cell, bool):
                    raise FtpeftError(
                        f"{label_flag(label_args)}: column '{column}' of the {split} split has {cell!r} in row {row}; "
                        "a regression target must be a finite number in every row."
                    )
                rows[row, j] = number
        values[split] = rows
    mean, std = values["train"].mean(axis=0), values["train"].std(axis=0)
    if (std == 0).any():
        constant = [c for c, s in zip(columns, std) if s == 0]
        raise FtpeftError(f"regression target(s) {constant} are constant in train; there is nothing to learn.")
    encoded = {}
    for split, dataset in splits.items():
        scaled = ((values[split] - mean) / std).astype(np.float32)
        dataset = dataset.remove_columns([c for c in columns if c in dataset.column_names])
        if len(columns) == 1:
            encoded[split] = dataset.add_column("labels", scaled[:, 0].tolist(), feature=Value("float32"))
        else:
            feature = SequenceFeature(Value("float32"), length=len(columns))
            encoded[split] = dataset.add_column("labels", list(scaled), feature=feature)
    target = Target(
        REGRESSION,
        tuple(columns),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        why=why,
    )
    return encoded, target


def encode_targets(splits, label_args: LabelArguments, label_column: str, encode_single_label):
    """(splits with one encoded ``labels`` column, Target). ``encode_single_label(splits, column)`` encodes one class
    per row (the recipe's own, which knows ClassLabel features and unseen classes) and returns (splits, names)."""
    from datasets import DatasetDict

    columns = label_source_columns(label_args, label_column)
    for split, dataset in splits.items():
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise FtpeftError(
                f"{label_flag(label_args)} {missing} not found in the {split} split; columns: {dataset.column_names}."
            )
    problem_type, why = decide_problem_type(splits["train"], columns, label_args)
    if problem_type == SINGLE_LABEL:
        if len(columns) > 1:
            raise FtpeftError("--label_columns with --problem_type single_label: one class per row needs one column.")
        encoded, names = encode_single_label(splits, columns[0])
        return encoded, Target(SINGLE_LABEL, tuple(names), why=why)
    if problem_type == MULTI_LABEL:
        encoded, target = _encode_multi_label(splits, columns, label_args, why)
    else:
        encoded, target = _encode_regression(splits, columns, label_args, why)
    return DatasetDict(encoded), target


def rescale_to_train(labels: dict[str, Sequence], target: Target) -> tuple[dict[str, list], Target]:
    """Numbers: every split's standardised labels again, on the mean and sd of the final training split (after the
    validation rows are held out of it and the limits applied): the targets are standardised on the rows the model
    trains on. Anything but numbers is returned as it is."""
    from ftpeft.labels.scores import unscale

    if not target.is_regression:
        return dict(labels), target
    units = {split: unscale(values, target) for split, values in labels.items()}
    mean, std = units["train"].mean(axis=0), units["train"].std(axis=0)
    if (std == 0).any():
        constant = [name for name, s in zip(target.names, std) if s == 0]
        raise FtpeftError(f"regression target(s) {constant} are constant in train; there is nothing to learn.")
    scaled = {split: ((values - mean) / std).astype(np.float32) for split, values in units.items()}
    shaped = {split: (v[:, 0].tolist() if target.num_outputs == 1 else list(v)) for split, v in scaled.items()}
    fitted = Target(target.problem_type, target.names, target.separator, tuple(map(float, mean)),
                    tuple(map(float, std)), target.thresholds, target.why)  # fmt: skip
    return shaped, fitted


def label_rows(labels, target: Target) -> list[str]:
    """A row-wise description of encoded labels for the data report: the class name, or the label set joined."""
    if target.is_single_label:
        return [target.names[i] for i in labels]
    if target.is_multi_label:
        return ["+".join(n for n, on in zip(target.names, row) if on) or "(none)" for row in labels]
    return [target.short_name] * len(labels)
