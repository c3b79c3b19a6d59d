"""The frozen-feature jobs: export features once (hooks on any layer), then fit cheap heads on them.

``export_features(feature_args, data_args)`` and ``train_head(head_args, run_args, config)`` are called by
``recipes/extract_features.py`` and ``recipes/train_head.py``, and by anything in the library that needs them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ftpeft.core.config import OutputArguments
from ftpeft.core.errors import FtpeftError
from ftpeft.features import extract, heads
from ftpeft.features.args import FeatureArguments, HeadArguments
from ftpeft.vision.args import ImageDataArguments


def export_features(feature_args: FeatureArguments, data_args: ImageDataArguments) -> dict[str, Any]:
    """Run each frozen backbone once over every split and cache the features (reused when already there).

    Returns the feature folder, whether it was reused, and the split sizes.
    """
    import torch
    from accelerate import PartialState

    from ftpeft.vision.data import write_skipped

    state = PartialState()
    torch.manual_seed(feature_args.seed)

    # --- 1. backbones and data ---------------------------------------------------------------------------
    with state.main_process_first():
        if feature_args.modality == "image":
            from ftpeft.vision.data import load_image_classification_data

            backbones = extract.load_image_backbones(feature_args, data_args)
            data = load_image_classification_data(data_args, feature_args.seed)
            label_names, skipped, description = data.label_names, data.skipped, data.description
            fingerprints = {split: images.fingerprint() for split, images in data.splits.items()}
        else:
            from ftpeft.text.data import dataset_description, load_text_classification_data

            text_args = feature_args.text_data_arguments(data_args)
            datasets, label_names, text_columns, _, _ = load_text_classification_data(text_args, feature_args.seed)
            backbones = extract.load_text_backbones(feature_args, datasets, text_columns)  # auto: from train
            skipped, description = [], dataset_description(text_args)
            fingerprints = {split: ds._fingerprint for split, ds in datasets.items()}

    # --- 2. the cache key: everything that determines the features ----------------------------------------
    request = {
        "backbones": [backbone.description() for backbone in backbones],
        "data": description,
        "data_fingerprints": fingerprints,
        "label_names": label_names,
    }
    cached = extract.find_cached(feature_args.feature_dir, request)
    if cached is not None:
        if state.is_main_process:
            print(f"reusing cached features in {cached}")
        _, metadata = extract.load_features(cached)
        return {"feature_dir": str(cached), "reused": True, **metadata["split_sizes"]}

    # --- 3. run every backbone once over every split (ranks split the rows) ---------------------------------
    if feature_args.modality == "image":
        splits = extract.extract_image_splits(backbones, data.splits, feature_args.batch_size)
    else:
        splits = extract.extract_text_splits(backbones, datasets, text_columns, feature_args.batch_size)

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
        folder = extract.write_features(feature_args.feature_dir, request, splits, extra)
        write_skipped(folder, skipped)
        sizes = {split: len(labels) for split, (_, labels) in splits.items()}
        print(f"wrote {sum(sizes.values())} feature rows {sizes} of dim {splits['train'][0].shape[1]} to {folder}")
        result.update(feature_dir=str(folder), **sizes)
    state.wait_for_everyone()
    return result


def train_head(head_args: HeadArguments, run_args: OutputArguments, config: dict[str, Any]) -> dict[str, Any]:
    """Fit a cheap head on cached features, report validation and test, save it with a card."""
    from ftpeft.core.card import RunSummary, write_model_card
    from ftpeft.core.config import command_line, save_resolved_config
    from ftpeft.core.lifecycle import RUN_ARGS_FILE
    from ftpeft.core.outputs import check_output_dir

    # --- 1. checks, then the features --------------------------------------------------------------------
    check_output_dir(head_args.output_dir, run_args.overwrite_output_dir, None)
    feature_dir = extract.resolve_feature_dir(head_args.features_dir)
    splits, metadata = extract.load_features(feature_dir)
    label_names = metadata["label_names"]
    x_train, y_train = splits["train"]
    print(f"features {feature_dir}: { ({s: len(y) for s, (_, y) in splits.items()}) }, dim {x_train.shape[1]}")
    save_resolved_config(Path(head_args.output_dir) / RUN_ARGS_FILE, config)

    # --- 2. train ------------------------------------------------------------------------------------------
    start = time.perf_counter()
    choice = {}
    if head_args.head in heads.SKLEARN_HEADS:
        classifier, choice = heads.fit_sklearn_head(
            head_args.head, head_args, (x_train, y_train), splits.get("validation")
        )
        if choice:
            print(
                f"--regularization_c {choice['regularization_c']} chosen on validation: {choice['validation_accuracy_by_c']}"
            )
    else:
        classifier = heads.train_torch_head(x_train, y_train, len(label_names), head_args)
    train_seconds = time.perf_counter() - start

    # --- 3. evaluate: validation and test (metrics.json, confusion matrix, per-class report) -------------------
    def predict(features):
        if head_args.head in heads.SKLEARN_HEADS:
            return classifier.predict(features)
        return heads.torch_head_scores(classifier, features).argmax(-1)

    predictions = {split: (predict(x), y) for split, (x, y) in splits.items() if split != "train"}
    metrics = heads.report_predictions(head_args.output_dir, predictions, label_names, {"train_runtime": train_seconds})
    print({k: round(v, 4) for k, v in metrics.items() if k.endswith("accuracy")}, f"trained in {train_seconds:.1f} s")

    # --- 4. save the head (+ a complete timm model when it fits one), card ----------------------------------------
    # head_config.json records the backbones and layer the features came from: `ftpeft predict` reruns them
    head_config = {
        "head": head_args.head,
        "in_features": int(x_train.shape[1]),
        "num_classes": len(label_names),
        "hidden_size": head_args.hidden_size,
        **choice,
        "label_names": label_names,
        "features": {k: metadata.get(k) for k in ("request", "modality", "weights_files", "key", "seed")},
    }
    if head_args.head in heads.SKLEARN_HEADS:
        heads.save_sklearn_head(classifier, head_args.output_dir)
        heads.save_head_config(head_args.output_dir, head_config)
        trainable = heads.sklearn_parameter_count(classifier)
        snippet = f'from ftpeft import load_sklearn_head\nclf = load_sklearn_head("{head_args.output_dir}")'
    else:
        heads.save_torch_head(classifier, head_args.output_dir, head_config)
        trainable = sum(p.numel() for p in classifier.parameters())
        snippet = (
            f'from ftpeft import attach_head\nmodel = attach_head("{head_args.output_dir}")  # timm backbone + head'
        )
        backbones = metadata["request"]["backbones"]
        if head_args.head == "linear" and len(backbones) == 1 and backbones[0]["layer"] == extract.DEFAULT_IMAGE_LAYER:
            from ftpeft.vision.models import save_timm_model

            try:
                model = heads.attach_head(head_args.output_dir)
                save_timm_model(
                    model, Path(head_args.output_dir) / "timm_model", label_names, backbones[0]["transform"]
                )
            except FtpeftError as error:  # e.g. the backbone's weights changed since extraction
                print(f"warning: no complete timm model written: {error}")
    summary = RunSummary(
        recipe="train_head",
        base_model=" + ".join(b["model"] for b in metadata["request"]["backbones"]),
        library_name="sklearn" if head_args.head in heads.SKLEARN_HEADS else "timm",
        pipeline_tag="image-classification" if metadata["modality"] == "image" else "text-classification",
        command=command_line(),
        config=config,
        tuning=f"--head {head_args.head} on frozen features ({feature_dir.name}, dim {x_train.shape[1]})",
        trainable_params=trainable,
        total_params=trainable,
        dataset=metadata["request"]["data"],
        split_sizes=metadata["split_sizes"],
        label_names=label_names,
        metrics={k: v for k, v in metrics.items() if k.endswith(("accuracy", "f1"))},
        loading_snippet=snippet,
        train_runtime_s=train_seconds,
    )
    write_model_card(head_args.output_dir, summary)
    return metrics
