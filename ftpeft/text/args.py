"""Arguments of the text recipes: the model to load and the data to read."""

from __future__ import annotations

import dataclasses
import re

from ftpeft.core.config import SplitArguments
from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, check_fields, check_value
from ftpeft.labels.args import LabelArguments
from ftpeft.text.windows import doc_stride_field, long_texts_field

AUTO_SEQ_LENGTH = "auto"  # --max_seq_length auto: from the training texts (text.modeling.resolve_max_seq_length)


def parse_max_seq_length(value: str | int) -> int | None:
    """``--max_seq_length`` as a token count; None for auto. Anything else is refused naming the flag."""
    text = str(value).strip()
    if text.lower() == AUTO_SEQ_LENGTH:
        return None
    if not re.fullmatch(r"-?[0-9]+", text):
        raise FtpeftError(f"--max_seq_length must be auto or a number >= 1, got {value!r}.")
    length = int(text)
    check_value("max_seq_length", length, COUNT)
    return length


@dataclasses.dataclass
class ModelArguments:
    model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Hub id or local folder of the pretrained model. Default: the recipe's offline demo model."},
    )
    tokenizer_name: str | None = dataclasses.field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    model_revision: str = dataclasses.field(default="main", metadata={"help": "Hub branch, tag or commit."})
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "Where Hub downloads are cached."})
    trust_remote_code: bool = dataclasses.field(
        default=False, metadata={"help": "Run modelling code shipped with the checkpoint. Off unless you ask."}
    )
    pooling: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "bert_cls: how the classifier reads the encoder. 'cls': [CLS] + pooler (the stock model; "
            "pipeline() loads it as is); 'mean': masked mean of the tokens (ftpeft's own model class, saved with "
            "its code: pipeline(..., trust_remote_code=True) loads it without ftpeft); 'auto': mean for a "
            "mean-pooled sentence-transformers checkpoint when the encoder is frozen (--unfreeze_last 0), else "
            "cls. knowledge_cls always reads [CLS] + pooler.",
            "choices": ("auto", "cls", "mean"),
        },
    )

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass
class TextDataArguments(SplitArguments, LabelArguments):
    dataset_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub dataset id (e.g. glue). Default: the built-in offline demo tweets."}
    )
    dataset_config_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub dataset config (e.g. sst2)."}
    )
    train_file: str | None = dataclasses.field(
        default=None, metadata={"help": "Local csv/json/jsonl/parquet training file."}
    )
    validation_file: str | None = dataclasses.field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = dataclasses.field(default=None, metadata={"help": "Local test file."})
    text_columns: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "One or two text columns (a pair is encoded as one sequence pair). Default: guessed."},
    )
    label_column: str = dataclasses.field(
        default="label",
        metadata={
            "help": "Column holding the labels: a class (string or int), a label set (a list, or a string split at "
            "--label_separator) or a number (regression)."
        },
    )
    # Whether the user fixed the length: only a number is ever theirs (no recipe defaults to one). A number longer
    # than the model's positions is refused; auto's choice is clipped to them, with a note.
    max_seq_length: str = dataclasses.field(
        default=AUTO_SEQ_LENGTH,
        metadata={
            "help": "Truncate tokenised inputs to this many tokens. 'auto': the 99th percentile of the training "
            "split's token lengths, rounded up to a multiple of 8 and clipped to the model's positions (what it chose "
            "and why: resolved_settings.json). Allowed: auto, or a number >= 1."
        },
    )
    # Windows only where the text is longer than the model (auto) or the user asks: a length the user fixed
    # truncates as it always did (ftpeft.text.windows.resolve_long_texts).
    long_texts: str = long_texts_field(
        "split each text into windows of --max_seq_length tokens overlapping by --doc_stride, train on every window "
        "with the text's label, and score a text by the mean of its windows' logits (validation, early stopping, test, "
        "ftpeft predict, the ONNX export)."
    )
    doc_stride: int | None = doc_stride_field()
    demo_classes: list[str] = dataclasses.field(
        default_factory=lambda: ["negative", "positive"],
        metadata={"help": "Classes of the offline demo tweets to keep (negative, neutral, positive)."},
    )
    demo_train_samples: int = dataclasses.field(
        default=4000,
        metadata={
            "help": "Offline demo only: training tweets to use (the rest of the corpus is unused).",
            "range": COUNT,
        },
    )
    demo_test_samples: int = dataclasses.field(
        default=1000,
        metadata={
            "help": "Offline demo only: held-out test tweets (a fixed split, independent of --seed).",
            "range": COUNT,
        },
    )
    preprocessing_num_workers: int | None = dataclasses.field(
        default=None, metadata={"help": "Processes for tokenisation.", "range": COUNT}
    )

    def __post_init__(self):
        LabelArguments.__post_init__(self)  # checks every field's rule, then the label-shape flags
        parse_max_seq_length(self.max_seq_length)  # refuses anything but auto or a number >= 1, before any work
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise FtpeftError(f"--text_columns takes one or two column names, got {self.text_columns}.")
        if self.validation_file and not self.train_file:
            raise FtpeftError("--validation_file was given without --train_file; pass both (or neither).")
