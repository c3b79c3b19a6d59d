"""The strategy ladder: which fine-tuning strategy for this data? Measured, within a time budget.

    accelerate launch recipes/ladder.py --time_budget 20m                  # offline demo: MiniLM on tweets
    python recipes/ladder.py --modality image --time_budget 20m            # offline demo: EfficientNet-Lite0, MNIST
    ftpeft ladder --train_file train.csv --validation_file val.csv --rungs all --seeds 3

Features (flag):
- transfer probe: pooled features of every layer (text: mean and [CLS]; images: every stage) from one frozen
  pass, a logistic regression per layer on validation -> transfer_curve.png / .md
- rungs (--rungs): probe_head, head_only, last_k_small/large (k from the probe curve), lora, full;
  'all' adds lp_ft and gradual; each a real run of bert_cls.py / image_cls.py with the command that reproduces it
- budget (--time_budget): costs estimated from the probe's timed pass and the data size, calibrated as rungs
  finish; cheapest first; what does not fit is skipped, with the reason
- choice on validation only (--metric accuracy|macro_f1, --tolerance); test is shown, never used to choose;
  --seeds N gives mean ± sd
- resumable: the same command into the same --output_dir skips finished rungs
- preemptible (--preemption_signals): a signal stops it with exit 75 and OUTPUT_DIR/.preempted; the same command with
  --resume_from_checkpoint auto resumes the interrupted rung from its checkpoint, with the time spent off the budget
- every data, model and TrainingArguments flag of the recipe it runs (--modality text|image, default: inferred)

Writes to --output_dir: ladder.md, ladder.json, ladder.png, transfer_curve.png/.md, probe/, rungs/<rung>-seed<s>/.
"""

from __future__ import annotations

from ftpeft.core.errors import run_cli


def parse(argv: list[str] | None = None):
    """(modality, parsed flags) of a ladder command, without running it."""
    import sys

    from ftpeft.ladder.run import parse_ladder_args  # the parser depends on --modality, so it lives with the ladder

    return parse_ladder_args(list(sys.argv[1:] if argv is None else argv))


def main(argv: list[str] | None = None) -> dict:
    from ftpeft.ladder.run import run_ladder

    return run_ladder(argv)


if __name__ == "__main__":
    run_cli(main)()
