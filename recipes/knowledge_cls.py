"""Text classification with external knowledge injected into a BERT-family encoder, with HF Trainer.

    accelerate launch recipes/knowledge_cls.py --inject add --unfreeze-last 2   # offline demo: MiniLM + VADER on tweets
    accelerate launch recipes/knowledge_cls.py --config recipes/configs/knowledge_cls/concat_vader.yaml
    python recipes/knowledge_cls.py --help                                       # same as a one-process launch

Features (flag):
- injection point (--inject): add = entity vectors projected and added to the token embeddings;
  concat = example features concatenated with [CLS] before an MLP; gate = learned gate between text
  and external features; none = the text-only control
- knowledge sources (--knowledge_file, one or more; .npy + keys, .safetensors, word2vec/GloVe or
  tab-separated text); default: the VADER lexicon shipped in vaderSentiment
- mentions from a span column (--entity_column) or by exact word matching of the table's keys;
  per-example features from columns of floats or IDs looked up in the table (--knowledge_column)
- the knowledge table is frozen unless --train_knowledge; unknown entities get a zero vector or a
  learned one (--unknown_entity learned) and are counted in metrics.json and the model card
- everything of bert_cls.py: --unfreeze_last k, --head_lr, --layer_decay, LoRA (--use_peft), Hub or
  local data, and every TrainingArguments flag

Writes to --output_dir: the model (a ``ftpeft-knowledge`` transformers model: reload it with
``AutoModelForSequenceClassification`` after ``import ftpeft``) + tokenizer, or with --use_peft the adapter
plus the merged model in merged/; knowledge_keys.txt (row i+2 of the table = line i), run_args.yaml,
freeze_report.json, metrics.json, confusion_matrix.png, classification_report.md and a model card.
"""

from __future__ import annotations

from ftpeft.core.config import RunArguments, parse_args
from ftpeft.core.errors import FtpeftError, run_cli
from ftpeft.knowledge.args import KnowledgeArguments
from ftpeft.text.args import ModelArguments, TextDataArguments
from ftpeft.tuning.args import TuningArguments

