"""Train a cheap classifier on cached features (from extract_features.py): seconds on a CPU, no backbone.

    python recipes/extract_features.py && python recipes/train_head.py          # offline demo, logreg
    python recipes/train_head.py --head linear_svm --regularization_c 0.003
    python recipes/train_head.py --head mlp --epochs 50 --features_dir outputs/features/<key>
    python recipes/train_head.py --help

Features (flag):
- scikit-learn heads (--head logreg | linear_svm | random_forest | hist_gb; --regularization_c,
  --max_iter, --n_estimators), saved with skops (no pickle; loading trusts only sklearn/numpy types)
- torch heads (--head linear | mlp; --epochs, --learning_rate, --hidden_size), saved as safetensors; a
  head on one timm backbone's pre-logit features attaches back onto it (ftpeft.heads.attach_head); a
  linear one is also written as a complete timm model (OUTPUT_DIR/timm_model)
- --features_dir: one extraction folder, or a cache root (its latest extraction)

Writes to --output_dir: head.skops or head.safetensors + head_config.json, run_args.yaml, metrics.json,
confusion_matrix.png, classification_report.md and a model card (README.md).
"""

from __future__ import annotations

from ftpeft.core.config import RunArguments
from ftpeft.core.errors import run_cli
from ftpeft.features.args import HeadArguments

RECIPE_DEFAULTS: dict = {}  # the dataclass defaults fit the offline demo


def parse(argv: list[str] | None = None):
    from ftpeft.core.config import parse_args

    return parse_args((HeadArguments, RunArguments), argv, RECIPE_DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    head_args, run_args = args
    # heavy imports after parsing keep --help instant
    from pathlib import Path

    from ftpeft.core.card import RunSummary, write_model_card
    from ftpeft.core.config import command_line
    from ftpeft.core.lifecycle import Stopwatch, save_run_config
    from ftpeft.core.outputs import check_output_dir
    from ftpeft.features import heads
    from ftpeft.features.extract import DEFAULT_IMAGE_LAYER, load_features, resolve_feature_dir

    # --- 1. checks, then the features --------------------------------------------------------------------
    check_output_dir(head_args.output_dir, run_args.overwrite_output_dir, None)
    feature_dir = resolve_feature_dir(head_args.features_dir)
    splits, metadata = load_features(feature_dir)
    label_names = metadata["label_names"]
    x_train, y_train = splits["train"]
    print(f"features {feature_dir}: { ({s: len(y) for s, (_, y) in splits.items()}) }, dim {x_train.shape[1]}")
    save_run_config(head_args.output_dir, args.resolved)

    # --- 2. train ------------------------------------------------------------------------------------------
    with Stopwatch() as clock:
        if head_args.head in heads.SKLEARN_HEADS:
            classifier = heads.build_sklearn_head(head_args.head, head_args).fit(x_train, y_train)
        else:
            classifier = heads.train_torch_head(x_train, y_train, len(label_names), head_args)

    # --- 3. evaluate: validation and test (metrics.json, confusion matrix, per-class report) -------------------
    def predict(features):
        if head_args.head in heads.SKLEARN_HEADS:
            return classifier.predict(features)
        return heads.torch_head_scores(classifier, features).argmax(-1)

    predictions = {split: (predict(x), y) for split, (x, y) in splits.items() if split != "train"}
    metrics = heads.report_predictions(head_args.output_dir, predictions, label_names, {"train_runtime": clock.seconds})
    print({k: round(v, 4) for k, v in metrics.items() if k.endswith("accuracy")}, f"trained in {clock.seconds:.1f} s")

    # --- 4. save the head (+ a complete timm model when it fits one), card ----------------------------------------
    if head_args.head in heads.SKLEARN_HEADS:
        heads.save_sklearn_head(classifier, head_args.output_dir)
        trainable = heads.sklearn_parameter_count(classifier)
        snippet = f'from ftpeft.heads import load_sklearn_head\nclf = load_sklearn_head("{head_args.output_dir}")'
    else:
        config = {
            "head": head_args.head,
            "in_features": int(x_train.shape[1]),
            "num_classes": len(label_names),
            "hidden_size": head_args.hidden_size,
            "label_names": label_names,
            "features": {k: metadata.get(k) for k in ("request", "modality", "weights_files", "key", "seed")},
        }
        heads.save_torch_head(classifier, head_args.output_dir, config)
        trainable = sum(p.numel() for p in classifier.parameters())
        snippet = f'from ftpeft.heads import attach_head\nmodel = attach_head("{head_args.output_dir}")  # timm backbone + head'
        backbones = metadata["request"]["backbones"]
        if head_args.head == "linear" and len(backbones) == 1 and backbones[0]["layer"] == DEFAULT_IMAGE_LAYER:
            from ftpeft.core.errors import FtpeftError
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
        config=args.resolved,
        tuning=f"--head {head_args.head} on frozen features ({feature_dir.name}, dim {x_train.shape[1]})",
        trainable_params=trainable,
        total_params=trainable,
        dataset=metadata["request"]["data"],
        split_sizes=metadata["split_sizes"],
        label_names=label_names,
        metrics={k: v for k, v in metrics.items() if k.endswith(("accuracy", "f1"))},
        loading_snippet=snippet,
        train_runtime_s=clock.seconds,
    )
    write_model_card(head_args.output_dir, summary)
    return metrics


if __name__ == "__main__":
    run_cli(main)()
