"""timm image classification with HF Trainer: head only, the last k stages, or full fine-tuning.

    python recipes/image_cls.py                                  # offline demo: EfficientNet-Lite0 on MNIST
    python recipes/image_cls.py --unfreeze-last 0                # same, head only (frozen backbone)
    accelerate launch recipes/image_cls.py --config recipes/configs/image_cls/dog_breed.yaml
    python recipes/image_cls.py --help

Features (flag):
- any timm model (--model_name_or_path, default resnet50), Hub weights (--pretrained) or a local file
  (--pretrained_file); a new head sized to the labels. With no data flag the default model is
  tf_efficientnet_lite0 with the packaged ImageNet weights (converted once to timm names, cached)
- head only (--unfreeze_last 0), the last k stages (--unfreeze_last k), full fine-tuning (all), through
  timm's group_matcher; frozen BatchNorm layers stay in eval mode (their running statistics never move)
- head / backbone learning rates: --head_lr for the new head, --learning_rate for the backbone,
  layer-wise decay (--layer_decay)
- data: class folders (--image_dir), Kaggle CSV (--labels_csv --image_dir --id_column --label_column
  --image_ext), Hub (--dataset_name --image_column), or offline MNIST digits (default)
- unreadable images are found up front, skipped and listed in skipped_images.txt (--strict_images: fail)
- transforms from timm's data config (--image_size, --crop_pct, --hflip, --rotation_degrees, ...)
- every TrainingArguments flag (--num_train_epochs, --bf16, --push_to_hub, --report_to, ...)

Writes to --output_dir: model.safetensors + config.json (timm format: reload with
timm.create_model("local-dir:OUTPUT_DIR", pretrained=True)), run_args.yaml, freeze_report.json,
metrics.json, confusion_matrix.png, classification_report.md and a model card (README.md).
"""

from __future__ import annotations

from ftpeft.core.config import RunArguments, parse_args
from ftpeft.core.errors import run_cli
from ftpeft.tuning.args import TuningArguments
from ftpeft.vision.args import ImageDataArguments, ImageModelArguments

# Defaults for the bare command (the offline MNIST demo on 2 CPU cores); YAML and the command line override them.
RECIPE_DEFAULTS = {
    "output_dir": "outputs/image_cls",
    "num_train_epochs": 5.0,
    "learning_rate": 1e-3,  # the backbone's LR
    "head_lr": 3e-3,
    "weight_decay": 0.01,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "image_size": 64,  # MNIST digits are 28 px; 64 px keeps CPU epochs short
    "crop_pct": 1.0,  # digits touch the border: no centre crop
    "hflip": 0.0,  # a flipped digit is another digit
    "crop_scale_min": 0.8,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "logging_steps": 10,
    "warmup_steps": 0.05,  # a float < 1 is a fraction of the total steps
    "lr_scheduler_type": "cosine",
    "dataloader_num_workers": 0,
    "report_to": "none",
    "seed": 42,
}


