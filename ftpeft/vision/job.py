"""The image-classification job: a timm model, head only / last k stages / full, trained with HF Trainer.

``train_image_classifier(...)`` is one run, called by ``recipes/image_cls.py`` and by the library. The
saved model is a stock timm model: ``timm.create_model("local-dir:OUTPUT_DIR", pretrained=True)``. Its outputs are
class logits, one logit per label of a label set (sigmoid, thresholds in config.json), or the numbers of a regression
in the targets' own units (the training scaling is folded into the head when it is saved).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ftpeft.core.config import RunArguments
from ftpeft.core.errors import FtpeftError
from ftpeft.tuning.args import TuningArguments
from ftpeft.vision.args import ImageDataArguments, ImageModelArguments

logger = logging.getLogger("ftpeft")

# Defaults for the bare command (the offline MNIST demo on 2 CPU cores); YAML and the command line override them.
DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/image_cls",
    "num_train_epochs": "auto",
    # chosen on validation (benchmarks/results/partial_tuning_image.md: full fine-tuning of EfficientNet-Lite0 on
    # MNIST; 3e-3 for both beat 1e-3 / 3e-3, 0.963 against 0.949 validation accuracy)
    "learning_rate": 3e-3,  # the backbone's LR
    "head_lr": 3e-3,
    "weight_decay": 0.01,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    # no image settings here: they come from the model's pretrained_cfg, or for the demo data from
    # DEMO_IMAGE_DEFAULTS (ftpeft/vision/args.py: 64 px, no crop, no flip), unless a flag sets them
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
    from ftpeft.core.settings import resolve_settings
    from ftpeft.labels.loss import loss_weights_for_run
    from ftpeft.tuning.apply import apply_tuning
    from ftpeft.tuning.schedules import staged_unfreezing
    from ftpeft.vision.data import (
        TransformedImages,
        load_image_classification_data,
        resolve_image_settings,
        write_skipped,
    )
    from ftpeft.vision.models import (
        ImageClassificationTrainer,
        create_timm_model,
        image_loading_snippet,
        resolve_image_model,
        save_timm_model,
        zero_init_head,
    )

    tuning_args.require_supported("image_cls", peft=False, cache=True)
    if data_args.cache_augmented_views and not tuning_args.cache_frozen:
        raise FtpeftError("--cache_augmented_views needs --cache_frozen (without it every epoch draws new views).")
    if data_args.is_demo:
        data_args.refuse_label_shapes("the demo digits")
    run = start_run(
        "image_cls", config, training_args, run_args, keep_all_columns=True, flags=tuning_args.engine_dependent_flags
    )
    with training_args.main_process_first(desc="converting the demo weights"):
        model_name, weights_file = resolve_image_model(
            model_args.model_name_or_path, model_args.pretrained_file, data_args.is_demo
        )

    # --- data (files verified up front; the unreadable ones skipped and listed) ------------------------
    with training_args.main_process_first(desc="scanning images"):
        data = load_image_classification_data(data_args, training_args.seed, model_args.cache_dir)
    target = data.target
    sizes = {split: len(images) for split, images in data.splits.items()}
    logger.info("data: %s, %d outputs, %d skipped", sizes, target.num_outputs, len(data.skipped))
    run.report_data(data.report)
    run.record("problem_type", data_args.problem_type, target.short_name, target.why)
    run.settings.update(resolve_settings(training_args, lone_last_batch(training_args, sizes["train"])))
    run.plan_stopping(sizes["train"], sizes.get("validation", 0), target.problem_type)
    if training_args.should_save and data.skipped:
        skipped_file = write_skipped(training_args.output_dir, data.skipped)
        logger.warning("%d unreadable image(s) skipped: see %s", len(data.skipped), skipped_file)

    # --- model and tuning ------------------------------------------------------------------------------
    model = create_timm_model(
        model_name,
        target.num_outputs,
        pretrained=model_args.pretrained,
        pretrained_file=weights_file,
        cache_dir=model_args.cache_dir,
        drop_rate=model_args.drop_rate,
    )
    if model_args.pretrained or weights_file:
        zero_init_head(model)  # a zero head: no large random-logit gradients flow into the pretrained backbone
    else:
        logger.warning("%s starts from random weights (pass --pretrained or --pretrained_file).", model_name)
    check_regression_head(model, target)
    run.settings.update(resolve_settings(training_args, timm_checkpointing(model, training_args)))
    # frozen BatchNorm layers are pinned to eval mode: their running statistics never move
    tuning = apply_tuning(model, tuning_args)
    unfreezing = staged_unfreezing(
        tuning_args, tuning, open_ended=run.stopping is not None
    )  # --lp_ft / --gradual_unfreeze
    class_weights, pos_weight, loss_note = loss_weights_for_run(
        run, target, tuning_args.class_weights, data_args.pos_weight, data.splits["train"].labels
    )
    # input size, crop, interpolation, mean/std: the model's pretrained_cfg unless a flag (or the demo) sets them
    image_settings = resolve_image_settings(model, data_args)
    for name, source in image_settings.sources.items():
        run.record(name, source["given"], source["used"], source["why"])
    train_transform, eval_transform = image_settings.train_transform, image_settings.eval_transform
    if tuning_args.cache_frozen and not data_args.cache_augmented_views:
        train_transform = eval_transform  # the cached stages see each image once: a random view would be frozen in
        logger.warning(CACHE_TRANSFORM_NOTE)
        why = "--cache_frozen without --cache_augmented_views: training images go through the evaluation transform"
        run.record("hflip", data_args.hflip, 0.0, why)
        run.record("augmentation", image_settings.sources["augmentation"]["given"], None, why)
    run.save_config(tuning.freeze)

    # --- train (optionally from cached activations of the frozen stages) -------------------------------
    if tuning_args.cache_frozen and data_args.cache_augmented_views:
        logger.warning("--cache_frozen: caching %d augmented views per training image", data_args.cache_augmented_views)
    datasets = {
        split: TransformedImages(images, train_transform if split == "train" else eval_transform)
        for split, images in data.splits.items()
    }
    trainer_kwargs = {
        "args": training_args,
        "compute_metrics": make_compute_metrics(data.label_names, target),
        "head_lr": tuning_args.head_lr,
        "layer_decay": tuning_args.layer_decay,
        "layers": tuning.layers,
        "class_weights": class_weights,
        "target": target,
        "pos_weight": pos_weight,
    }
    inputs = {
        "model": model,
        "train_dataset": datasets["train"],
        "eval_dataset": datasets["validation"],
        "data_collator": default_data_collator,
    }
    if tuning_args.cache_frozen:  # the top stages train from cached activations of the frozen ones (built once)
        inputs = cached_training_inputs(model, tuning, tuning_args, data_args, datasets, data.splits, training_args)
    trainer = ImageClassificationTrainer(**inputs, **trainer_kwargs)
    if unfreezing:
        trainer.add_callback(unfreezing)
    train_metrics = run.train(trainer)
    if tuning_args.cache_frozen:  # put the frozen stages back: evaluate and save the complete model on real images
        cached_run = trainer
        trainer = ImageClassificationTrainer(
            model=cached_run.model.restore(),
            eval_dataset=datasets["validation"],
            data_collator=default_data_collator,
            **trainer_kwargs,
        )
        trainer.state = cached_run.state  # the learning curve keeps the training history

    # --- evaluate, save (a stock timm model; a regression's scaling folded into its head), card, push ----------
    def write_model(folder: Path, state_dict: dict | None) -> None:
        # the Trainer's own model (trained in place): finish folds a regression's scaling into its head meanwhile
        save_timm_model(model, folder, data.label_names, image_settings.data_config, state_dict)

    trained = tuning.freeze.trainable_layers or "none, head only"
    tuning_text = f"--unfreeze_last {tuning_args.unfreeze_last} (trainable stages: {trained})"
    description = ModelDescription(
        base_model=model_name,
        library_name="timm",
        pipeline_tag="image-classification",
        tuning=unfreezing.describe(tuning_text) if unfreezing else tuning_text,
        dataset=data.description,
        hub_dataset=data_args.dataset_name,
        loading_snippet=image_loading_snippet(training_args.output_dir, target),
        notes=[f"{len(data.skipped)} unreadable image(s) skipped (skipped_images.txt)"] if data.skipped else [],
    )
    if tuning_args.cache_frozen:
        description.notes.append(cache_card_note(data_args.cache_augmented_views))
    if loss_note:
        description.notes.append(loss_note)
    return run.finish(
        trainer,
        datasets,
        data.label_names,
        description,
        train_metrics,
        write_model=write_model,
        target=target,
        threshold_rule=data_args.threshold_rule(),
    )


def check_regression_head(model, target) -> None:
    """A regression's scaling is folded into the model's output layer when it is saved (``ftpeft.labels.scaling``):
    that layer must be the timm classifier (a linear layer with a bias), checked before any training."""
    from torch import nn

    from ftpeft.labels.scaling import output_layer

    if not target.is_regression:
        return
    classifier = model.get_classifier()
    if (
        not isinstance(classifier, nn.Linear)
        or classifier.bias is None
        or output_layer(model, target.num_outputs) is not classifier
    ):
        raise FtpeftError(
            f"--problem_type regression: {type(model).__name__}'s classifier ({type(classifier).__name__}) is not the "
            "last linear layer with a bias, where the target scaling is folded in when the model is saved; choose "
            "a timm model with a linear head."
        )


CACHE_TRANSFORM_NOTE = (
    "--cache_frozen: training images go through the evaluation transform (no random crop, flip, rotation or "
    "colour jitter): the cached frozen stages see each image once. --cache_augmented_views N caches N augmented "
    "views per image instead."
)


def cache_card_note(views: int | None) -> str:
    if views:
        return (
            f"Trained with --cache_frozen: the frozen stages' output was cached for {views} augmented view(s) of each "
            "training image (training transform), one drawn at random each time an image was used."
        )
    return (
        "Trained with --cache_frozen: the frozen stages ran once per training image, through the evaluation "
        "transform, so training used no data augmentation (no random crop, flip, rotation or colour jitter)."
    )


def cached_training_inputs(model, tuning, tuning_args: TuningArguments, data_args, datasets, images, training_args):
    """The Trainer's model, data and optimizer groups for training the top k stages + head from cached
    activations of the frozen stages (built once; the validation split is cached too)."""
    from ftpeft.cache.stages import StageSource, prepare_cached_stages
    from ftpeft.cache.store import default_cache_root
    from ftpeft.tuning.apply import cached_model_param_groups

    param_groups = cached_model_param_groups(model, tuning, tuning_args, training_args)
    views = {"train": data_args.cache_augmented_views or 1, "validation": 1}
    sources = {
        split: StageSource(datasets[split], images[split].labels, datasets[split].fingerprint(), views[split])
        for split in views
    }
    model.to(training_args.device)  # the frozen stages run once, where the model trains (Trainer would move it)
    cached_model, examples, collator, _ = prepare_cached_stages(
        model,
        tuning_args.unfreeze_last_k,
        tuning.layers,
        sources,
        tuning_args.activation_cache_dir or default_cache_root(),
        tuning_args.cache_dtype,
        training_args.per_device_train_batch_size,  # on CPU, large conv batches run slower per image
        training_args,
    )
    return {
        "model": cached_model,
        "param_groups": param_groups,
        "train_dataset": examples["train"],
        "eval_dataset": examples["validation"],
        "data_collator": collator,
        "input_name": "boundary_states",
    }


def timm_checkpointing(model, training_args) -> list:
    """--gradient_checkpointing on a timm model: turns on timm's own ``set_grad_checkpointing``, non-reentrant.

    Trainer enables checkpointing only on transformers models (a timm model has no ``activation_checkpointing_enable``),
    so the returned change hands it from Trainer to timm; non-reentrant, because frozen bottom stages feed the
    checkpointed blocks inputs without grad and reentrant checkpointing would then drop the trained stages' gradients.
    """
    from timm.layers import set_reentrant_ckpt

    from ftpeft.core.settings import SettingChange

    if not training_args.activation_checkpointing:
        return []
    kwargs = dict(training_args.activation_checkpointing_kwargs or {})
    if kwargs.get("use_reentrant") or set(kwargs) - {"use_reentrant"}:
        raise FtpeftError(
            f"--gradient_checkpointing_kwargs {kwargs} cannot apply to a timm model: timm's set_grad_checkpointing "
            "takes no options and ftpeft runs it non-reentrant (frozen stages would stop the gradients otherwise)."
        )
    set_reentrant_ckpt(False)  # timm reads this global (TIMM_REENTRANT_CKPT) in its checkpoint_seq
    try:
        model.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError) as error:
        raise FtpeftError(f"--gradient_checkpointing: this timm model does not support it ({error}).") from None
    why = (
        "timm's set_grad_checkpointing(True) checkpoints the model's blocks (Trainer's own needs a transformers model)"
    )
    return [SettingChange("activation_checkpointing", True, False, why)]


def lone_last_batch(training_args, train_rows: int) -> list:
    """Drop a last training batch of ONE image: BatchNorm cannot normalise a batch of one in training mode."""
    from ftpeft.core.settings import SettingChange

    per_step = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    if train_rows % per_step != 1 or training_args.dataloader_drop_last:
        return []
    why = f"{train_rows} training images leave a last batch of 1, which BatchNorm cannot train on"
    return [SettingChange("dataloader_drop_last", False, True, why)]
