"""What every classification recipe does around training: start checks, the files it writes, the finish."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ftpeft.core.config import save_resolved_config
from ftpeft.core.metrics import classification_report_markdown, save_confusion_matrix
from ftpeft.core.outputs import atomic_write_text, check_output_dir, move_into_place, resolve_resume, write_json

logger = logging.getLogger("ftpeft")

RUN_ARGS_FILE = "run_args.yaml"
METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
REPORT_FILE = "classification_report.md"


def setup_logging(training_args) -> None:
    import datasets
    import transformers

    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(logging.WARNING)
    datasets.utils.logging.set_verbosity(logging.WARNING)


def start_run(training_args, run_args) -> str | None:
    """Check the output dir before any work; returns the checkpoint to resume from (or None)."""
    # every rank says it is alive, so a DDP run that silently started one process is visible
    logger.warning(
        "process %d of %d (local %d)",
        training_args.process_index,
        training_args.world_size,
        training_args.local_process_index,
    )
    check_output_dir(training_args.output_dir, run_args.overwrite_output_dir, training_args.resume_from_checkpoint)
    return resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)


STAGING_DIR = ".ftpeft-staging"


def save_model_atomically(trainer, output_dir: str | Path) -> None:
    """``trainer.save_model`` into a staging dir, then rename each file into ``output_dir`` (all ranks call it)."""
    output_dir = Path(output_dir)
    staging = output_dir / STAGING_DIR
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        move_into_place(staging, output_dir)
    trainer.accelerator.wait_for_everyone()


def save_run_config(output_dir: str | Path, resolved: dict[str, Any]) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    save_resolved_config(Path(output_dir) / RUN_ARGS_FILE, resolved)


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def evaluate_and_report(
    trainer,
    eval_dataset,
    test_dataset,
    label_names: list[str],
    output_dir: str | Path,
    extra_metrics: dict[str, float] | None = None,
) -> dict:
    """Final validation (and test) metrics -> metrics.json, confusion matrix PNG and per-class report.

    Every rank computes (predictions are gathered); only the main process writes.
    """
    metrics: dict[str, float] = dict(extra_metrics or {})
    metrics.update(trainer.evaluate(eval_dataset, metric_key_prefix="eval"))
    report_split, _report_dataset = ("test", test_dataset) if test_dataset is not None else ("eval", eval_dataset)
    if test_dataset is not None:
        prediction = trainer.predict(test_dataset, metric_key_prefix="test")
        metrics.update(prediction.metrics)
    else:
        prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    predicted = np.asarray(logits).argmax(-1)
    references = np.asarray(prediction.label_ids)
    if trainer.is_world_process_zero():
        write_classification_reports(output_dir, metrics, references, predicted, label_names, report_split)
    return metrics


def write_classification_reports(output_dir, metrics: dict, references, predicted, label_names, prefix: str) -> None:
    """metrics.json, the confusion matrix PNG and the per-class report of split ``prefix`` (eval or test)."""
    output_dir = Path(output_dir)
    write_json(output_dir / METRICS_FILE, metrics)
    title = f"{prefix} accuracy {metrics.get(f'{prefix}_accuracy', float('nan')):.3f}"
    save_confusion_matrix(output_dir / CONFUSION_MATRIX_FILE, references, predicted, label_names, title)
    atomic_write_text(
        output_dir / REPORT_FILE,
        f"# Per-class results ({prefix} split, {len(references)} examples)\n\n"
        + classification_report_markdown(references, predicted, label_names),
    )
