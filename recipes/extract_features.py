"""Run frozen backbones once over a dataset and cache the features (then train cheap heads: train_head.py).

    python recipes/extract_features.py                          # offline demo: EfficientNet-Lite0 on MNIST
    python recipes/extract_features.py --model_name_or_path resnet50 convnext_tiny --pretrained \\
        --labels_csv labels.csv --image_dir train --image_size 224   # two backbones, concatenated
    python recipes/extract_features.py --modality text --pooling cls  # packaged MiniLM on the demo tweets
    accelerate launch --multi_gpu --num_processes 2 recipes/extract_features.py   # ranks split the data
    python recipes/extract_features.py --help

Features (flag):
- timm backbones (--model_name_or_path, several = concatenated; --pretrained / --pretrained_file per
  backbone); default pre-logits (forward_head(pre_logits=True)), or any module (--layer NAME, forward hook;
  4-D maps are average-pooled, token outputs pooled by --pooling)
- text encoders (--modality text): [CLS] or mean pooling (--pooling cls|mean) of any hidden state
  (--layer -1, -2, ...) or module (--layer NAME); data flags as in bert_cls (--train_file, --text_columns, ...)
- image data flags as in image_cls (--image_dir, --labels_csv, --dataset_name, --image_size, ...)
- a cache (--feature_dir): identical settings reuse FEATURE_DIR/<key> ("reusing"); different settings go
  to a new key folder, never a silent reuse. Written to a temp folder, then renamed into place.
- accelerate launch: each rank runs its share of the data; rank 0 gathers and writes

Writes FEATURE_DIR/<key>/: <split>-00000.safetensors (features, labels) per split, metadata.json (models,
checkpoint hashes, layer, transform, label names, split sizes), skipped_images.txt if any; FEATURE_DIR/latest.txt.
"""

from __future__ import annotations

from ftpeft.core.errors import run_cli
from ftpeft.features.args import FeatureArguments
from ftpeft.vision.args import ImageDataArguments

RECIPE_DEFAULTS = {
    "image_size": 64,  # the demo digits are 28 px; 64 px keeps CPU extraction under a minute
    "crop_pct": 1.0,  # no centre crop: digits touch the border
}


def parse(argv: list[str] | None = None):
    from ftpeft.core.config import parse_args

    return parse_args((FeatureArguments, ImageDataArguments), argv, RECIPE_DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    feature_args, data_args = args
    # heavy imports after parsing keep --help instant
    import torch
    from accelerate import PartialState

    from ftpeft.features import extract as features
    from ftpeft.vision.data import write_skipped

    state = PartialState()
    torch.manual_seed(feature_args.seed)

    # --- 1. backbones and data ---------------------------------------------------------------------------
    with state.main_process_first():
        if feature_args.modality == "image":
            from ftpeft.vision.data import load_image_classification_data

            backbones = features.load_image_backbones(feature_args, data_args)
            data = load_image_classification_data(data_args, feature_args.seed)
            label_names, skipped, description = data.label_names, data.skipped, data.description
            fingerprints = {split: images.fingerprint() for split, images in data.splits.items()}
        else:
            from ftpeft.text.data import dataset_description, load_text_classification_data

            text_args = feature_args.text_data_arguments(data_args)
            backbones = features.load_text_backbones(feature_args)
            datasets, label_names, text_columns = load_text_classification_data(text_args, feature_args.seed)
            skipped, description = [], dataset_description(text_args)
            fingerprints = {split: ds._fingerprint for split, ds in datasets.items()}

    # --- 2. the cache key: everything that determines the features ----------------------------------------
    request = {
        "backbones": [backbone.description() for backbone in backbones],
        "data": description,
        "data_fingerprints": fingerprints,
        "label_names": label_names,
    }
    cached = features.find_cached(feature_args.feature_dir, request)
    if cached is not None:
        if state.is_main_process:
            print(f"reusing cached features in {cached}")
        _, metadata = features.load_features(cached)
        return {"feature_dir": str(cached), "reused": True, **metadata["split_sizes"]}

    # --- 3. run every backbone once over every split (ranks split the rows) ---------------------------------
    if feature_args.modality == "image":
        splits = features.extract_image_splits(backbones, data.splits, feature_args.batch_size)
    else:
        splits = features.extract_text_splits(backbones, datasets, text_columns, feature_args.batch_size)

    # --- 4. rank 0 writes (temp folder, then rename) --------------------------------------------------------
    result: dict = {"reused": False}
    if state.is_main_process:
        extra = {
            "modality": feature_args.modality,
            "label_names": label_names,
            "weights_files": [backbone.weights_file for backbone in backbones],
            "feature_dims": [backbone.feature_dim for backbone in backbones],
            "seed": feature_args.seed,
        }
        folder = features.write_features(feature_args.feature_dir, request, splits, extra)
        write_skipped(folder, skipped)
        sizes = {split: len(labels) for split, (_, labels) in splits.items()}
        print(f"wrote {sum(sizes.values())} feature rows {sizes} of dim {splits['train'][0].shape[1]} to {folder}")
        result.update(feature_dir=str(folder), **sizes)
    state.wait_for_everyone()
    return result


if __name__ == "__main__":
    run_cli(main)()
