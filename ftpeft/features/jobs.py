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
from ftpeft.features.complete_model import FTPEFT_PART, CompleteModel, export_complete_model
from ftpeft.labels.target import Target
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
            label_names, skipped, description, target = data.label_names, data.skipped, data.description, data.target
            fingerprints = {split: images.fingerprint() for split, images in data.splits.items()}
        else:
            from ftpeft.text.data import dataset_description, load_text_classification_data

            text_args = feature_args.text_data_arguments(data_args)
            datasets, label_names, text_columns, _, target = load_text_classification_data(text_args, feature_args.seed)
            backbones = extract.load_text_backbones(feature_args, datasets, text_columns)  # auto: from train
            skipped, description = [], dataset_description(text_args)
            fingerprints = {split: ds._fingerprint for split, ds in datasets.items()}

    # --- 2. the cache key: everything that determines the features ----------------------------------------
    request = {
        "backbones": [backbone.description() for backbone in backbones],
        "data": description,
        "data_fingerprints": fingerprints,
        "target": extract.target_key(target),  # the labels: problem type, names, separator, scaling
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
    if splits is not None:  # rank 0: multi-hot label sets, numbers in the target's units
        splits = {split: (x, extract.stored_labels(y, target)) for split, (x, y) in splits.items()}

    # --- 4. rank 0 writes (temp folder, then rename) --------------------------------------------------------
    result: dict = {"reused": False}
    if state.is_main_process:
        extra = {
            "modality": feature_args.modality,
            "label_names": label_names,
            "target": target.to_dict(),
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
    """Fit a cheap head on cached features, report validation and test, save it with a card.

    The features' target decides the head's problem type: classes, label sets (thresholds chosen on validation, saved
    in thresholds.json) or numbers (in the target's units); target.json goes with the head for ``ftpeft predict``."""
    from ftpeft.core.card import RunSummary, write_model_card
    from ftpeft.core.config import command_line, save_resolved_config
    from ftpeft.core.lifecycle import CARD_METRIC_ENDINGS, RUN_ARGS_FILE
    from ftpeft.core.outputs import check_output_dir

    # --- 1. checks, then the features --------------------------------------------------------------------
    check_output_dir(head_args.output_dir, run_args.overwrite_output_dir, None)
    feature_dir = extract.resolve_feature_dir(head_args.features_dir)
    splits, metadata = extract.load_features(feature_dir)
    target = head_target(head_args, extract.feature_target(metadata), feature_dir)
    label_names = metadata["label_names"]
    x_train, y_train = splits["train"]
    print(f"features {feature_dir}: { ({s: len(y) for s, (_, y) in splits.items()}) }, dim {x_train.shape[1]}")
    print(f"labels: {target.short_name}, {target.num_outputs} output(s) ({target.why or 'as extracted'})")
    save_resolved_config(Path(head_args.output_dir) / RUN_ARGS_FILE, config)

    # --- 2. train ------------------------------------------------------------------------------------------
    start = time.perf_counter()
    choice = {}
    if head_args.head in heads.SKLEARN_HEADS:
        classifier, choice = heads.fit_sklearn_head(
            head_args.head, head_args, (x_train, y_train), splits.get("validation"), target
        )
        if choice:
            (flag, value), (_, scores) = choice.items()
            print(f"--{flag} {value} chosen on validation: {scores}")
    else:
        pos_weight = torch_pos_weight(head_args, target, y_train)
        classifier = heads.train_torch_head(x_train, y_train, len(label_names), head_args, target, pos_weight)
    train_seconds = time.perf_counter() - start

    # --- 3. evaluate: validation and test (metrics.json; confusion matrix or per-label/per-target report) ---------
    scored = {split: data for split, data in splits.items() if split != "train"}
    extra = {"train_runtime": train_seconds}
    metrics, target = evaluate_head(classifier, head_args, scored, target, extra)
    headline = {k: round(v, 4) for k, v in metrics.items() if k.endswith(("accuracy", "_map", "_macro_f1", "_rmse"))}
    print(headline, f"trained in {train_seconds:.1f} s")

    # --- 4. save the head (+ one complete model when it is linear on one backbone), target.json, card -------------
    # head_config.json records the backbones and layer the features came from: `ftpeft predict` reruns them
    head_config = {
        "head": head_args.head,
        "in_features": int(x_train.shape[1]),
        "num_classes": len(label_names),
        "hidden_size": head_args.hidden_size,
        "problem_type": target.short_name,
        **choice,
        "label_names": label_names,
        "features": {k: metadata.get(k) for k in ("request", "modality", "weights_files", "key", "seed")},
    }
    trainable, snippet, complete = save_head(
        classifier, head_args.head, head_args.output_dir, head_config, target, x_train[:256]
    )
    summary = RunSummary(
        recipe="train_head",
        base_model=" + ".join(b["model"] for b in metadata["request"]["backbones"]),
        library_name=complete.library or ("sklearn" if head_args.head in heads.SKLEARN_HEADS else "timm"),
        pipeline_tag="image-classification" if metadata["modality"] == "image" else "text-classification",
        command=command_line(),
        config=config,
        tuning=f"--head {head_args.head} on frozen features ({feature_dir.name}, dim {x_train.shape[1]})",
        trainable_params=trainable,
        total_params=trainable,
        dataset=metadata["request"]["data"],
        split_sizes=metadata["split_sizes"],
        label_names=label_names,
        metrics={k: v for k, v in metrics.items() if k.endswith(CARD_METRIC_ENDINGS)},
        loading_snippet=snippet,
        train_runtime_s=train_seconds,
        notes=[complete.note],
    )
    write_model_card(head_args.output_dir, summary)
    return metrics


def head_target(head_args: HeadArguments, target: Target, feature_dir: Path) -> Target:
    """The features' target, once --problem_type and --head are checked against it (one line each, before fitting)."""
    if head_args.problem_type not in ("auto", target.short_name):
        raise FtpeftError(
            f"--problem_type {head_args.problem_type}: the features in {feature_dir} are {target.short_name}; extract "
            f"them again with --problem_type {head_args.problem_type} (recipes/extract_features.py)."
        )
    if head_args.pos_weight != "none" and not target.is_multi_label:
        raise FtpeftError(f"--pos_weight is for label sets (multi_label); these features are {target.short_name}.")
    heads.check_head_fits(head_args.head, target)
    return target


def torch_pos_weight(head_args: HeadArguments, target: Target, train_labels) -> list[float] | None:
    """The BCE loss's positive weight per label of a torch head (--pos_weight), None for none."""
    from ftpeft.labels.loss import balanced_pos_weight, pos_weight_from_file

    if head_args.pos_weight == "none":
        return None
    if head_args.pos_weight == "balanced":
        weights = balanced_pos_weight(train_labels)
    else:
        weights = pos_weight_from_file(head_args.pos_weight, target.names)
    print(f"--pos_weight {head_args.pos_weight}: {dict(zip(target.names, weights))}")
    return weights


def evaluate_head(classifier, head_args: HeadArguments, scored: dict, target: Target, extra: dict):
    """(metrics, the target as saved) of the fitted head on the validation and test features: accuracy and the
    confusion matrix for classes; label sets and numbers through ``ftpeft.features.evaluation``."""
    if target.is_single_label:

        def predict(features):
            if head_args.head in heads.SKLEARN_HEADS:
                return classifier.predict(features)
            return heads.torch_head_scores(classifier, features).argmax(-1)

        predictions = {split: (predict(x), y) for split, (x, y) in scored.items()}
        return heads.report_predictions(head_args.output_dir, predictions, list(target.names), extra), target
    from ftpeft.features.evaluation import evaluate_target_head

    outputs = {split: heads.head_outputs(classifier, x, target) for split, (x, _) in scored.items()}
    references = {split: y for split, (_, y) in scored.items()}
    return evaluate_target_head(outputs, references, target, head_args.threshold_rule(), head_args.output_dir, extra)


def save_head(
    classifier, head: str, output_dir: str, head_config: dict, target: Target, sample
) -> tuple[int, str, CompleteModel]:
    """head.skops or head.safetensors + head_config.json, target.json (+ thresholds.json), and for a linear head on one
    backbone's final features one complete model (``ftpeft.features.complete_model``: transformers_model/ or
    timm_model/, checked on the training rows ``sample``). Returns (fitted numbers, the card's loading snippet: the
    complete model's stock loader first, then the head with ftpeft; what was exported)."""
    from ftpeft.labels.target import save_target

    save_target(output_dir, target)  # how `ftpeft predict` reads the outputs
    if head in heads.SKLEARN_HEADS:
        heads.save_sklearn_head(classifier, output_dir)
        heads.save_head_config(output_dir, head_config)
        count = heads.sklearn_parameter_count(classifier)
        snippet = f'from ftpeft import load_sklearn_head\nclf = load_sklearn_head("{output_dir}")'
        if not target.is_single_label:  # what `ftpeft predict` writes: label probabilities, or numbers
            snippet = (
                "from ftpeft import load_sklearn_head\nfrom ftpeft.features.heads import head_outputs\n"
                f'from ftpeft.labels.target import load_target\nclf = load_sklearn_head("{output_dir}")\n'
                f'target = load_target("{output_dir}")\n'
                "# head_outputs(clf, features, target): per-label probabilities (decided at target.thresholds) or numbers"
            )
    else:
        heads.save_torch_head(classifier, output_dir, head_config)
        count = sum(p.numel() for p in classifier.parameters())
        try:
            heads.check_timm_features(head_config, output_dir)
            snippet = f'from ftpeft import attach_head\nmodel = attach_head("{output_dir}")  # timm backbone + head'
        except FtpeftError:  # text, several backbones or another layer: the head alone
            snippet = f'from ftpeft import load_torch_head\nhead, config = load_torch_head("{output_dir}")'
    complete = export_complete_model(classifier, head, output_dir, head_config, target, sample)
    if complete.folder is not None:
        snippet = f"{complete.snippet}\n\n{FTPEFT_PART} (what `ftpeft predict {output_dir}` runs):\n{snippet}"
    return count, snippet, complete
