"""Arguments of the image recipes: the timm model and the image data."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ftpeft.core.config import SplitArguments
from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, FRACTION, NON_NEGATIVE, PROBABILITY, SHARE, between, check_fields
from ftpeft.labels.args import LabelArguments

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")  # timm's str_to_interp_mode names

# The demo config: the offline MNIST demo's image settings (no --image_dir/--labels_csv/--dataset_name, as in the
# bare command), those its LR defaults were chosen with (benchmarks/results/partial_tuning_image.md). They apply
# only to the demo data and only where the flag is not given; any other data gets the model's pretrained_cfg and
# timm's standard augmentation.
DEMO_IMAGE_DEFAULTS: dict[str, Any] = {
    "image_size": 64,  # MNIST digits are 28 px; 64 px keeps CPU epochs short
    "crop_pct": 1.0,  # digits touch the border: no centre crop
    "hflip": 0.0,  # a flipped digit is another digit
    "crop_scale_min": 0.8,  # milder than timm's 0.08: the digit stays in the crop
    "rotation_degrees": 10.0,  # not in timm's standard augmentation; the demo has always trained with it
}


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
class ImageDataArguments(SplitArguments, LabelArguments):
    image_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Folder of images: one sub-folder per class, or (with --labels_csv) the image files."},
    )
    labels_csv: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "CSV of image ids and labels (Kaggle layout: id,breed + train/<id>.jpg). A label set per image: "
            "a tag column with --label_separator (' ' for Kaggle 'planet' tags) or one 0/1 column per label "
            "(--label_columns); numbers: numeric column(s) (regression)."
        },
    )
    id_column: str = dataclasses.field(default="id", metadata={"help": "--labels_csv column with the image id."})
    label_column: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Label column (CSV or Hub dataset): a class, a label set (a Hub list column, or a string split "
            "at --label_separator) or a number. Default: 'label', or the CSV's only non-id column."
        },
    )
    image_ext: str = dataclasses.field(default=".jpg", metadata={"help": "--labels_csv: file = IMAGE_DIR/<id><ext>."})
    dataset_name: str | None = dataclasses.field(default=None, metadata={"help": "Hub dataset with an image column."})
    dataset_config_name: str | None = dataclasses.field(default=None, metadata={"help": "Hub dataset config."})
    image_column: str = dataclasses.field(default="image", metadata={"help": "--dataset_name: the image column."})
    strict_images: bool = dataclasses.field(
        default=False,
        metadata={"help": "Fail on unreadable images instead of skipping them (listed in skipped_images.txt)."},
    )
    # The image pipeline. None = not given: the model's pretrained_cfg (input size, crop, interpolation, mean/std)
    # and timm's standard training augmentation (create_transform(is_training=True)), or, for the offline MNIST
    # demo, DEMO_IMAGE_DEFAULTS below. A value given here (flag or --config) always wins; resolved_settings.json
    # records each value used and where it came from (ftpeft.vision.data.resolve_image_settings).
    image_size: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Input size in pixels. Default: the model's pretrained_cfg (demo: 64).", "range": COUNT},
    )
    crop_pct: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Eval centre-crop fraction (1.0 = no crop). Default: the model's pretrained_cfg (demo: 1.0).",
            "range": SHARE,
        },
    )
    interpolation: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Resize interpolation. Default: the model's pretrained_cfg.", "choices": INTERPOLATIONS},
    )
    mean: list[float] | None = dataclasses.field(
        default=None,
        metadata={"help": "Normalisation mean, 1 or 3 values (0-1 scale). Default: the model's pretrained_cfg."},
    )
    std: list[float] | None = dataclasses.field(
        default=None,
        metadata={"help": "Normalisation std, 1 or 3 values > 0 (0-1 scale). Default: the model's pretrained_cfg."},
    )
    hflip: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Training: horizontal-flip probability. Default: timm's (0.5; demo: 0, a flipped digit is "
            "another digit).",
            "range": PROBABILITY,
        },
    )
    rotation_degrees: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Training: random rotation range (+/-). Default: none, as in timm's standard augmentation "
            "(demo: 10).",
            "range": between(0, 180),
        },
    )
    crop_scale_min: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Training: smallest random-resized-crop area fraction. Default: timm's (0.08; demo: 0.8).",
            "range": SHARE,
        },
    )
    color_jitter: float | None = dataclasses.field(
        default=None,
        metadata={"help": "Training: colour-jitter strength (0 = off). Default: timm's (0.4).", "range": NON_NEGATIVE},
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
        LabelArguments.__post_init__(self)  # checks every field's rule, then the label-shape flags
        if self.labels_csv and not self.image_dir:
            raise FtpeftError("--labels_csv needs --image_dir (the folder holding <id><ext> files).")
        if self.dataset_name and self.image_dir:
            raise FtpeftError("pass either --dataset_name or --image_dir, not both.")
        for flag in ("mean", "std"):
            values = getattr(self, flag)
            if values is not None and (len(values) not in (1, 3) or not all(math.isfinite(v) for v in values)):
                raise FtpeftError(f"--{flag} takes 1 or 3 finite numbers (one per RGB channel), got {values}.")
        if self.std is not None and min(self.std) <= 0:
            raise FtpeftError(f"--std must be > 0, got {self.std}.")
        if self.demo_train_samples + self.demo_test_samples > 5000:
            raise FtpeftError("--demo_train_samples + --demo_test_samples exceed the 5,000 demo MNIST digits.")
        if self.image_dir and not self.labels_csv:
            self.refuse_label_shapes(f"--image_dir {self.image_dir} (class folders)")

    def refuse_label_shapes(self, source: str) -> None:
        """Class folders and the demo digits give one class per image: a flag asking for label sets or numbers is
        refused, naming it (extract_features reads text with these flags and no image source, so the demo's check
        waits until the demo is loaded)."""
        shaped = {
            f"--problem_type {self.problem_type}": self.problem_type in ("multi_label", "regression"),
            "--label_columns": bool(self.label_columns),
            "--label_separator": bool(self.label_separator),
        }
        given = [flag for flag, asked in shaped.items() if asked]
        if given:
            raise FtpeftError(
                f"{given[0]}: {source} give one class per image; label sets and numbers come from a --labels_csv "
                "(with --image_dir) or a --dataset_name."
            )

    @property
    def is_demo(self) -> bool:
        return not (self.image_dir or self.dataset_name)

    def image_setting(self, name: str) -> tuple[Any, str] | None:
        """(value, source) of an image setting the run fixes itself: given ("flag": command line or --config),
        else the demo's ("demo config", offline demo only); None: the model's or timm's value applies."""
        if getattr(self, name) is not None:
            return getattr(self, name), "flag"
        if self.is_demo and name in DEMO_IMAGE_DEFAULTS:
            return DEMO_IMAGE_DEFAULTS[name], "demo config"
        return None