# Defaults that make the bare command useful on 2 CPU cores; YAML and the command line override them.
RECIPE_DEFAULTS = {
    "output_dir": "outputs/knowledge_cls",
    "num_train_epochs": 1.0,
    "learning_rate": 5e-5,
    "head_lr": 1e-3,  # the injection/fusion modules and the head are new: they need a larger LR
    "unfreeze_last": "2",
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
KEYS_FILE = "knowledge_keys.txt"


def parse(argv: list[str] | None = None):
    from transformers import TrainingArguments

    return parse_args(
        (ModelArguments, TextDataArguments, TuningArguments, KnowledgeArguments, RunArguments, TrainingArguments),
        argv,
        RECIPE_DEFAULTS,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    model_args, data_args, tuning_args, knowledge_args, run_args, training_args = args
    if tuning_args.cache_frozen:  # 'add' changes the embeddings' output, and concat/gate need their own cache path
        raise FtpeftError("--cache_frozen is not supported by knowledge_cls; use recipes/bert_cls.py for it.")
    # heavy imports after parsing keep --help instant
    from pathlib import Path

    import torch
    from transformers import set_seed

    from ftpeft.core.card import RunSummary, write_model_card
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
    from ftpeft.core.trainer import FtpeftTrainer, run_metrics
    from ftpeft.knowledge.data import (
        KnowledgeCollator,
        knowledge_layout,
        knowledge_report,
        knowledge_stats,
        tokenize_with_knowledge,
    )
    from ftpeft.knowledge.model import build_knowledge_model, newly_initialised_parameters, set_knowledge_trainable
    from ftpeft.knowledge.table import load_knowledge_table, vader_lexicon_path
    from ftpeft.text.data import dataset_description, load_text_classification_data
    from ftpeft.text.modeling import base_model_name, load_tokenizer, resolve_model_path
    from ftpeft.tuning.lora import MERGED_DIR, apply_lora, build_lora_config

    # --- 1. checks before any work --------------------------------------------------------------------
    setup_logging(training_args)
    resume_from = start_run(training_args, run_args)
    push = validate_push_args(training_args)  # we push once, after everything is saved locally
    model_path = resolve_model_path(model_args)
    set_seed(training_args.seed)
    inject = knowledge_args.inject

    # --- 2. knowledge and data ------------------------------------------------------------------------
    table = None
    if inject != "none" and (knowledge_args.knowledge_file or not knowledge_args.knowledge_column):
        files = knowledge_args.knowledge_file or [str(vader_lexicon_path())]
        table = load_knowledge_table(files, knowledge_args.knowledge_dim)
        logger.info("knowledge: %d keys x %d dims from %s", len(table.keys), table.dim, table.sources)
    tokenizer = load_tokenizer(model_args, model_path)
    with training_args.main_process_first(desc="loading and tokenising"):
        datasets, label_names, text_columns = load_text_classification_data(
            data_args, training_args.seed, model_args.cache_dir
        )
        layout = knowledge_layout(datasets, knowledge_args)
        tokenized = tokenize_with_knowledge(
            datasets, tokenizer, text_columns, data_args.max_seq_length, table, layout, knowledge_args,
            data_args.preprocessing_num_workers,
        )  # fmt: skip
    stats = knowledge_stats(tokenized)
    knowledge_metrics, knowledge_notes = knowledge_report(stats, knowledge_args.unknown_entity)
    logger.info("data: %s, labels %s", {k: len(v) for k, v in tokenized.items()}, label_names)
    for note in knowledge_notes:
        logger.info("%s", note)

    # --- 3. model, freezing or LoRA ----------------------------------------------------------------------
    vectors = None if table is None else torch.from_numpy(table.vectors)
    model = build_knowledge_model(
        model_path,
        label_names,
        vectors,
        inject_mode=inject,
        unknown_entity=knowledge_args.unknown_entity,
        train_knowledge=knowledge_args.train_knowledge,
        fusion_hidden_size=knowledge_args.fusion_hidden_size,
        knowledge_sources=table.sources if table else [],
        **(layout.model_settings() if inject != "none" else {}),
    )
    newly_initialised = newly_initialised_parameters(model)  # injection, fusion, head: always trained
    k = tuning_args.unfreeze_last_k
    if tuning_args.use_peft:
        lora_config = build_lora_config(
            model, tuning_args.lora_r, tuning_args.lora_alpha, tuning_args.lora_dropout,
            tuning_args.lora_target_modules, tuning_args.lora_layers, k or 0, newly_initialised,
        )  # fmt: skip
        model = apply_lora(model, lora_config)
        tuning = f"LoRA r={tuning_args.lora_r} on {sorted(lora_config.target_modules)}; saved with it: {lora_config.modules_to_save}"
    else:
        unfreeze_last(model, k, tuning_args.train_embeddings)
        for name, param in model.named_parameters():
            if name in newly_initialised:
                param.requires_grad_(True)
        tuning = f"--unfreeze_last {tuning_args.unfreeze_last}"
    set_knowledge_trainable(model, knowledge_args.train_knowledge)  # the table is data unless asked
    tuning += f"; --inject {inject}, knowledge table {'trained' if knowledge_args.train_knowledge else 'frozen'}"
    report = freeze_report(model, tuning)
    logger.info("%s", report.summary())
    if training_args.should_save:
        save_run_config(training_args.output_dir, args.resolved)
        report.save(training_args.output_dir)

    # --- 4. train ------------------------------------------------------------------------------------------
    trainer = FtpeftTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=KnowledgeCollator(tokenizer),
        compute_metrics=make_compute_metrics(label_names),
        head_lr=tuning_args.head_lr,
        layer_decay=tuning_args.layer_decay,
        adapter_lr=tuning_args.lora_lr if tuning_args.use_peft else None,
    )
    with Stopwatch() as clock:
        train_result = trainer.train(resume_from_checkpoint=resume_from)

    # --- 5. evaluate, save, card, push -----------------------------------------------------------------------
    save_model_atomically(trainer, training_args.output_dir)
    metrics = evaluate_and_report(
        trainer, tokenized["validation"], tokenized.get("test"), label_names, training_args.output_dir,
        {**run_metrics(train_result), **knowledge_metrics},
    )  # fmt: skip
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        if table is not None:
            (output_dir / KEYS_FILE).write_text("\n".join(table.keys) + "\n", encoding="utf-8")
        reload_dir = output_dir
        if tuning_args.use_peft:  # the wrapper is not on the Hub, so ship the merged model as well
            reload_dir = output_dir / MERGED_DIR
            trainer.model.merge_and_unload().save_pretrained(reload_dir)
            tokenizer.save_pretrained(reload_dir)
            if table is not None:
                (reload_dir / KEYS_FILE).write_text("\n".join(table.keys) + "\n", encoding="utf-8")
        trainable, total = count_parameters(trainer.model)
        summary = RunSummary(
            recipe="knowledge_cls",
            base_model=base_model_name(model_args),
            library_name="transformers",
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
            loading_snippet=loading_snippet(str(reload_dir), layout),
            train_runtime_s=clock.seconds,
            tags=["knowledge-injection", f"inject-{inject}"],
            notes=knowledge_notes,
        )
        write_model_card(training_args.output_dir, summary)
        if reload_dir != output_dir:
            write_model_card(reload_dir, summary)
        if push:  # with LoRA the merged model: the adapter alone cannot be rebuilt (its wrapper base is not on the Hub)
            push_run(training_args.output_dir, push, merged=tuning_args.use_peft)
    return metrics


def loading_snippet(model_dir: str, layout) -> str:
    lines = [
        "import ftpeft  # registers the ftpeft-knowledge model type",
        "from ftpeft.knowledge import KnowledgeTable, knowledge_batch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        f'model = AutoModelForSequenceClassification.from_pretrained("{model_dir}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{model_dir}")',
    ]
    if layout.token_knowledge:
        lines += [
            f'keys = KnowledgeTable.from_keys_file("{model_dir}/knowledge_keys.txt")  # row i + 2 = line i',
            'batch = knowledge_batch(tokenizer, ["great film"], keys)  # or spans=[[(start, end, key), ...]]',
        ]
    else:
        lines.append('batch = tokenizer(["great film"], return_tensors="pt")')
    if layout.id_columns or layout.vector_columns:
        lines.append("# add example_knowledge_ids (B, ID columns) and/or knowledge_vectors (B, floats) as in training")
    lines.append("logits = model(**batch).logits")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)()
