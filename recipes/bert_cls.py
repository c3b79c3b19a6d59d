"""BERT-family text classification with HF Trainer: partial unfreezing, head/backbone LRs, layer decay, LoRA.

    accelerate launch recipes/bert_cls.py --unfreeze-last 4          # offline demo: MiniLM on tweets
    accelerate launch recipes/bert_cls.py --config recipes/configs/bert_cls/sst2.yaml --learning_rate 3e-5
    python recipes/bert_cls.py --help                                  # same as a one-process launch

Features (flag):
- only the top k encoder layers + pooler + head train (--unfreeze_last k; 0 = head, all = full);
  embeddings stay frozen unless --train_embeddings
- a separate LR for the new head (--head_lr) and layer-wise LR decay (--layer_decay)
- LoRA adapters with the head saved alongside (--use_peft, --lora_r, --lora_layers, --merge_adapter)
- frozen-prefix activation cache: the frozen bottom runs once, only the top k layers train (--cache_frozen)
- data: Hub (--dataset_name), local csv/json/parquet (--train_file ...), or the offline demo tweets
- every TrainingArguments flag (--learning_rate, --bf16, --push_to_hub, --report_to, ...)

Writes to --output_dir: the model + tokenizer (or adapter), run_args.yaml, freeze_report.json,
metrics.json, confusion_matrix.png, classification_report.md and a model card (README.md).
"""

from __future__ import annotations

from ftpeft.core.config import RunArguments, parse_args
from ftpeft.core.errors import run_cli
from ftpeft.text.args import ModelArguments, TextDataArguments
from ftpeft.tuning.args import TuningArguments

# Defaults that make the bare command useful on 2 CPU cores; YAML and the command line override them.
RECIPE_DEFAULTS = {
    "output_dir": "outputs/bert_cls",
    "num_train_epochs": 1.0,
    # Layer-wise LR decay: the pooler learns at 3e-4 and each layer below at 0.8x the one above. The few
    # layers --unfreeze-last k trains are the top ones, so they get the large LRs they need to adapt in one
    # epoch; full fine-tuning keeps MiniLM's bottom layer and embeddings near 7e-5
    # (benchmarks/results/partial_tuning.md).
    "learning_rate": 3e-4,
    "layer_decay": 0.8,
    "head_lr": 1e-3,  # a new head starves at the backbone's LR when few layers train
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "max_seq_length": 64,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "logging_steps": 10,
    "warmup_steps": 0.06,  # a float < 1 is a fraction of the total steps
    "report_to": "none",
    "seed": 42,
}


