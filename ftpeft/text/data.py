"""Text classification data: a Hub dataset, local files or the offline demo -> tokenised train/validation/test."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftpeft.core.data_report import DataReport, SplitCheck, build_report, check_split, refuse_problems
from ftpeft.core.errors import FtpeftError, reading_problem
from ftpeft.labels.columns import (
    check_header,
    encode_targets,
    is_list_feature,
    is_missing,
    label_rows,
    label_source_columns,
    rescale_to_train,
)
from ftpeft.labels.target import Target
from ftpeft.text.args import ModelArguments, TextDataArguments
from ftpeft.text.demo import DEMO_TWEETS_NAME, demo_tweets

logger = logging.getLogger("ftpeft")
LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Text columns guessed when --text_columns is not given, most specific first (GLUE/SuperGLUE names included).
TEXT_COLUMN_GUESSES = (
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("text",),
    ("sentence",),
    ("content",),
    ("review",),
)


def dataset_description(data_args: TextDataArguments) -> str:
    """A short name of the data for cards and logs."""
    if data_args.dataset_name:
        return data_args.dataset_name + (f"/{data_args.dataset_config_name}" if data_args.dataset_config_name else "")
    if data_args.train_file:
        return Path(data_args.train_file).name
    return DEMO_TWEETS_NAME


def _has_no_rows(path: Path, fmt: str) -> bool:
    if path.stat().st_size == 0:
        return True
    if fmt == "csv":
        with path.open("rb") as stream:
            return sum(1 for line in stream if line.strip()) <= 1  # header only
    if fmt == "json" and path.suffix == ".json":
        return path.read_text().strip() in ("[]", "{}")
    return False


def _csv_header(path: Path) -> list[str]:
    import csv

    with path.open(newline="", encoding="utf-8", errors="replace") as stream:
        return next(csv.reader(stream), [])


def _load_local(data_args: TextDataArguments):
    from datasets import DatasetDict, load_dataset

    files = {
        split: path
        for split, path in (
            ("train", data_args.train_file),
            ("validation", data_args.validation_file),
            ("test", data_args.test_file),
        )
        if path
    }
    formats = set()
    for split, path in files.items():
        if not Path(path).is_file():
            raise FtpeftError(f"--{split}_file {path}: no such file.")
        suffix = Path(path).suffix.lower()
        if suffix not in LOCAL_FORMATS:
            raise FtpeftError(f"--{split}_file {path}: unknown format '{suffix}'; use one of {sorted(LOCAL_FORMATS)}.")
        formats.add(LOCAL_FORMATS[suffix])
        if _has_no_rows(Path(path), LOCAL_FORMATS[suffix]):
            raise FtpeftError(f"--{split}_file {path} has no data rows.")
    if len(formats) > 1:
        raise FtpeftError(f"--train_file/--validation_file/--test_file mix formats {sorted(formats)}; use one format.")
    fmt = formats.pop()
    if fmt == "csv":  # pandas renames a repeated header ('text', 'text.1'): read the header as written
        for split, path in files.items():
            check_header(
                _csv_header(Path(path)),
                label_source_columns(data_args, data_args.label_column),
                f"--{split}_file {path}",
            )
    splits = {}
    for split, path in files.items():  # one file at a time: each split's columns are checked on their own
        try:
            splits[split] = load_dataset(fmt, data_files={split: path})[split]
        except Exception as error:  # datasets raises many types for malformed files  # noqa: BLE001
            raise FtpeftError(
                f"--{split}_file {path}: could not read it as {fmt} ({reading_problem(error)})."
            ) from None
    return DatasetDict(splits)


def load_raw_text_datasets(data_args: TextDataArguments, cache_dir: str | None = None):
    """DatasetDict with 'train' and whichever of 'validation'/'test' the source provides."""
    from datasets import load_dataset

    if data_args.dataset_name:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    elif data_args.train_file:
        raw = _load_local(data_args)
    else:
        raw = demo_tweets(data_args.demo_classes, data_args.demo_train_samples, data_args.demo_test_samples)
    if "train" not in raw:
        raise FtpeftError(f"the dataset {dataset_description(data_args)} has no 'train' split (it has {list(raw)}).")
    return raw


def resolve_text_columns(column_names: list[str], data_args: TextDataArguments) -> list[str]:
    """The one or two text columns to encode; an error lists the columns that exist."""
    if data_args.text_columns:
        missing = [c for c in data_args.text_columns if c not in column_names]
        if missing:
            raise FtpeftError(f"--text_columns {missing} not found; the data has columns {column_names}.")
        return list(data_args.text_columns)
    for guess in TEXT_COLUMN_GUESSES:
        if all(c in column_names for c in guess):
            return list(guess)
    raise FtpeftError(
        f"cannot tell which column holds the text; pass --text_columns (the data has columns {column_names})."
    )


def _label_names(raw, label_column: str) -> list[str]:
    from datasets import ClassLabel

    feature = raw["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = [v for v in raw["train"].unique(label_column) if v is not None]
    return [label_text(v) for v in sorted(values)]


def require_columns(raw, text_columns: list[str], label_column: str | list[str]) -> None:
    """Every split has the text and label columns (an error names the split and lists its columns). A label column
    may be list-typed (a label set per row); text columns hold one value per row."""
    label_columns = [label_column] if isinstance(label_column, str) else list(label_column)
    flag = "--label_column" if isinstance(label_column, str) else "--label_columns"
    for split, dataset in raw.items():
        missing_labels = [c for c in label_columns if c not in dataset.column_names]
        if missing_labels:
            named = f"'{missing_labels[0]}'" if isinstance(label_column, str) else str(missing_labels)
            raise FtpeftError(f"{flag} {named} not found in the {split} split; columns: {dataset.column_names}.")
        check_header(dataset.column_names, label_columns, f"the {split} split")
        missing = [c for c in text_columns if c not in dataset.column_names]
        if missing:
            raise FtpeftError(
                f"text column(s) {missing} not found in the {split} split; columns: {dataset.column_names}."
            )
        for column in [*text_columns, *(c for c in label_columns if not is_list_feature(dataset.features[c]))]:
            _require_scalar_column(dataset, split, column)


def _require_scalar_column(dataset, split: str, column: str) -> None:
    """A text or label column holds one string or number per row: JSON lists, objects or a mix of types
    (which datasets keeps as raw JSON) would fail deep inside arrow or the tokenizer."""
    from datasets import ClassLabel, Value

    feature = dataset.features[column]
    if not isinstance(feature, (Value, ClassLabel)):
        kind = "values of mixed types" if type(feature).__name__ == "Json" else f"{type(feature).__name__} values"
        raise FtpeftError(
            f"column '{column}' of the {split} split holds {kind}; each row needs one string or number there "
            "(fix the file: no lists, objects or mixed types in a column)."
        )


def label_text(value) -> str:
    """A label's name: 1.0 reads as "1" (a CSV column of integer labels with an empty cell is read as floats)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def text_key(texts: tuple) -> tuple[str, ...]:
    """What makes two rows the same for duplicates and leakage: their texts, stripped of outer whitespace."""
    return tuple("" if is_missing(t) else str(t).strip() for t in texts)