def parse(argv: list[str] | None = None):
    from transformers import TrainingArguments

    return parse_args(
        (ImageModelArguments, ImageDataArguments, TuningArguments, RunArguments, TrainingArguments),
        argv,
        RECIPE_DEFAULTS,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    model_args, data_args, tuning_args, run_args, training_args = args
    if tuning_args.use_peft or tuning_args.cache_frozen:
        from ftpeft.core.errors import FtpeftError

        raise FtpeftError(
            "--use_peft/--cache_frozen are for the text recipe; image_cls tunes with --unfreeze_last (for a head "
            "on frozen features use recipes/extract_features.py + recipes/train_head.py)."
        )
    # heavy imports after parsing keep --help instant
    from transformers import default_data_collator, set_seed

    from ftpeft.core.card import RunSummary, write_model_card
    from ftpeft.core.config import command_line
    from ftpeft.core.freezing import count_parameters, keep_frozen_norms_in_eval, unfreeze_last
    from ftpeft.core.hub import push_run, validate_push_args
    from ftpeft.core.lifecycle import Stopwatch, evaluate_and_report, logger, save_run_config, setup_logging, start_run
    from ftpeft.core.metrics import make_compute_metrics
    from ftpeft.core.trainer import EpochTimer, run_metrics
    from ftpeft.vision.data import TransformedImages, build_transforms, load_image_classification_data, write_skipped
    from ftpeft.vision.models import (
        ImageClassificationTrainer,
        create_timm_model,
        image_loading_snippet,
        resolve_image_model,
        save_timm_model,
        zero_init_head,
    )

    # --- 1. checks before any work --------------------------------------------------------------------
    setup_logging(training_args)
    resume_from = start_run(training_args, run_args)
    push = validate_push_args(training_args)
    set_seed(training_args.seed)
    with training_args.main_process_first(desc="converting the demo weights"):
        model_name, weights_file = resolve_image_model(
            model_args.model_name_or_path, model_args.pretrained_file, data_args.is_demo
        )

    # --- 2. data (files verified up front; the unreadable ones skipped and listed) ----------------------------
    with training_args.main_process_first(desc="scanning images"):
        data = load_image_classification_data(data_args, training_args.seed, model_args.cache_dir)
    sizes = {split: len(images) for split, images in data.splits.items()}
    logger.info("data: %s, %d classes, %d skipped", sizes, len(data.label_names), len(data.skipped))
    if training_args.should_save and data.skipped:
        logger.warning(
            "%d unreadable image(s) skipped: see %s",
            len(data.skipped),
            write_skipped(training_args.output_dir, data.skipped),
        )

    # --- 3. model, freezing ---------------------------------------------------------------------------------
    model = create_timm_model(
        model_name,
        len(data.label_names),
        pretrained=model_args.pretrained,
        pretrained_file=weights_file,
        cache_dir=model_args.cache_dir,
        drop_rate=model_args.drop_rate,
    )
    if model_args.pretrained or weights_file:
        zero_init_head(model)  # a zero head: no large random-logit gradients flow into the pretrained backbone
    else:
        logger.warning("%s starts from random weights (pass --pretrained or --pretrained_file).", model_name)
    report = unfreeze_last(model, tuning_args.unfreeze_last_k, tuning_args.train_embeddings)
    pinned = keep_frozen_norms_in_eval(model)  # frozen BN keeps its running statistics under model.train()
    logger.info("%s\nBatchNorm layers pinned to eval mode: %d", report.summary(), len(pinned))
    if training_args.should_save:
        save_run_config(training_args.output_dir, args.resolved)
        report.save(training_args.output_dir)

    # --- 4. train ---------------------------------------------------------------------------------------------
    train_transform, eval_transform, data_config = build_transforms(model, data_args)
    datasets = {
        split: TransformedImages(images, train_transform if split == "train" else eval_transform)
        for split, images in data.splits.items()
    }
    epoch_timer = EpochTimer()
    trainer = ImageClassificationTrainer(
        model=model,
        callbacks=[epoch_timer],
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        data_collator=default_data_collator,
        compute_metrics=make_compute_metrics(data.label_names),
        head_lr=tuning_args.head_lr,
        layer_decay=tuning_args.layer_decay,
    )
    with Stopwatch() as clock:
        train_result = trainer.train(resume_from_checkpoint=resume_from)

    # --- 5. evaluate, save (a stock timm model), card, push ---------------------------------------------------
    if trainer.is_world_process_zero():
        save_timm_model(model, training_args.output_dir, data.label_names, data_config)
    metrics = evaluate_and_report(
        trainer,
        datasets["validation"],
        datasets.get("test"),
        data.label_names,
        training_args.output_dir,
        run_metrics(train_result, epoch_timer),
    )
    if trainer.is_world_process_zero():
        trainable, total = count_parameters(model)
        summary = RunSummary(
            recipe="image_cls",
            base_model=model_name,
            library_name="timm",
            pipeline_tag="image-classification",
            command=command_line(),
            config=args.resolved,
            tuning=f"--unfreeze_last {tuning_args.unfreeze_last} (trainable stages: {report.trainable_layers or 'none, head only'})",
            trainable_params=trainable,
            total_params=total,
            dataset=data.description,
            hub_dataset=data_args.dataset_name,
            split_sizes=sizes,
            label_names=data.label_names,
            metrics={k: v for k, v in metrics.items() if k.endswith(("accuracy", "f1", "loss"))},
            loading_snippet=image_loading_snippet(training_args.output_dir),
            train_runtime_s=clock.seconds,
            notes=[f"{len(data.skipped)} unreadable image(s) skipped (skipped_images.txt)"] if data.skipped else [],
        )
        write_model_card(training_args.output_dir, summary)
        if push:
            push_run(training_args.output_dir, push)
    return metrics


if __name__ == "__main__":
    run_cli(main)()
