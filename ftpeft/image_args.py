"""Argument dataclasses of the image and frozen-feature recipes (image_cls, extract_features, train_head)."""

from __future__ import annotations

import dataclasses

from .args import TextDataArguments
from .errors import FtpeftError


@dataclasses.dataclass
class ImageModelArguments:
    model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Any timm model name (resnet50, convnext_tiny, ...), 'hf-hub:org/name' or 'local-dir:PATH'. "
            "Default: resnet50; with no data flag (offline demo): tf_efficientnet_lite0 with packaged ImageNet weights."
        },
    )
    pretrained: bool = dataclasses.field(default=False, metadata={"help": "Load the model's Hub weights (needs the Hub)."})
    pretrained_file: str | None = dataclasses.field(
        default=None, metadata={"help": "Local weights (.safetensors/.pth) for --model_name_or_path; implies --pretrained."}
    )
    drop_rate: float = dataclasses.field(default=0.0, metadata={"help": "Dropout before the classifier."})
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "Where Hub downloads are cached."})

    def __post_init__(self):
        if not 0 <= self.drop_rate < 1:
            raise FtpeftError(f"--drop_rate must be in [0, 1), got {self.drop_rate}.")


@dataclasses.dataclass
class ImageDataArguments:
    image_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Folder of images: one sub-folder per class, or (with --labels_csv) the image files."},
    )
    labels_csv: str | None = dataclasses.field(
        default=None, metadata={"help": "CSV of image ids and labels (Kaggle layout: id,breed + train/<id>.jpg)."}
    )
    id_column: str = dataclasses.field(default="id", metadata={"help": "--labels_csv column with the image id."})
    label_column: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Label column (CSV or Hub dataset). Default: 'label', or the CSV's only non-id column."},
    )
    image_ext: str = dataclasses.field(default=".jpg", metadata={"help": "--labels_csv: file = IMAGE_DIR/<id><ext>."})
    dataset_name: str | None = dataclasses.field(default=None, metadata={"help": "Hub dataset with an image column."})
    dataset_config_name: str | None = dataclasses.field(default=None, metadata={"help": "Hub dataset config."})
    image_column: str = dataclasses.field(default="image", metadata={"help": "--dataset_name: the image column."})
    validation_split_percentage: int = dataclasses.field(
        default=10, metadata={"help": "Stratified, seeded %% of train held out for validation when none is given."}
    )
    max_train_samples: int | None = dataclasses.field(default=None, metadata={"help": "Keep at most this many training images."})
    max_eval_samples: int | None = dataclasses.field(default=None, metadata={"help": "Keep at most this many validation images."})
    max_test_samples: int | None = dataclasses.field(default=None, metadata={"help": "Keep at most this many test images."})
    strict_images: bool = dataclasses.field(
        default=False, metadata={"help": "Fail on unreadable images instead of skipping them (listed in skipped_images.txt)."}
    )
    image_size: int | None = dataclasses.field(
        default=None, metadata={"help": "Input size in pixels. Default: the model's pretrained config."}
    )
    crop_pct: float | None = dataclasses.field(
        default=None, metadata={"help": "Eval centre-crop fraction (1.0 = no crop). Default: the model's."}
    )
    hflip: float = dataclasses.field(default=0.5, metadata={"help": "Training: horizontal-flip probability (0 for digits)."})
    rotation_degrees: float = dataclasses.field(default=10.0, metadata={"help": "Training: random rotation range (+/-)."})
    crop_scale_min: float = dataclasses.field(
        default=0.08, metadata={"help": "Training: smallest random-resized-crop area fraction."}
    )
    color_jitter: float = dataclasses.field(default=0.4, metadata={"help": "Training: colour-jitter strength (0 = off)."})
    demo_train_samples: int = dataclasses.field(
        default=4000, metadata={"help": "Offline MNIST demo: training digits (validation is split from them)."}
    )
    demo_test_samples: int = dataclasses.field(
        default=1000, metadata={"help": "Offline MNIST demo: fixed held-out test digits (independent of --seed)."}
    )

    def __post_init__(self):
        if not 0 < self.validation_split_percentage < 100:
            raise FtpeftError(
                f"--validation_split_percentage must be between 1 and 99, got {self.validation_split_percentage}."
            )
        if self.labels_csv and not self.image_dir:
            raise FtpeftError("--labels_csv needs --image_dir (the folder holding <id><ext> files).")
        if self.dataset_name and self.image_dir:
            raise FtpeftError("pass either --dataset_name or --image_dir, not both.")
        if self.demo_train_samples + self.demo_test_samples > 5000:
            raise FtpeftError("--demo_train_samples + --demo_test_samples exceed the 5,000 demo MNIST digits.")
        for flag in ("max_train_samples", "max_eval_samples", "max_test_samples", "image_size"):
            value = getattr(self, flag)
            if value is not None and value <= 0:
                raise FtpeftError(f"--{flag} must be positive, got {value}.")
        if not 0 < self.crop_scale_min <= 1:
            raise FtpeftError(f"--crop_scale_min must be in (0, 1], got {self.crop_scale_min}.")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise FtpeftError(f"--crop_pct must be in (0, 1], got {self.crop_pct}.")

    @property
    def is_demo(self) -> bool:
        return not (self.image_dir or self.dataset_name)


