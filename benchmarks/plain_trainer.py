"""The baseline: what users write by hand today (the run_glue way) -- a stock Trainer, full fine-tuning.

    python benchmarks/plain_trainer.py --model PATH --output_dir DIR [--train_samples 2000 --epochs 1]

Same data as the ftpeft recipe's offline demo (the loader is shared so the rows are identical), no ftpeft
model, optimizer or Trainer code. Writes metrics.json with the same keys as the recipes.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_samples", type=int, default=2000)
    parser.add_argument("--test_samples", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument(
        "--seed", type=int, default=42, help="training seed and validation-split seed, as in the recipes"
    )
    args = parser.parse_args(argv)

    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from ftpeft.text.demo import demo_tweets

    set_seed(args.seed)
    raw = demo_tweets(["negative", "positive"], args.train_samples, args.test_samples)
    raw = raw.class_encode_column("label")
    raw["train"] = raw["train"].train_test_split(test_size=0.1, seed=args.seed, stratify_by_column="label")["train"]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenized = raw.map(lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_seq_length), batched=True)
    tokenized = tokenized.remove_columns(["text"])
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128,
        warmup_steps=0.06,
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        seed=args.seed,
        average_tokens_across_devices=False,
    )

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    start = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - start
    test = trainer.evaluate(tokenized["test"], metric_key_prefix="test")
    metrics = {f"train_{k}" if not k.startswith("train_") else k: v for k, v in result.metrics.items()}
    metrics.update(test)
    metrics["train_wall_s"] = wall
    metrics["train_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    Path(args.output_dir, "metrics.json").write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    sys.exit(main())