def check_text_rows(
    raw, text_columns: list[str], label_column: str | list[str], drop_duplicates: bool, sources: dict[str, str]
):
    """Drop the rows that cannot be trained or scored on (empty/blank text, a missing label: None, NaN or a
    Hub ClassLabel's -1 of unlabelled test sets) and, with ``drop_duplicates``, repeated texts.

    Returns (the datasets with those rows removed, {split: SplitCheck}); every drop is logged."""
    from datasets import ClassLabel, DatasetDict

    require_columns(raw, text_columns, label_column)
    label_columns = [label_column] if isinstance(label_column, str) else list(label_column)
    kept, checks = {}, {}
    for split, dataset in raw.items():
        columns = dataset.select_columns([*text_columns, *label_columns]).to_dict()
        class_labels = [c for c in label_columns if isinstance(dataset.features[c], ClassLabel)]
        texts = list(zip(*(columns[c] for c in text_columns)))
        labels = list(zip(*(columns[c] for c in label_columns)))
        reasons = [
            "blank_text"
            if any(k == "" for k in text_key(row))
            else "missing_label"
            if any(is_missing(v) or (c in class_labels and v == -1) for c, v in zip(label_columns, label))
            else None
            for row, label in zip(texts, labels)
        ]
        check = check_split(sources.get(split, split), reasons, [text_key(row) for row in texts], drop_duplicates)
        if check.drop_note():
            logger.warning("%s split (%s): dropped %s", split, check.source, check.drop_note())
        kept[split] = dataset if len(check.keep) == len(dataset) else dataset.select(check.keep)
        checks[split] = check
    return DatasetDict(kept), checks