def parse(argv: list[str] | None = None):
    from transformers import TrainingArguments

    return parse_args(
        (ModelArguments, TextDataArguments, TuningArguments, RunArguments, TrainingArguments), argv, RECIPE_DEFAULTS
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    model_args, data_args, tuning_args, run_args, training_args = args
    # heavy imports after parsing keep --help instant
    from dataclasses import replace

    from transformers import DataCollatorWithPadding, set_seed

    from ftpeft.cache.prefix import check_cacheable, default_cache_root, prepare_cached_training
    from ftpeft.core.card import RunSummary, text_loading_snippet, write_model_card
    from ftpeft.core.config import command_line
    from ftpeft.core.freezing import count_parameters, freeze_report, unfreeze_last
    from ftpeft.core.hub import push_run, validate_push_args
    from ftpeft.core.lifecycle import (
        Stopwatch,
        evaluate_and_report,
        logger,
        save_model_atomically,
        save_run_config,
        setup_logging,
        start_run,
    )
    from ftpeft.core.metrics import make_compute_metrics
    from ftpeft.core.param_groups import build_param_groups
    from ftpeft.core.trainer import EpochTimer, FtpeftTrainer, run_metrics
    from ftpeft.text.data import dataset_description, load_text_classification_data, tokenize
    from ftpeft.text.modeling import base_model_name, load_sequence_classifier, load_tokenizer, resolve_model_path
    from ftpeft.tuning.lora import apply_lora, build_lora_config, write_merged_model

    # --- 1. checks before any work --------------------------------------------------------------------
    setup_logging(training_args)
    resume_from = start_run(training_args, run_args)
    push = validate_push_args(training_args)  # we push once, after everything is saved locally
    model_path = resolve_model_path(model_args)
    set_seed(training_args.seed)

    # --- 2. data ----------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(model_args, model_path)
    with training_args.main_process_first(desc="loading and tokenising"):
        datasets, label_names, text_columns = load_text_classification_data(
            data_args, training_args.seed, model_args.cache_dir
        )
        tokenized = tokenize(
            datasets, tokenizer, text_columns, data_args.max_seq_length, data_args.preprocessing_num_workers
        )
    logger.info("data: %s, labels %s", {k: len(v) for k, v in tokenized.items()}, label_names)

    # --- 3. model, freezing or LoRA ----------------------------------------------------------------------
    model, newly_initialised = load_sequence_classifier(model_args, model_path, label_names)
    k = tuning_args.unfreeze_last_k
    if tuning_args.use_peft:
        lora_config = build_lora_config(
            model,
            tuning_args.lora_r,
            tuning_args.lora_alpha,
            tuning_args.lora_dropout,
            tuning_args.lora_target_modules,
            tuning_args.lora_layers,
            k or 0,
            newly_initialised,
        )
        model = apply_lora(model, lora_config)
        report = freeze_report(model, f"lora r={tuning_args.lora_r}, fully trained top layers={k or 0}")
        tuning = f"LoRA r={tuning_args.lora_r} alpha={tuning_args.lora_alpha} on {sorted(lora_config.target_modules)}"
    else:
        report = unfreeze_last(model, k, tuning_args.train_embeddings)
        for name, param in model.named_parameters():  # newly initialised weights always train
            if name in newly_initialised:
                param.requires_grad_(True)
        report = freeze_report(model, report.spec)
        tuning = f"--unfreeze_last {tuning_args.unfreeze_last}"
    logger.info("%s", report.summary())
    if training_args.should_save:
        save_run_config(training_args.output_dir, args.resolved)
        report.save(training_args.output_dir)

    # --- 4. train (optionally from cached frozen-layer activations) ---------------------------------------------
    collator = DataCollatorWithPadding(tokenizer)
    train_model, train_data, eval_data, train_collator = model, tokenized["train"], tokenized["validation"], collator
    param_groups = None
    if tuning_args.cache_frozen:
        check_cacheable(model, k, tuning_args.train_embeddings, tuning_args.use_peft)
        # LR groups from the complete model: the cached one no longer has its bottom layers
        param_groups = build_param_groups(
            model, training_args.learning_rate, tuning_args.head_lr, tuning_args.layer_decay, training_args.weight_decay
        )
        splits = {"train": tokenized["train"], "validation": tokenized["validation"]}
        cache_root = tuning_args.activation_cache_dir or default_cache_root()
        batch_size = training_args.per_device_eval_batch_size
        train_model, cached, train_collator, _ = prepare_cached_training(
            model, k, splits, collator, cache_root, tuning_args.cache_dtype, batch_size, training_args
        )
        train_data, eval_data = cached["train"], cached["validation"]
    trainer_kwargs = {
        "args": training_args,
        "compute_metrics": make_compute_metrics(label_names),
        "head_lr": tuning_args.head_lr,
        "layer_decay": tuning_args.layer_decay,
        "adapter_lr": tuning_args.lora_lr if tuning_args.use_peft else None,
    }
    epoch_timer = EpochTimer()
    trainer = FtpeftTrainer(
        model=train_model,
        param_groups=param_groups,
        callbacks=[epoch_timer],
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=train_collator,
        processing_class=tokenizer,
        **trainer_kwargs,
    )
    with Stopwatch() as clock:
        train_result = trainer.train(resume_from_checkpoint=resume_from)
    if tuning_args.cache_frozen:  # put the frozen part back: evaluate and save the complete model on real inputs
        model = train_model.restore()
        trainer = FtpeftTrainer(
            model=model, eval_dataset=tokenized["validation"], data_collator=collator, processing_class=tokenizer,
            **trainer_kwargs,
        )  # fmt: skip

    # --- 5. evaluate, save, card, push -----------------------------------------------------------------------
    save_model_atomically(trainer, training_args.output_dir)
    metrics = evaluate_and_report(
        trainer,
        tokenized["validation"],
        tokenized.get("test"),
        label_names,
        training_args.output_dir,
        run_metrics(train_result, epoch_timer),
    )
    if trainer.is_world_process_zero():
        trainable, total = count_parameters(trainer.model)
        summary = RunSummary(
            recipe="bert_cls",
            base_model=base_model_name(model_args),
            library_name="peft" if tuning_args.use_peft else "transformers",
            pipeline_tag="text-classification",
            command=command_line(),
            config=args.resolved,
            tuning=tuning,
            trainable_params=trainable,
            total_params=total,
            dataset=dataset_description(data_args),
            hub_dataset=data_args.dataset_name,
            split_sizes={split: len(ds) for split, ds in tokenized.items()},
            label_names=label_names,
            metrics={k: v for k, v in metrics.items() if k.endswith(("accuracy", "f1", "loss"))},
            loading_snippet=text_loading_snippet(training_args.output_dir, tuning_args.use_peft, label_names),
            train_runtime_s=clock.seconds,
        )
        write_model_card(training_args.output_dir, summary)
        if tuning_args.merge_adapter:
            merged_dir = write_merged_model(training_args.output_dir, label_names)
            snippet = text_loading_snippet(merged_dir, adapter=False)
            write_model_card(merged_dir, replace(summary, library_name="transformers", loading_snippet=snippet))
        if push:
            push_run(training_args.output_dir, push, merged=tuning_args.push_merged)
    return metrics


if __name__ == "__main__":
    run_cli(main)()
