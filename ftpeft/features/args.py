"""Argument dataclasses of the image and frozen-feature recipes (image_cls, extract_features, train_head)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, NON_NEGATIVE, POSITIVE, SEED, check_fields
from ftpeft.labels.args import LabelArguments, threshold_value
from ftpeft.labels.target import problem_type_name
from ftpeft.text.args import AUTO_SEQ_LENGTH, TextDataArguments, parse_max_seq_length
from ftpeft.text.windows import doc_stride_field, long_texts_field
from ftpeft.vision.args import ImageDataArguments


@dataclasses.dataclass
class FeatureArguments:
    model_name_or_path: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "One or more backbones (features are concatenated): timm names for --modality image, "
            "transformers encoders for text. Default: packaged EfficientNet-Lite0 / MiniLM."
        },
    )
    modality: str = dataclasses.field(
        default="image",
        metadata={"help": "image (timm backbones) or text (transformers).", "choices": ("image", "text")},
    )
    pretrained: bool = dataclasses.field(default=False, metadata={"help": "image: load Hub weights of each backbone."})
    pretrained_file: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "image: a local weights file per backbone (same order)."}
    )
    layer: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Where to read features: a module name (forward hook), or for text a hidden-state index "
            "(-1 = last). Default: pre-logits (image) / last hidden state (text)."
        },
    )
    pooling: str = dataclasses.field(
        default="mean",
        metadata={
            "help": "text, or token outputs at --layer: 'cls' (first token) or 'mean' (masked mean).",
            "choices": ("cls", "mean"),
        },
    )
    feature_dir: str = dataclasses.field(
        default="outputs/features",
        metadata={
            "help": "Cache root; each distinct extraction gets FEATURE_DIR/<key>/ (identical settings reuse it)."
        },
    )
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Images/texts per forward pass.", "range": COUNT})
    max_seq_length: str = dataclasses.field(
        default=AUTO_SEQ_LENGTH,
        metadata={
            "help": "text: truncate to this many tokens. 'auto': the 99th percentile of the training split's token "
            "lengths under each backbone's tokenizer, rounded up to a multiple of 8 and clipped to its positions (as "
            "bert_cls; recorded in metadata.json). Allowed: auto, or a number >= 1."
        },
    )
    long_texts: str = long_texts_field(
        "a text's features are the mean of its windows' (--max_seq_length tokens overlapping by --doc_stride; "
        "recorded in metadata.json).",
        scope="text: ",
    )
    doc_stride: int | None = doc_stride_field(scope="text, ")
    text_columns: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "text: one or two text columns."}
    )
    train_file: str | None = dataclasses.field(default=None, metadata={"help": "text: local training file."})
    validation_file: str | None = dataclasses.field(default=None, metadata={"help": "text: local validation file."})
    test_file: str | None = dataclasses.field(default=None, metadata={"help": "text: local test file."})
    seed: int = dataclasses.field(default=42, metadata={"help": "Seed of the validation split.", "range": SEED})

    def __post_init__(self):
        check_fields(self)
        parse_max_seq_length(self.max_seq_length)  # auto or a number >= 1, refused before any work
        if self.pretrained_file and len(self.pretrained_file) != len(self.model_name_or_path or [None]):
            raise FtpeftError("--pretrained_file takes one file per --model_name_or_path backbone, in the same order.")

    def text_data_arguments(self, image_data: ImageDataArguments) -> TextDataArguments:
        """The text loader's arguments: shared fields (the label-shape flags too) from the data arguments, text-only
        ones from here."""
        label_flags = {field.name: getattr(image_data, field.name) for field in dataclasses.fields(LabelArguments)}
        return TextDataArguments(
            **label_flags,
            dataset_name=image_data.dataset_name,
            dataset_config_name=image_data.dataset_config_name,
            train_file=self.train_file,
            validation_file=self.validation_file,
            test_file=self.test_file,
            text_columns=self.text_columns,
            label_column=image_data.label_column or "label",
            validation_split_percentage=image_data.validation_split_percentage,
            max_train_samples=image_data.max_train_samples,
            max_eval_samples=image_data.max_eval_samples,
            max_test_samples=image_data.max_test_samples,
            max_seq_length=self.max_seq_length,
            long_texts=self.long_texts,
            doc_stride=self.doc_stride,
            demo_train_samples=image_data.demo_train_samples,
            demo_test_samples=image_data.demo_test_samples,
        )


HEAD_TYPES = ("logreg", "linear_svm", "random_forest", "hist_gb", "ridge", "linear", "mlp")


def label_flag(name: str):
    """The field of LabelArguments' flag ``name`` (its one help text), for train_head, which decides thresholds and
    weighs the loss but reads no label column."""
    source = {field.name: field for field in dataclasses.fields(LabelArguments)}[name]
    return dataclasses.field(default=source.default, metadata=source.metadata)


@dataclasses.dataclass
class HeadArguments:
    features_dir: str = dataclasses.field(
        default="outputs/features",
        metadata={"help": "A feature folder written by extract_features (FEATURE_DIR/<key>, or the root: its latest)."},
    )
    head: str = dataclasses.field(
        default="logreg",
        metadata={
            "help": "The head: logreg, linear_svm, random_forest, hist_gb (classes; one-vs-rest per label for label "
            "sets), ridge (numbers), linear or mlp (torch, every problem type).",
            "choices": HEAD_TYPES,
        },
    )
    problem_type: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "auto: the features' own (extract_features decided it, metadata.json's target); single_label, "
            "multi_label or regression must match it (to change it, extract again with that --problem_type)."
        },
    )
    output_dir: str = dataclasses.field(
        default="outputs/train_head", metadata={"help": "Where the head and reports go."}
    )
    regularization_c: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "logreg/linear_svm: inverse L2 strength C. Default: chosen on the validation split from "
            "0.01-1 (logreg) or 0.001-0.1 (linear_svm); without a validation split 1.0 logreg, 0.01 linear_svm. "
            "Label sets choose by validation mAP.",
            "range": POSITIVE,
        },
    )
    regularization_alpha: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "ridge: L2 strength alpha. Default: chosen on the validation split's RMSE from 0.1-10000 (1.0 "
            "without a validation split).",
            "range": POSITIVE,
        },
    )
    threshold: str = label_flag("threshold")
    min_threshold_positives: int = label_flag("min_threshold_positives")
    pos_weight: str = label_flag("pos_weight")
    max_iter: int = dataclasses.field(
        default=2000, metadata={"help": "logreg/linear_svm/hist_gb: iteration limit.", "range": COUNT}
    )
    n_estimators: int = dataclasses.field(
        default=300, metadata={"help": "random_forest: number of trees.", "range": COUNT}
    )
    hidden_size: int = dataclasses.field(default=512, metadata={"help": "mlp: hidden width.", "range": COUNT})
    epochs: int = dataclasses.field(
        default=30, metadata={"help": "linear/mlp: passes over the features.", "range": COUNT}
    )
    learning_rate: float = dataclasses.field(
        default=1e-3, metadata={"help": "linear/mlp: AdamW learning rate.", "range": POSITIVE}
    )
    weight_decay: float = dataclasses.field(
        default=1e-4, metadata={"help": "linear/mlp: AdamW weight decay.", "range": NON_NEGATIVE}
    )
    batch_size: int = dataclasses.field(default=256, metadata={"help": "linear/mlp: mini-batch size.", "range": COUNT})
    seed: int = dataclasses.field(default=42, metadata={"help": "Random seed.", "range": SEED})

    def __post_init__(self):
        check_fields(self)
        self.problem_type = problem_type_name(self.problem_type)
        threshold_value(self.threshold)
        if self.pos_weight not in ("balanced", "none") and not Path(self.pos_weight).is_file():
            raise FtpeftError(f"--pos_weight {self.pos_weight}: not 'balanced', 'none' or an existing JSON file.")
        if self.pos_weight != "none" and self.head not in ("linear", "mlp"):
            raise FtpeftError(
                f"--pos_weight weighs the BCE loss of the torch heads (linear, mlp); --head {self.head} has none."
            )

    def threshold_rule(self):
        """--threshold and --min_threshold_positives, for the final evaluation."""
        from ftpeft.labels.evaluation import ThresholdRule

        return ThresholdRule(threshold_value(self.threshold), self.min_threshold_positives)
