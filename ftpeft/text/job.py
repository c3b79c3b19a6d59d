"""The text-classification job: a BERT-family encoder, top k layers or LoRA, trained with HF Trainer.

``train_classifier(model_args, data_args, tuning_args, run_args, training_args, config)`` is one run of
one strategy, called by ``recipes/bert_cls.py`` and by anything in the library that needs a run.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ftpeft.core.config import RunArguments
from ftpeft.text.args import ModelArguments, TextDataArguments
from ftpeft.tuning.args import TuningArguments, cached_splits

# Trainer settings every text recipe starts from: train until validation stops improving (--num_train_epochs
# auto resolves the evaluation and checkpoint cadence from the data size; a number of epochs evaluates and
# checkpoints once per epoch), batches sized for 2 CPU cores. YAML and the command line override them.
TEXT_TRAINER_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": "auto",  # until validation stops improving (ftpeft.core.stopping)
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "max_seq_length": "auto",  # the training texts' 99th-percentile token length (TextDataArguments.max_seq_length)
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "logging_steps": 10,
    "warmup_steps": 0.06,  # a float < 1 is a fraction of the total steps
    "report_to": "none",
    "seed": 42,
}
# The LRs every text recipe starts from (bert_cls.py and knowledge_cls.py alike), chosen on validation by
# benchmarks/partial_tuning.py (results/partial_tuning.md): the LRs at --unfreeze-last 2, then the decay at full
# fine-tuning. The top layers that --unfreeze-last k trains get the large LRs they need to adapt in one epoch;
# under full fine-tuning the decay keeps MiniLM's embeddings near 1e-3 x 0.65^7 = 5e-5 (no decay diverged).
TEXT_LR_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3,  # the pooler's; each layer below learns at 0.65x the one above
    "layer_decay": 0.65,
    "head_lr": 3e-3,  # a new head starves at the backbone's LR when few layers train
}
# The bare command's defaults: the offline demo (MiniLM on tweets) on 2 CPU cores.
DEFAULTS: dict[str, Any] = {**TEXT_TRAINER_DEFAULTS, **TEXT_LR_DEFAULTS, "output_dir": "outputs/bert_cls"}


def train_classifier(
    model_args: ModelArguments,
    data_args: TextDataArguments,
    tuning_args: TuningArguments,
    run_args: RunArguments,
    training_args,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Train, evaluate and save one text classifier; returns the final metrics (eval_*, test_*, train_*).

    ``config`` is the arguments as given (written to run_args.yaml and the card).
    """
    from transformers import DataCollatorWithPadding

    from ftpeft.core.card import text_loading_snippet
    from ftpeft.core.lifecycle import ModelDescription, start_run
    from ftpeft.core.metrics import make_compute_metrics
    from ftpeft.core.trainer import FtpeftTrainer
    from ftpeft.labels.loss import loss_weights_for_run
    from ftpeft.text.data import dataset_description, load_tokenized_data
    from ftpeft.text.modeling import base_model_name, check_max_seq_length, load_sequence_classifier, resolve_model_path
    from ftpeft.text.pooling import pooling_for, readout_note
    from ftpeft.text.windows import refuse_cache_with_windows, windows_note
    from ftpeft.tuning.apply import apply_tuning
    from ftpeft.tuning.lora import write_merged_model
    from ftpeft.tuning.schedules import staged_unfreezing

    tuning_args.require_supported("bert_cls", peft=True, cache=True)
    run = start_run(
        "bert_cls",
        config,
        training_args,
        run_args,
        keep_all_columns=tuning_args.cache_frozen,
        flags=tuning_args.engine_dependent_flags,
    )
    model_path = resolve_model_path(model_args)
    check_max_seq_length(model_args, model_path, data_args.max_seq_length)
    pooling, why = pooling_for(model_args, model_path, tuning_args.unfreeze_last_k, tuning_args.use_peft)
    run.record("pooling", model_args.pooling, pooling, why)

    # --- data ------------------------------------------------------------------------------------------
    data = load_tokenized_data(model_args, model_path, data_args, training_args)
    tokenizer, tokenized, label_names, target = data.tokenizer, data.tokenized, data.label_names, data.target
    run.report_data(data.report)
    run.record("max_seq_length", data_args.max_seq_length, data.max_seq_length, data.max_seq_length_why)
    run.record("long_texts", data_args.long_texts, "windows" if data.windows else "truncate", data.windows_why)
    if data.windows:  # ftpeft predict cuts a text's windows as the run did
        run.record(
            "doc_stride",
            data_args.doc_stride,
            data.doc_stride,
            "--long_texts windows: " + ("as given" if data_args.doc_stride else "a quarter of the window"),
        )
    refuse_cache_with_windows(data.windows, tuning_args.cache_frozen)
    run.record("problem_type", data_args.problem_type, target.short_name, target.why)
    run.plan_stopping(len(tokenized["train"]), len(tokenized["validation"]), target.problem_type)

    # --- model and tuning ------------------------------------------------------------------------------
    model, newly_initialised = load_sequence_classifier(model_args, model_path, label_names, pooling, target)
    tuning = apply_tuning(model, tuning_args, newly_initialised)
    model = tuning.model
    # --lp_ft / --gradual_unfreeze: the backbone's groups join at their steps (the head is all that is new)
    unfreezing = staged_unfreezing(tuning_args, tuning, newly_initialised, open_ended=run.stopping is not None)
    class_weights, pos_weight, loss_note = loss_weights_for_run(
        run, target, tuning_args.class_weights, data_args.pos_weight, tokenized["train"]["labels"]
    )
    run.save_config(tuning.freeze)

    # --- train (optionally from cached frozen-layer activations) ---------------------------------------
    collator = DataCollatorWithPadding(tokenizer)
    trainer_kwargs = {
        "args": training_args,
        "compute_metrics": make_compute_metrics(label_names, target),
        "head_lr": tuning_args.head_lr,
        "layer_decay": tuning_args.layer_decay,
        "adapter_lr": tuning_args.lora_lr if tuning_args.use_peft else None,
        "layers": tuning.layers,
        "processing_class": tokenizer,
        "class_weights": class_weights,
        "target": target,
        "pos_weight": pos_weight,
    }
    if tuning_args.cache_frozen:
        trainer, cached = cached_trainer(model, tuning, tuning_args, tokenized, collator, training_args, trainer_kwargs)
    else:
        trainer = FtpeftTrainer(
            model=model,
            train_dataset=tokenized["train"],
            eval_dataset=tokenized["validation"],
            data_collator=collator,
            **trainer_kwargs,
        )
    if unfreezing:
        trainer.add_callback(unfreezing)
    train_metrics = run.train(trainer)
    evaluation = None
    if tuning_args.cache_frozen:  # put the frozen part back: save (and evaluate) the complete model
        cached_run = trainer
        model = cached_run.model.restore()
        trainer = FtpeftTrainer(
            model=model, eval_dataset=tokenized["validation"], data_collator=collator, **trainer_kwargs
        )
        trainer.state = cached_run.state  # the learning curve keeps the training history (as the image job does)
        if tuning_args.evaluates_from_cache:
            evaluation = partial(
                evaluate_from_cache, cached_run, cached, label_names, run.output_dir, target, data_args.threshold_rule()
            )

    # --- evaluate, save, card, push ---------------------------------------------------------------------
    output_dir = str(run.output_dir)

    def merged_export() -> tuple[Path, str]:
        merged_dir = write_merged_model(output_dir, label_names)  # its config.json gets the target in finish
        return Path(merged_dir), text_loading_snippet(merged_dir, adapter=False, problem_type=target.problem_type)

    description = ModelDescription(
        base_model=base_model_name(model_args),
        library_name="peft" if tuning_args.use_peft else "transformers",
        pipeline_tag="text-classification",
        tuning=unfreezing.describe(tuning.description) if unfreezing else tuning.description,
        dataset=dataset_description(data_args),
        hub_dataset=data_args.dataset_name,
        loading_snippet=text_loading_snippet(
            output_dir,
            tuning_args.use_peft,
            label_names,
            remote_code=pooling == "mean",
            problem_type=target.problem_type,
        ),
        notes=[
            readout_note(pooling, model_args.pooling, why),
            *([loss_note] if loss_note else []),
            *([windows_note(data.max_seq_length, data.doc_stride)] if data.windows else []),
        ],
    )
    return run.finish(
        trainer,
        tokenized,
        label_names,
        description,
        train_metrics,
        merged_export=merged_export if tuning_args.merge_adapter else None,
        push_merged=tuning_args.push_merged,
        evaluation=evaluation,
        target=target,
        threshold_rule=data_args.threshold_rule(),
    )


