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
- everything of bert_cls.py: --unfreeze_last k, --head_lr, --layer_decay, --lp_ft, --gradual_unfreeze, LoRA (--use_peft),
  --class_weights, Hub or local data, the data-quality report (--drop_duplicates, --strict_data), and every
  TrainingArguments flag (the readout is [CLS] + pooler)

Writes to --output_dir: the model (a ``ftpeft-knowledge`` transformers model: reload it with
``AutoModelForSequenceClassification`` after ``import ftpeft``) + tokenizer, or with --use_peft the adapter
plus the merged model in merged/; knowledge_keys.txt (row i+2 of the table = line i), run_args.yaml,
freeze_report.json, data_report.json, metrics.json, confusion_matrix.png, classification_report.md and a model card.
"""

from __future__ import annotations

from ftpeft.core.config import RunArguments, parse_args
from ftpeft.core.errors import run_cli
from ftpeft.knowledge.args import KnowledgeArguments
from ftpeft.knowledge.job import DEFAULTS  # the bare command's defaults (offline demo on 2 CPU cores)
from ftpeft.text.args import ModelArguments, TextDataArguments
from ftpeft.tuning.args import TuningArguments

ARGUMENTS = (ModelArguments, TextDataArguments, TuningArguments, KnowledgeArguments, RunArguments)


def parse(argv: list[str] | None = None):
    from transformers import TrainingArguments

    return parse_args((*ARGUMENTS, TrainingArguments), argv, DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    # imported after parsing: --help and bad flags load no model or data code
    from ftpeft.knowledge.job import train_knowledge_classifier

    return train_knowledge_classifier(*args, config=args.resolved)


if __name__ == "__main__":
    run_cli(main)()