def encode_labels(raw, label_column: str):
    """Map labels (strings or ints) to ids 0..C-1 with names from the training split.

    Returns (datasets with an int 'labels' ClassLabel column, label names). Expects the rows without a label
    dropped (``check_text_rows``). A validation or test label never seen in training is an error.
    """
    from datasets import ClassLabel

    require_columns(raw, [], label_column)
    feature = raw["train"].features[label_column]
    names = _label_names(raw, label_column)
    if len(names) < 2:
        raise FtpeftError(
            f"--label_column '{label_column}' has {len(names)} distinct value(s) in train; need at least 2."
        )
    is_class_label = isinstance(feature, ClassLabel)
    name_to_id = {name: i for i, name in enumerate(names)}

    def to_id(value):
        return value if is_class_label else name_to_id.get(label_text(value), -2)

    encoded = {}
    for split, dataset in raw.items():
        dataset = dataset.map(lambda batch: {"labels": [to_id(v) for v in batch[label_column]]}, batched=True)
        unseen = sorted({label_text(v) for v, i in zip(dataset[label_column], dataset["labels"]) if i == -2})
        if unseen:
            raise FtpeftError(
                f"the {split} split has label(s) {unseen[:5]} never seen in training (training labels: {names})."
            )
        if label_column != "labels":
            dataset = dataset.remove_columns(label_column)
        encoded[split] = dataset.cast_column("labels", ClassLabel(names=names))
    from datasets import DatasetDict

    return DatasetDict(encoded), names


def split_and_limit(datasets, data_args: TextDataArguments, seed: int, target: Target | None = None):
    """Add a stratified, seeded validation split when none exists; apply --max_*_samples."""
    if len(datasets["train"]) == 0:
        raise FtpeftError(
            "the training set is empty (after dropping rows with blank text or no label); check --train_file / "
            "--label_column / --text_columns."
        )
    if "validation" not in datasets:
        datasets["train"], datasets["validation"] = hold_out_validation(
            datasets["train"], data_args.validation_split_percentage / 100, seed, target
        )
    for split_name, limit in (
        ("train", data_args.max_train_samples),
        ("validation", data_args.max_eval_samples),
        ("test", data_args.max_test_samples),
    ):
        if limit is not None and split_name in datasets and len(datasets[split_name]) > limit:
            datasets[split_name] = datasets[split_name].shuffle(seed=seed).select(range(limit))
    if len(datasets["train"]) == 0:
        raise FtpeftError("the training set is empty after filtering; check --max_train_samples and the data.")
    return datasets


def standardise_on_train(datasets, target: Target):
    """Numbers: the labels standardised on the final training split (``rescale_to_train``); others unchanged."""
    from datasets import DatasetDict

    if not target.is_regression:
        return datasets, target
    labels, target = rescale_to_train({split: d["labels"] for split, d in datasets.items()}, target)
    rescaled = {
        split: d.remove_columns("labels").add_column("labels", labels[split], feature=d.features["labels"])
        for split, d in datasets.items()
    }
    return DatasetDict(rescaled), target


def hold_out_validation(train, fraction: float, seed: int, target: Target | None = None):
    """(train, validation) of a seeded split that keeps the labels' shares: stratified by class, iteratively
    stratified for label sets, random for numbers."""
    if len(train) < 2:
        raise FtpeftError(
            f"the training split has {len(train)} usable row(s): too few to hold out a validation split; give more "
            "rows or a --validation_file."
        )
    if target is not None and target.is_multi_label:
        from ftpeft.labels.stratify import iterative_split

        kept, held_out = iterative_split(train["labels"], fraction, seed)
        return train.select(kept), train.select(held_out)
    stratify = {} if target is not None and target.is_regression else {"stratify_by_column": "labels"}
    try:
        split = train.train_test_split(test_size=fraction, seed=seed, **stratify)
    except ValueError:  # a class too small to stratify
        split = train.train_test_split(test_size=fraction, seed=seed)
    return split["train"], split["test"]


