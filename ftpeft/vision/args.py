"""Arguments of the image recipes: the timm model and the image data."""

from __future__ import annotations

import dataclasses

from ftpeft.core.config import SplitArguments
from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, FRACTION, NON_NEGATIVE, PROBABILITY, SHARE, between, check_fields


@dataclasses.dataclass
class ImageModelArguments:
    model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Any timm model name (resnet50, convnext_tiny, ...), 'hf-hub:org/name' or 'local-dir:PATH'. "
            "Default: resnet50; with no data flag (offline demo): tf_efficientnet_lite0 with packaged ImageNet weights."
        },
    )
    pretrained: bool = dataclasses.field(
        default=False, metadata={"help": "Load the model's Hub weights (needs the Hub)."}
    )
    pretrained_file: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Local weights (.safetensors/.pth) for --model_name_or_path; implies --pretrained."},
    )
    drop_rate: float = dataclasses.field(
        default=0.0, metadata={"help": "Dropout before the classifier.", "range": FRACTION}
    )
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "Where Hub downloads are cached."})

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass
class ImageDataArguments(SplitArguments):
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
    strict_images: bool = dataclasses.field(
        default=False,
        metadata={"help": "Fail on unreadable images instead of skipping them (listed in skipped_images.txt)."},
    )
    image_size: int | None = dataclasses.field(
        default=None, metadata={"help": "Input size in pixels. Default: the model's pretrained config.", "range": COUNT}
    )
    crop_pct: float | None = dataclasses.field(
        default=None,
        metadata={"help": "Eval centre-crop fraction (1.0 = no crop). Default: the model's.", "range": SHARE},
    )
    hflip: float = dataclasses.field(
        default=0.5, metadata={"help": "Training: horizontal-flip probability (0 for digits).", "range": PROBABILITY}
    )
    rotation_degrees: float = dataclasses.field(
        default=10.0, metadata={"help": "Training: random rotation range (+/-).", "range": between(0, 180)}
    )
    crop_scale_min: float = dataclasses.field(
        default=0.08, metadata={"help": "Training: smallest random-resized-crop area fraction.", "range": SHARE}
    )
    color_jitter: float = dataclasses.field(
        default=0.4, metadata={"help": "Training: colour-jitter strength (0 = off).", "range": NON_NEGATIVE}
    )
    cache_augmented_views: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "With --cache_frozen: cache N views of each training image through the training transform and "
            "draw one at random each time it is used (N x the caching time and disk). Default: one view through "
            "the evaluation transform (no augmentation).",
            "range": COUNT,
        },
    )
    demo_train_samples: int = dataclasses.field(
        default=4000,
        metadata={"help": "Offline MNIST demo: training digits (validation is split from them).", "range": COUNT},
    )
    demo_test_samples: int = dataclasses.field(
        default=1000,
        metadata={"help": "Offline MNIST demo: fixed held-out test digits (independent of --seed).", "range": COUNT},
    )

    def __post_init__(self):
        check_fields(self)
        if self.labels_csv and not self.image_dir:
            raise FtpeftError("--labels_csv needs --image_dir (the folder holding <id><ext> files).")
        if self.dataset_name and self.image_dir:
            raise FtpeftError("pass either --dataset_name or --image_dir, not both.")
        if self.demo_train_samples + self.demo_test_samples > 5000:
            raise FtpeftError("--demo_train_samples + --demo_test_samples exceed the 5,000 demo MNIST digits.")

    @property
    def is_demo(self) -> bool:
        return not (self.image_dir or self.dataset_name)
