"""timm image classification with HF Trainer: head only, the last k stages, or full fine-tuning.

    python recipes/image_cls.py                                  # offline demo: EfficientNet-Lite0 on MNIST
    python recipes/image_cls.py --unfreeze-last 0                # same, head only (frozen backbone)
    accelerate launch recipes/image_cls.py --config recipes/configs/image_cls/dog_breed.yaml
    python recipes/image_cls.py --labels_csv train_v2.csv --image_dir train-jpg --image_ext .jpg \
        --id_column image_name --label_column tags --label_separator ' '   # Kaggle "planet": a tag set per image
    python recipes/image_cls.py --help

Features (flag):
- any timm model (--model_name_or_path, default resnet50), Hub weights (--pretrained) or a local file
  (--pretrained_file); a new head sized to the labels. With no data flag the default model is
  tf_efficientnet_lite0 with the packaged ImageNet weights (converted once to timm names, cached)
- head only (--unfreeze_last 0), the last k stages (--unfreeze_last k), full fine-tuning (all), through
  timm's group_matcher; frozen BatchNorm layers stay in eval mode (their running statistics never move)
- head / backbone learning rates: --head_lr for the new head, --learning_rate for the backbone,
  layer-wise decay (--layer_decay)
- staged unfreezing in one run: LP-FT (--lp_ft) or gradual unfreezing of the stages (--gradual_unfreeze)
- a class-weighted loss for imbalanced classes (--class_weights balanced|none|FILE)
- label sets and numbers (--problem_type auto|single_label|multi_label|regression; auto reads the columns): a
  Kaggle tag column (--label_separator ' ', as in "planet"), one 0/1 column per label or numeric columns
  (--label_columns), a Hub list or float column. Label sets train with BCE (--pos_weight balanced|none|FILE) and
  per-label thresholds chosen on validation (--threshold auto|FLOAT); numbers with MSE on standardised targets,
  the scaling folded back into the saved head. Class folders give one class per image
- frozen-stage cache (--cache_frozen, with --unfreeze_last k): the frozen stages run once per image, their
  output is cached on disk (--activation_cache_dir, --cache_dtype) and only the top k stages + head train
  from it; training images then go through the evaluation transform (no augmentation), or
  --cache_augmented_views N caches N augmented views of each. The saved model is the complete timm model
- data: class folders (--image_dir), Kaggle CSV (--labels_csv --image_dir --id_column --label_column
  --image_ext), Hub (--dataset_name --image_column), or offline MNIST digits (default)
- unreadable images are found up front, skipped and listed in skipped_images.txt (--strict_images: fail)
- a data-quality report per split: rows read, dropped (unreadable image, no label), duplicate images
  (--drop_duplicates drops them), images also in train (leakage), labels; --strict_data fails on any drop
  or leakage
- the model's own input pipeline: input size, crop, interpolation and mean/std from its timm pretrained_cfg,
  timm's standard augmentation (random-resized crop, flip, colour jitter); a flag overrides any of them
  (--image_size, --crop_pct, --interpolation, --mean, --std, --hflip, --crop_scale_min, --color_jitter,
  --rotation_degrees). The demo digits use the demo config (64 px, no crop, no flip: DEMO_IMAGE_DEFAULTS);
  resolved_settings.json records each value and its source
- trains until validation stops improving (--num_train_epochs auto, the default) and keeps the best checkpoint
- every TrainingArguments flag (--num_train_epochs N, --bf16, --push_to_hub, --report_to, ...)

Writes to --output_dir: model.safetensors + config.json (timm format, with the evaluation transform's data
config and, for label sets and numbers, HF's problem_type and the label thresholds: reload with
timm.create_model("local-dir:OUTPUT_DIR", pretrained=True)), target.json (+ thresholds.json for label sets),
run_args.yaml, resolved_settings.json, freeze_report.json, data_report.json, metrics.json, confusion_matrix.png
(numbers: predictions_scatter.png), classification_report.md and a model card (README.md).
"""

from __future__ import annotations

from ftpeft.core.config import RunArguments, parse_args
from ftpeft.core.errors import run_cli
from ftpeft.tuning.args import TuningArguments
from ftpeft.vision.args import ImageDataArguments, ImageModelArguments
from ftpeft.vision.job import DEFAULTS  # the bare command's defaults (the offline MNIST demo on 2 CPU cores)


def parse(argv: list[str] | None = None):
    from transformers import TrainingArguments

    types = (ImageModelArguments, ImageDataArguments, TuningArguments, RunArguments, TrainingArguments)
    return parse_args(types, argv, DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    # imported after parsing: --help and bad flags load no model or data code
    from ftpeft.vision.job import train_image_classifier

    return train_image_classifier(*args, config=args.resolved)


if __name__ == "__main__":
    run_cli(main)()
