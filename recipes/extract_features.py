"""Run frozen backbones once over a dataset and cache the features (then train cheap heads: train_head.py).

    python recipes/extract_features.py                          # offline demo: EfficientNet-Lite0 on MNIST
    python recipes/extract_features.py --model_name_or_path resnet50 convnext_tiny --pretrained \\
        --labels_csv labels.csv --image_dir train --image_size 224   # two backbones, concatenated
    python recipes/extract_features.py --modality text --pooling cls  # packaged MiniLM on the demo tweets
    python recipes/extract_features.py --modality text --train_file train.csv --label_column tags \
        --label_separator ,                                    # label sets: multi-hot labels
    python recipes/extract_features.py --modality text --train_file train.csv --label_column score  # numbers
    accelerate launch --multi_gpu --num_processes 2 recipes/extract_features.py   # ranks split the data
    python recipes/extract_features.py --help

Features (flag):
- timm backbones (--model_name_or_path, several = concatenated; --pretrained / --pretrained_file per
  backbone); default pre-logits (forward_head(pre_logits=True)), or any module (--layer NAME, forward hook;
  4-D maps are average-pooled, token outputs pooled by --pooling)
- text encoders (--modality text): [CLS] or mean pooling (--pooling cls|mean) of any hidden state
  (--layer -1, -2, ...) or module (--layer NAME); data flags as in bert_cls (--train_file, --text_columns, ...)
- image data flags as in image_cls (--image_dir, --labels_csv, --dataset_name, --image_size, ...)
- every label shape (--problem_type auto|single_label|multi_label|regression, --label_separator, --label_columns,
  as bert_cls and image_cls read them): class ids, multi-hot label sets, or numbers in the target's own units; the
  target (problem type, names, training mean/sd) is in metadata.json and part of the cache key
- a cache (--feature_dir): identical settings reuse FEATURE_DIR/<key> ("reusing"); different settings go
  to a new key folder, never a silent reuse. Written to a temp folder, then renamed into place.
- accelerate launch: each rank runs its share of the data; rank 0 gathers and writes

Writes FEATURE_DIR/<key>/: <split>-00000.safetensors (features, labels) per split, metadata.json (models,
checkpoint hashes, layer, transform, label names, target, split sizes), skipped_images.txt if any;
FEATURE_DIR/latest.txt.
"""

from __future__ import annotations

from ftpeft.core.errors import run_cli
from ftpeft.features.args import FeatureArguments
from ftpeft.vision.args import ImageDataArguments

# none: each backbone's input size, crop and normalisation come from its pretrained_cfg, or for the demo digits
# from DEMO_IMAGE_DEFAULTS (ftpeft/vision/args.py: 64 px, no crop), unless --image_size/--crop_pct/... set them
RECIPE_DEFAULTS: dict = {}


def parse(argv: list[str] | None = None):
    from ftpeft.core.config import parse_args

    return parse_args((FeatureArguments, ImageDataArguments), argv, RECIPE_DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    feature_args, data_args = parse(argv)
    # imported after parsing: --help and bad flags load no model or data code
    from ftpeft.features.jobs import export_features

    return export_features(feature_args, data_args)


if __name__ == "__main__":
    run_cli(main)()
