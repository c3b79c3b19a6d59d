"""The image-classification job: a timm model, head only / last k stages / full, trained with HF Trainer.

``train_image_classifier(...)`` is one run, called by ``recipes/image_cls.py`` and by the library. The
saved model is a stock timm model: ``timm.create_model("local-dir:OUTPUT_DIR", pretrained=True)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ftpeft.core.config import RunArguments
from ftpeft.tuning.args import TuningArguments
from ftpeft.vision.args import ImageDataArguments, ImageModelArguments

logger = logging.getLogger("ftpeft")

# Defaults for the bare command (the offline MNIST demo on 2 CPU cores); YAML and the command line override them.
DEFAULTS: dict[str, Any] = {
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


def train_image_classifier(
    model_args: ImageModelArguments,
    data_args: ImageDataArguments,
    tuning_args: TuningArguments,
    run_args: RunArguments,
    training_args,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Train, evaluate and save one timm image classifier; returns the final metrics."""
    from transformers import default_data_collator

    from ftpeft.core.lifecycle import ModelDescription, start_run
    from ftpeft.core.metrics import make_compute_metrics
    from ftpeft.tuning.apply import apply_tuning
    from ftpeft.vision.data import TransformedImages, build_transforms, load_image_classification_data, write_skipped
    from ftpeft.vision.models import (
        ImageClassificationTrainer,
        create_timm_model,
        image_loading_snippet,
        resolve_image_model,
        save_timm_model,
        zero_init_head,
    )

    tuning_args.require_supported("image_cls", peft=False, cache=False)
    run = start_run(
        "image_cls", config, training_args, run_args, keep_all_columns=True, cache_frozen=tuning_args.cache_frozen
    )
    with training_args.main_process_first(desc="converting the demo weights"):
        model_name, weights_file = resolve_image_model(
            model_args.model_name_or_path, model_args.pretrained_file, data_args.is_demo
        )

    # --- data (files verified up front; the unreadable ones skipped and listed) ------------------------
    with training_args.main_process_first(desc="scanning images"):
        data = load_image_classification_data(data_args, training_args.seed, model_args.cache_dir)
    sizes = {split: len(images) for split, images in data.splits.items()}
    logger.info("data: %s, %d classes, %d skipped", sizes, len(data.label_names), len(data.skipped))
    if training_args.should_save and data.skipped:
        skipped_file = write_skipped(training_args.output_dir, data.skipped)
        logger.warning("%d unreadable image(s) skipped: see %s", len(data.skipped), skipped_file)

    # --- model and tuning ------------------------------------------------------------------------------
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
    # frozen BatchNorm layers are pinned to eval mode: their running statistics never move
    tuning = apply_tuning(model, tuning_args)
    run.save_config(tuning.freeze)

    # --- train -----------------------------------------------------------------------------------------
    train_transform, eval_transform, data_config = build_transforms(model, data_args)
    datasets = {
        split: TransformedImages(images, train_transform if split == "train" else eval_transform)
        for split, images in data.splits.items()
    }
    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        data_collator=default_data_collator,
        compute_metrics=make_compute_metrics(data.label_names),
        head_lr=tuning_args.head_lr,
        layer_decay=tuning_args.layer_decay,
        layers=tuning.layers,
    )
    train_metrics = run.train(trainer)

    # --- evaluate, save (a stock timm model), card, push -----------------------------------------------
    def write_model(folder: Path) -> None:
        save_timm_model(model, folder, data.label_names, data_config)

    trained = tuning.freeze.trainable_layers or "none, head only"
    description = ModelDescription(
        base_model=model_name,
        library_name="timm",
        pipeline_tag="image-classification",
        tuning=f"--unfreeze_last {tuning_args.unfreeze_last} (trainable stages: {trained})",
        dataset=data.description,
        hub_dataset=data_args.dataset_name,
        loading_snippet=image_loading_snippet(training_args.output_dir),
        notes=[f"{len(data.skipped)} unreadable image(s) skipped (skipped_images.txt)"] if data.skipped else [],
    )
    return run.finish(trainer, datasets, data.label_names, description, train_metrics, write_model=write_model)