def cached_trainer(model, tuning, tuning_args: TuningArguments, tokenized, collator, training_args, trainer_kwargs):
    """A Trainer over the top k layers, fed from cached activations of the frozen bottom (built once), and the
    cached index datasets by split (train, validation, and test when the run scores from the cache)."""
    from ftpeft.cache.prefix import default_cache_root, prepare_cached_training
    from ftpeft.core.trainer import FtpeftTrainer
    from ftpeft.tuning.apply import cached_model_param_groups

    param_groups = cached_model_param_groups(model, tuning, tuning_args, training_args)
    splits = {split: tokenized[split] for split in cached_splits(tuning_args.cache_dtype) if split in tokenized}
    cache_root = tuning_args.activation_cache_dir or default_cache_root()
    batch_size = training_args.per_device_eval_batch_size
    cached_model, cached, cached_collator, _ = prepare_cached_training(
        model, tuning_args.unfreeze_last_k, splits, collator, cache_root, tuning_args.cache_dtype, batch_size,
        training_args,
    )  # fmt: skip
    trainer = FtpeftTrainer(
        model=cached_model,
        param_groups=param_groups,
        train_dataset=cached["train"],
        eval_dataset=cached["validation"],
        data_collator=cached_collator,
        keep_all_columns=True,
        **trainer_kwargs,
    )
    return trainer, cached


def evaluate_from_cache(
    cached_run, cached: dict, label_names: list[str], output_dir, target, threshold_rule, train_metrics: dict
):
    """The final validation and test scores, read from the float32 cache: the top layers only, on the frozen
    layers' exact output (what the saved model computes on the real inputs). Returns (metrics, target)."""
    from ftpeft.core.lifecycle import evaluate_and_report

    with cached_run.model.prefix_cached():
        return evaluate_and_report(
            cached_run,
            cached["validation"],
            cached.get("test"),
            label_names,
            output_dir,
            train_metrics,
            target,
            threshold_rule,
        )
