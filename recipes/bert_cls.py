"""BERT-family text classification with HF Trainer: partial unfreezing, head/backbone LRs, layer decay, LoRA.

    accelerate launch recipes/bert_cls.py --unfreeze-last 4          # offline demo: MiniLM on tweets
    accelerate launch recipes/bert_cls.py --config recipes/configs/bert_cls/sst2.yaml --learning_rate 3e-5
    python recipes/bert_cls.py --help                                  # same as a one-process launch

Features (flag):
- only the top k encoder layers + pooler + head train (--unfreeze_last k; 0 = the readout: pooler + head,
  all = full); embeddings stay frozen unless --train_embeddings
- the readout (--pooling auto|cls|mean): [CLS] + pooler (the stock model) or mean pooling over tokens; auto
  takes mean for a frozen encoder (k = 0) of a mean-pooled sentence-transformers checkpoint (the demo's MiniLM)
- a class-weighted loss for imbalanced labels (--class_weights balanced|none|FILE)
- a separate LR for the new head (--head_lr) and layer-wise LR decay (--layer_decay)
- LoRA adapters with the head saved alongside (--use_peft, --lora_r, --lora_layers, --merge_adapter)
- frozen-prefix activation cache: the frozen bottom runs once, only the top k layers train (--cache_frozen)
- staged unfreezing in one run: LP-FT, the readout first, then the top k layers (--lp_ft, --lp_fraction), or
  gradual unfreezing, one more layer per epoch, top first (--gradual_unfreeze, --unfreeze_every)
- hyper-parameter search (--hp_search N, --hp_search_fields, --hp_search_metric): Optuna trials of learning_rate,
  head_lr, layer_decay (+ LoRA rank/alpha/LR, depth where asked) on the validation split, reusing one --cache_frozen
  cache; then the best settings train once (needs pip install -e '.[tune]')
- data: Hub (--dataset_name), local csv/json/parquet (--train_file ...), or the offline demo tweets
- a data-quality report per split: rows read, dropped (blank text, no label), duplicates (--drop_duplicates
  drops them), rows also in train (leakage), labels, the share cut at --max_seq_length; --strict_data fails
  on any drop or leakage
- trains until validation stops improving (--num_train_epochs auto, the default: --early_stopping_patience,
  --auto_max_epochs, --metric_for_best_model) and keeps the best checkpoint; --num_train_epochs N trains N epochs
- truncates at the training texts' 99th-percentile token length (--max_seq_length auto, the default)
- every TrainingArguments flag (--learning_rate, --bf16, --push_to_hub, --report_to, ...)

Writes to --output_dir: the model + tokenizer (or adapter), run_args.yaml, freeze_report.json,
data_report.json, metrics.json, confusion_matrix.png, classification_report.md and a model card (README.md); with --hp_search also
hp_search.md (the trials), hp_search.png and best.yaml (reruns with --config best.yaml).
"""

from __future__ import annotations

from ftpeft.core.config import RunArguments, parse_args
from ftpeft.core.errors import run_cli
from ftpeft.search.args import SearchArguments
from ftpeft.text.args import ModelArguments, TextDataArguments
from ftpeft.text.job import DEFAULTS  # the bare command's defaults (offline demo on 2 CPU cores)
from ftpeft.tuning.args import TuningArguments


def parse(argv: list[str] | None = None):
    from transformers import TrainingArguments

    return parse_args(
        (ModelArguments, TextDataArguments, TuningArguments, SearchArguments, RunArguments, TrainingArguments),
        argv,
        DEFAULTS,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    model_args, data_args, tuning_args, search_args, run_args, training_args = args
    search_args.check_with(tuning_args, training_args)
    # imported after parsing: --help and bad flags load no model or data code
    if search_args.hp_search:
        from ftpeft.text.search import search_then_train

        return search_then_train(args, parse)
    from ftpeft.text.job import train_classifier

    return train_classifier(model_args, data_args, tuning_args, run_args, training_args, config=args.resolved)


if __name__ == "__main__":
    run_cli(main)()
