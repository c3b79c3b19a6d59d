"""The knowledge-classification job: an encoder with external knowledge injected, trained with HF Trainer.

``train_knowledge_classifier(...)`` is one run, called by ``recipes/knowledge_cls.py`` and by the library.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ftpeft.core.config import RunArguments
from ftpeft.core.errors import FtpeftError
from ftpeft.hub_code.knowledge_injection import KEYS_FILE
from ftpeft.knowledge.args import KnowledgeArguments
from ftpeft.text.args import ModelArguments, TextDataArguments
from ftpeft.text.job import TEXT_LR_DEFAULTS, TEXT_TRAINER_DEFAULTS
from ftpeft.tuning.args import TuningArguments

# The bare command's defaults: the offline demo (MiniLM + VADER on tweets) on 2 CPU cores.
DEFAULTS: dict[str, Any] = {
    **TEXT_TRAINER_DEFAULTS,
    **TEXT_LR_DEFAULTS,  # bert_cls.py's: the text-only arm of a comparison is the strong one (head_lr also
    # covers the new injection/fusion modules); this recipe's own validation sweep chose the same values
    # (benchmarks/results/partial_tuning_knowledge.md)
    "output_dir": "outputs/knowledge_cls",
    "unfreeze_last": "2",
}
logger = logging.getLogger("ftpeft")


def train_knowledge_classifier(
    model_args: ModelArguments,
    data_args: TextDataArguments,
    tuning_args: TuningArguments,
    knowledge_args: KnowledgeArguments,
    run_args: RunArguments,
    training_args,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Train, evaluate and save one knowledge-injection classifier; returns the final metrics."""
    import torch

    from ftpeft.core.lifecycle import ModelDescription, start_run
    from ftpeft.core.metrics import make_compute_metrics
    from ftpeft.core.outputs import atomic_write_text
    from ftpeft.core.trainer import FtpeftTrainer
    from ftpeft.knowledge.data import (
        KnowledgeCollator,
        knowledge_layout,
        knowledge_report,
        knowledge_stats,
        tokenize_with_knowledge,
    )
    from ftpeft.knowledge.model import build_knowledge_model, newly_initialised_parameters, set_knowledge_trainable
    from ftpeft.knowledge.table import load_knowledge_table, vader_lexicon_path
    from ftpeft.labels.loss import loss_weights_for_run
    from ftpeft.text.data import dataset_description, load_tokenized_data
    from ftpeft.text.modeling import base_model_name, check_max_seq_length, resolve_model_path
    from ftpeft.tuning.apply import apply_tuning
    from ftpeft.tuning.lora import MERGED_DIR
    from ftpeft.tuning.schedules import staged_unfreezing

    tuning_args.require_supported("knowledge_cls", peft=True, cache=False)
    if model_args.pooling == "mean":
        raise FtpeftError("--pooling mean: not supported by knowledge_cls (its fusion reads [CLS] + pooler); use cls.")
    run = start_run("knowledge_cls", config, training_args, run_args, flags=tuning_args.engine_dependent_flags)
    model_path = resolve_model_path(model_args)
    check_max_seq_length(model_args, model_path, data_args.max_seq_length)
    inject = knowledge_args.inject

    # --- knowledge and data ----------------------------------------------------------------------------
    table = None
    if inject != "none" and (knowledge_args.knowledge_file or not knowledge_args.knowledge_column):
        files = knowledge_args.knowledge_file or [str(vader_lexicon_path())]
        table = load_knowledge_table(files, knowledge_args.knowledge_dim)
        logger.info("knowledge: %d keys x %d dims from %s", len(table.keys), table.dim, table.sources)

    def encode(raw, tokenizer, text_columns, max_seq_length):
        return tokenize_with_knowledge(
            raw, tokenizer, text_columns, max_seq_length, table, knowledge_layout(raw, knowledge_args),
            knowledge_args, data_args.preprocessing_num_workers,
        )  # fmt: skip

    data = load_tokenized_data(model_args, model_path, data_args, training_args, encode)
    run.report_data(data.report)
    run.record("max_seq_length", data_args.max_seq_length, data.max_seq_length, data.max_seq_length_why)
    run.record("long_texts", data_args.long_texts, "truncate", data.windows_why)  # its inputs are not windowed
    target = data.target
    run.record("problem_type", data_args.problem_type, target.short_name, target.why)
    run.plan_stopping(len(data.tokenized["train"]), len(data.tokenized["validation"]), target.problem_type)
    layout = knowledge_layout(data.raw, knowledge_args)
    knowledge_metrics, knowledge_notes = knowledge_report(
        knowledge_stats(data.tokenized), knowledge_args.unknown_entity
    )
    for note in knowledge_notes:
        logger.info("%s", note)

    # --- model and tuning ------------------------------------------------------------------------------
    model = build_knowledge_model(
        model_path,
        data.label_names,
        None if table is None else torch.from_numpy(table.vectors),
        target,
        inject_mode=inject,
        unknown_entity=knowledge_args.unknown_entity,
        train_knowledge=knowledge_args.train_knowledge,
        fusion_hidden_size=knowledge_args.fusion_hidden_size,
        knowledge_sources=table.sources if table else [],
        text_columns=data.text_columns,
        entity_column=knowledge_args.entity_column,
        **(layout.model_settings() if inject != "none" else {}),
    )
    newly_initialised = newly_initialised_parameters(model)
    tuning = apply_tuning(
        model,
        tuning_args,
        newly_initialised,  # injection, fusion, head: always trained
        then=lambda m: set_knowledge_trainable(m, knowledge_args.train_knowledge),  # the table is data unless asked
    )
    model = tuning.model
    # --lp_ft / --gradual_unfreeze: the encoder's groups join at their steps; injection, fusion and head from step 0
    unfreezing = staged_unfreezing(tuning_args, tuning, newly_initialised, open_ended=run.stopping is not None)
    class_weights, pos_weight, loss_note = loss_weights_for_run(
        run, target, tuning_args.class_weights, data_args.pos_weight, data.tokenized["train"]["labels"]
    )
    run.save_config(tuning.freeze)

    # --- train -----------------------------------------------------------------------------------------
    trainer = FtpeftTrainer(
        model=model,
        args=training_args,
        train_dataset=data.tokenized["train"],
        eval_dataset=data.tokenized["validation"],
        processing_class=data.tokenizer,
        data_collator=KnowledgeCollator(data.tokenizer),
        compute_metrics=make_compute_metrics(data.label_names, target),
        head_lr=tuning_args.head_lr,
        layer_decay=tuning_args.layer_decay,
        adapter_lr=tuning_args.lora_lr if tuning_args.use_peft else None,
        layers=tuning.layers,
        class_weights=class_weights,
        target=target,
        pos_weight=pos_weight,
    )
    if unfreezing:
        trainer.add_callback(unfreezing)
    # a checkpoint predicts as the final model does: its pipeline finds the knowledge ids through these keys
    keys_text = "\n".join(table.keys) + "\n" if table is not None else None
    if keys_text:
        run.checkpoint_files[KEYS_FILE] = keys_text
    train_metrics = run.train(trainer)
    tuning_text = unfreezing.describe(tuning.description) if unfreezing else tuning.description
    tuning_text += f"; --inject {inject}, knowledge table "
    tuning_text += "trained" if knowledge_args.train_knowledge else "frozen"

    # --- evaluate, save, card, push ---------------------------------------------------------------------
    if keys_text and run.is_main:
        atomic_write_text(run.output_dir / KEYS_FILE, keys_text)

    def merged_export() -> tuple[Path, str]:  # the wrapper is not on the Hub, so ship the merged model as well
        merged_dir = run.output_dir / MERGED_DIR
        trainer.model.merge_and_unload().save_pretrained(merged_dir)
        data.tokenizer.save_pretrained(merged_dir)
        if keys_text:
            atomic_write_text(merged_dir / KEYS_FILE, keys_text)
        return merged_dir, loading_snippet(str(merged_dir), layout, knowledge_args.entity_column)

    reload_dir = run.output_dir / MERGED_DIR if tuning_args.use_peft else run.output_dir
    description = ModelDescription(
        base_model=base_model_name(model_args),
        library_name="transformers",
        pipeline_tag="text-classification",
        tuning=tuning_text,
        dataset=dataset_description(data_args),
        hub_dataset=data_args.dataset_name,
        loading_snippet=loading_snippet(str(reload_dir), layout, knowledge_args.entity_column),
        tags=["knowledge-injection", f"inject-{inject}"],
        notes=[*knowledge_notes, *([loss_note] if loss_note else [])],
    )
    return run.finish(
        trainer,
        data.tokenized,
        data.label_names,
        description,
        {**train_metrics, **knowledge_metrics},
        merged_export=merged_export if tuning_args.use_peft else None,
        # with LoRA the merged model: the adapter alone cannot be rebuilt (its wrapper base is not on the Hub)
        push_merged=tuning_args.use_peft,
        target=target,
        threshold_rule=data_args.threshold_rule(),
    )


def loading_snippet(model_dir: str, layout, entity_column: str | None = None) -> str:
    """How to load the model without ftpeft: its custom pipeline (knowledge_injection.py, saved with the weights)
    finds the knowledge of a raw text; a run trained on columns takes a dict with them."""
    lines = [
        "from transformers import pipeline",
        "# knowledge_injection.py, saved with the model: the model and its text-to-knowledge step",
        f'classifier = pipeline(model="{model_dir}", trust_remote_code=True)',
    ]
    columns = {}
    if entity_column:
        columns[entity_column] = [{"start": 0, "end": 5, "key": "great"}]
    columns.update({column: "ID" for column in layout.id_columns})
    columns.update({column: [0.0] * width for column, width in layout.vector_columns.items()})
    example = {"text": "great film", **columns} if columns else "great film"
    lines.append(f"scores = classifier({example!r}, truncation=True, top_k=None)")
    lines.append("print(scores)")
    return "\n".join(lines)