def tokenize(
    datasets,
    tokenizer,
    text_columns: list[str],
    max_length: int,
    num_proc: int | None = None,
    keep_columns: tuple[str, ...] = (),
    doc_stride: int | None = None,
):
    """Tokenise every split once (no padding: the collator pads per batch).

    Keeps only the model inputs, ``labels`` and ``keep_columns`` (e.g. knowledge ids for injection). A
    tokenizer that turns most training words into its unknown token is refused first. With ``doc_stride`` each text
    becomes windows of ``max_length`` tokens overlapping by it (``ftpeft.text.windows``; one text column, no
    ``keep_columns``).
    """
    from ftpeft.text.modeling import check_tokenizer_covers, training_text_sample
    from ftpeft.text.windows import tokenize_windows

    check_tokenizer_covers(tokenizer, training_text_sample(datasets, text_columns))
    if doc_stride is not None:
        from datasets import DatasetDict

        return DatasetDict(
            {
                split: tokenize_windows(
                    dataset, tokenizer, text_columns[0], max_length, doc_stride, num_proc=num_proc,
                    desc=f"tokenising {split} into windows",
                )
                for split, dataset in datasets.items()
            }
        )  # fmt: skip

    def encode(batch):
        texts = [["" if t is None else str(t) for t in batch[c]] for c in text_columns]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    tokenized = {}
    for split, dataset in datasets.items():
        drop = [c for c in dataset.column_names if c != "labels" and c not in keep_columns]
        tokenized[split] = dataset.map(
            encode, batched=True, remove_columns=drop, num_proc=num_proc, desc=f"tokenising {split}"
        )
    from datasets import DatasetDict

    return DatasetDict(tokenized)


def split_sources(data_args: TextDataArguments, splits) -> dict[str, str]:
    """What each split was read from, for the data report."""
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    if data_args.train_file:
        return {split: Path(files[split]).name for split in splits if files.get(split)}
    return {split: f"{dataset_description(data_args)} [{split}]" for split in splits}


def text_data_report(
    datasets, checks: dict[str, SplitCheck], text_columns: list[str], data_args, target: Target
) -> DataReport:
    """The data report of the splits as used (labels, leakage) on top of the row checks of their sources."""
    from ftpeft.labels.stats import target_statistics

    keys, labels = {}, {}
    for split, dataset in datasets.items():
        columns = dataset.select_columns(text_columns).to_dict()
        keys[split] = [text_key(row) for row in zip(*(columns[c] for c in text_columns))]
        labels[split] = label_rows(dataset["labels"], target)
    held_out = f"held out from train ({data_args.validation_split_percentage}%)"
    report = build_report(checks, keys, labels, data_args.drop_duplicates, held_out)
    statistics = {split: dataset["labels"] for split, dataset in datasets.items()}
    return report.with_targets(target_statistics(statistics, target, data_args.min_threshold_positives))


def load_text_classification_data(data_args: TextDataArguments, seed: int, cache_dir: str | None = None):
    """Raw data -> unusable rows dropped, labels encoded, validation split made, limits applied.

    Returns (datasets, label names, text columns, data report, target); ``--strict_data`` turns a drop or leakage
    into an error here, before any tokenising. The labels' shape (``--problem_type``) is decided here
    (``ftpeft.labels.columns``) and logged."""
    raw = load_raw_text_datasets(data_args, cache_dir)
    text_columns = resolve_text_columns(raw["train"].column_names, data_args)
    label_columns = label_source_columns(data_args, data_args.label_column)
    raw, checks = check_text_rows(
        raw,
        text_columns,
        data_args.label_column if not data_args.label_columns else label_columns,
        data_args.drop_duplicates,
        split_sources(data_args, raw),
    )
    datasets, target = encode_targets(raw, data_args, data_args.label_column, encode_labels)
    logger.info("labels: %s, %d output(s) (%s)", target.short_name, target.num_outputs, target.why)
    datasets = split_and_limit(datasets, data_args, seed, target)
    datasets, target = standardise_on_train(datasets, target)
    report = text_data_report(datasets, checks, text_columns, data_args, target)
    if data_args.strict_data:
        refuse_problems(report)
    return datasets, list(target.names), text_columns, report, target


def token_lengths(datasets, tokenizer, text_columns: list[str]) -> dict[str, list[int]]:
    """Per split, each row's token count as the tokenizer encodes it untruncated (special tokens included, a pair of
    texts as a pair): what --max_seq_length auto and the data report's truncation are read from."""
    lengths = {}
    for split, dataset in datasets.items():
        columns = dataset.select_columns(text_columns).to_dict()
        texts = [["" if t is None else str(t) for t in columns[c]] for c in text_columns]
        lengths[split] = []
        for start in range(0, len(dataset), 1000):
            batch = [column[start : start + 1000] for column in texts]
            encoded = tokenizer(
                *batch, truncation=False, verbose=False, return_attention_mask=False, return_token_type_ids=False
            )  # verbose: no "longer than" warning
            lengths[split] += [len(ids) for ids in encoded["input_ids"]]
    return lengths