@dataclasses.dataclass
class FeatureArguments:
    model_name_or_path: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "One or more backbones (features are concatenated): timm names for --modality image, "
            "transformers encoders for text. Default: packaged EfficientNet-Lite0 / MiniLM."
        },
    )
    modality: str = dataclasses.field(default="image", metadata={"help": "image (timm backbones) or text (transformers)."})
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
        default="mean", metadata={"help": "text, or token outputs at --layer: 'cls' (first token) or 'mean' (masked mean)."}
    )
    feature_dir: str = dataclasses.field(
        default="outputs/features",
        metadata={"help": "Cache root; each distinct extraction gets FEATURE_DIR/<key>/ (identical settings reuse it)."},
    )
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Images/texts per forward pass."})
    max_seq_length: int = dataclasses.field(default=128, metadata={"help": "text: truncate to this many tokens."})
    text_columns: list[str] | None = dataclasses.field(default=None, metadata={"help": "text: one or two text columns."})
    train_file: str | None = dataclasses.field(default=None, metadata={"help": "text: local training file."})
    validation_file: str | None = dataclasses.field(default=None, metadata={"help": "text: local validation file."})
    test_file: str | None = dataclasses.field(default=None, metadata={"help": "text: local test file."})
    seed: int = dataclasses.field(default=42, metadata={"help": "Seed of the validation split."})

    def __post_init__(self):
        if self.modality not in ("image", "text"):
            raise FtpeftError(f"--modality must be 'image' or 'text', got {self.modality!r}.")
        if self.pooling not in ("cls", "mean"):
            raise FtpeftError(f"--pooling must be 'cls' or 'mean', got {self.pooling!r}.")
        if self.batch_size <= 0:
            raise FtpeftError(f"--batch_size must be positive, got {self.batch_size}.")
        if self.pretrained_file and len(self.pretrained_file) != len(self.model_name_or_path or [None]):
            raise FtpeftError("--pretrained_file takes one file per --model_name_or_path backbone, in the same order.")

    def text_data_arguments(self, image_data: ImageDataArguments) -> TextDataArguments:
        """The text loader's arguments: shared fields from the data arguments, text-only ones from here."""
        return TextDataArguments(
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
            demo_train_samples=image_data.demo_train_samples,
            demo_test_samples=image_data.demo_test_samples,
        )


HEAD_TYPES = ("logreg", "linear_svm", "random_forest", "hist_gb", "linear", "mlp")


@dataclasses.dataclass
class HeadArguments:
    features_dir: str = dataclasses.field(
        default="outputs/features",
        metadata={"help": "A feature folder written by extract_features (FEATURE_DIR/<key>, or the root: its latest)."},
    )
    head: str = dataclasses.field(default="logreg", metadata={"help": f"Classifier: {', '.join(HEAD_TYPES)}."})
    output_dir: str = dataclasses.field(default="outputs/train_head", metadata={"help": "Where the head and reports go."})
    regularization_c: float | None = dataclasses.field(
        default=None, metadata={"help": "logreg/linear_svm: inverse L2 strength C. Default: 1.0 logreg, 0.01 linear_svm."}
    )
    max_iter: int = dataclasses.field(default=2000, metadata={"help": "logreg/linear_svm/hist_gb: iteration limit."})
    n_estimators: int = dataclasses.field(default=300, metadata={"help": "random_forest: number of trees."})
    hidden_size: int = dataclasses.field(default=512, metadata={"help": "mlp: hidden width."})
    epochs: int = dataclasses.field(default=30, metadata={"help": "linear/mlp: passes over the features."})
    learning_rate: float = dataclasses.field(default=1e-3, metadata={"help": "linear/mlp: AdamW learning rate."})
    weight_decay: float = dataclasses.field(default=1e-4, metadata={"help": "linear/mlp: AdamW weight decay."})
    batch_size: int = dataclasses.field(default=256, metadata={"help": "linear/mlp: mini-batch size."})
    seed: int = dataclasses.field(default=42, metadata={"help": "Random seed."})

    def __post_init__(self):
        if self.head not in HEAD_TYPES:
            raise FtpeftError(f"--head must be one of {', '.join(HEAD_TYPES)}, got {self.head!r}.")
        for flag in ("regularization_c", "max_iter", "n_estimators", "hidden_size", "epochs", "learning_rate", "batch_size"):
            if getattr(self, flag) is not None and getattr(self, flag) <= 0:
                raise FtpeftError(f"--{flag} must be positive, got {getattr(self, flag)}.")