@dataclasses.dataclass
class TextData:
    """A text job's data: the tokenizer, the raw and tokenised splits, label names and text columns."""

    tokenizer: Any
    raw: Any  # DatasetDict with encoded labels, before tokenising
    tokenized: Any  # DatasetDict of model inputs + labels
    label_names: list[str]
    text_columns: list[str]
    report: DataReport  # rows read, dropped, duplicated, leaked, token lengths, truncated (data_report.json)
    max_seq_length: int  # what the splits were truncated at (--max_seq_length, auto resolved)
    max_seq_length_why: str  # why that length (resolved_settings.json)
    target: Target  # the labels' shape: problem type, names, scaling (ftpeft.labels)
    windows_why: str = ""  # why long texts are (or are not) read as windows (resolved_settings.json)
    doc_stride: int | None = None  # the windows' overlap in tokens; None: long texts were truncated

    @property
    def windows(self) -> bool:
        """Long texts split into windows (--long_texts; each split has DOCUMENT_COLUMN)."""
        return self.doc_stride is not None


def load_tokenized_data(
    model_args: ModelArguments,
    model_path: str,
    data_args: TextDataArguments,
    training_args,
    encode: Callable[[Any, Any, list[str], int], Any] | None = None,
) -> TextData:
    """Tokenizer + data, tokenised once on the main process first (the other ranks reuse its cache), truncated at
    --max_seq_length (auto: resolved here from the training split's token lengths, ``resolve_max_seq_length``).

    ``encode(raw_splits, tokenizer, text_columns, max_seq_length)`` tokenises; default: ``tokenize``. The tokenizer's
    ``model_max_length`` becomes the length used.
    """
    from ftpeft.text.modeling import load_tokenizer, model_position_limit, resolve_max_seq_length

    tokenizer = load_tokenizer(model_args, model_path)
    with training_args.main_process_first(desc="loading and tokenising"):
        raw, label_names, text_columns, report, target = load_text_classification_data(
            data_args, training_args.seed, model_args.cache_dir
        )
        lengths = token_lengths(raw, tokenizer, text_columns)  # once: auto's choice and the report's truncation
        max_seq_length, why = resolve_max_seq_length(
            data_args.max_seq_length, lengths["train"], model_position_limit(model_args, model_path), model_path
        )
        windows, windows_why, doc_stride = long_text_windows(
            data_args, lengths["train"], max_seq_length, text_columns, encode
        )
        # the run's own tokenizer, loaded above: saved with the model, it cuts where the run did
        # (pipeline("text-classification", model=OUTPUT_DIR, truncation=True))
        tokenizer.model_max_length = max_seq_length
        if windows:
            tokenized = tokenize(
                raw, tokenizer, text_columns, max_seq_length, data_args.preprocessing_num_workers,
                doc_stride=doc_stride,
            )  # fmt: skip
        elif encode is None:
            tokenized = tokenize(raw, tokenizer, text_columns, max_seq_length, data_args.preprocessing_num_workers)
        else:
            tokenized = encode(raw, tokenizer, text_columns, max_seq_length)
    labels = {split: label_rows(dataset["labels"], target) for split, dataset in raw.items()}
    window_counts = {split: len(dataset) for split, dataset in tokenized.items()} if windows else None
    report = report.with_token_lengths(lengths, labels, max_seq_length, window_counts)
    logger.info("data: %s, labels %s", {k: len(v) for k, v in tokenized.items()}, label_names)
    if windows:
        logger.info("long texts: split into windows of %d tokens (%s)", max_seq_length, windows_why)
    return TextData(
        tokenizer, raw, tokenized, label_names, text_columns, report, max_seq_length, why, target, windows_why,
        doc_stride,
    )  # fmt: skip


def long_text_windows(
    data_args: TextDataArguments, train_lengths: list[int], max_seq_length: int, text_columns: list[str], encode
) -> tuple[bool, str, int | None]:
    """(whether the run reads long texts as windows, why, the windows' overlap): ``resolve_long_texts``; a recipe
    with its own encoder (knowledge injection) truncates, and refuses an explicit --long_texts windows."""
    from ftpeft.text.args import parse_max_seq_length
    from ftpeft.text.windows import resolve_doc_stride, resolve_long_texts

    length_given = parse_max_seq_length(data_args.max_seq_length) is not None
    windows, why = resolve_long_texts(
        data_args.long_texts, length_given, train_lengths, max_seq_length, len(text_columns)
    )
    if windows and encode is not None:
        if data_args.long_texts == "windows":
            raise FtpeftError("--long_texts windows: this recipe's inputs are not split into windows; drop the flag.")
        return False, f"{why}; this recipe truncates them", None
    return windows, why, resolve_doc_stride(data_args.doc_stride, max_seq_length) if windows else None
