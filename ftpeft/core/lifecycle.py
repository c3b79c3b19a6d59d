"""One run of one job, start to finish: the lifecycle every Trainer recipe shares.

    run = start_run("bert_cls", config, training_args, run_args)     # checks before any work
    run.plan_stopping(len(train))                                     # --num_train_epochs auto, once data is known
    run.save_config(tuning.freeze)                                    # run_args.yaml, resolved_settings.json, ...
    train_metrics = run.train(trainer)                                # timed, resumable; preempted: exit 75
    metrics = run.finish(trainer, splits, label_names, description)   # atomic save, reports, card, push

What differs between jobs (data, model, tuning) stays in the job's own module; this module owns the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ftpeft.core.card import RunSummary, write_model_card
from ftpeft.core.checkpoints import recover_set_aside
from ftpeft.core.config import RunArguments, command_line, save_resolved_config
from ftpeft.core.curves import CURVE_FILE, GroupLearningRates, save_learning_curve
from ftpeft.core.data_report import DATA_REPORT_FILE, DataReport
from ftpeft.core.engine import EngineReport, check_engine
from ftpeft.core.environment import environment
from ftpeft.core.freezing import FreezeReport, count_parameters
from ftpeft.core.hub import PushTarget, push_run, validate_push_args
from ftpeft.core.lock import LOCK_FILE, OutputLock
from ftpeft.core.metrics import classification_report_markdown, save_confusion_matrix
from ftpeft.core.model_code import CheckpointFiles
from ftpeft.core.outputs import (
    atomic_write_text,
    check_output_dir,
    last_complete_checkpoint,
    move_into_place,
    resolve_resume,
    write_json,
    writes_or_error,
)
from ftpeft.core.preemption import PREEMPTED_FILE, PreemptionGuard, clear_preempted, resume_argv
from ftpeft.core.settings import SETTINGS_FILE, derived_settings, resolve_settings
from ftpeft.core.stopping import (
    StoppingPlan,
    add_early_stopping,
    auto_epoch_changes,
    plan_auto_epochs,
    small_validation_warning,
    stop_line,
    stop_record,
)
from ftpeft.core.trainer import EpochTimer, run_metrics

logger = logging.getLogger("ftpeft")

RUN_ARGS_FILE = "run_args.yaml"
METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
REPORT_FILE = "classification_report.md"
# the metrics the card and the last lines show (label sets and numbers too; per-class/target ones only in metrics.json)
CARD_METRIC_ENDINGS = ("accuracy", "f1", "loss", "map", "rmse", "mae", "r2", "pearson", "spearman")
LABEL_NAMES_FILE = "label_names.json"  # next to a LoRA adapter: its base model's config does not know the labels
STAGING_DIR = ".ftpeft-staging"
# what a run writes to --output_dir before its first checkpoint: --resume_from_checkpoint auto starts afresh in a dir
# holding only these (a run preempted before its first checkpoint; skipped_images.txt is ftpeft.vision.data.SKIPPED_FILE)
PRE_TRAINING_FILES = frozenset(
    {
        RUN_ARGS_FILE,
        SETTINGS_FILE,
        DATA_REPORT_FILE,
        "freeze_report.json",
        "skipped_images.txt",
        PREEMPTED_FILE,
        LOCK_FILE,
    }
)


def setup_logging(training_args) -> None:
    import datasets
    import transformers

    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(logging.WARNING)
    datasets.utils.logging.set_verbosity(logging.WARNING)


@dataclasses.dataclass
class ModelDescription:
    """What a job tells the model card about its model; the run fills in the rest."""

    base_model: str
    library_name: str  # transformers | peft | timm
    pipeline_tag: str  # text-classification | image-classification
    tuning: str
    dataset: str
    loading_snippet: str
    hub_dataset: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Run:
    """A started run: its arguments, where it resumes from, where it pushes, and what it resolved."""

    recipe: str
    config: dict[str, Any]  # the arguments as given (recipe defaults, YAML, command line): run_args.yaml
    training_args: Any
    resume_from: str | None
    push: PushTarget | None
    settings: dict[str, dict[str, Any]]  # what ftpeft derived: resolved_settings.json
    run_args: RunArguments = dataclasses.field(default_factory=RunArguments)
    stopping: StoppingPlan | None = None  # --num_train_epochs auto: the plan, once the data is known
    stop_record: dict[str, Any] | None = None  # when and why an auto run stopped
    train_runtime_s: float | None = None
    group_lrs: GroupLearningRates = dataclasses.field(default_factory=GroupLearningRates)
    data_report: DataReport | None = None  # data_report.json and the card's data table
    preemption: PreemptionGuard | None = None  # --preemption_signals, --max_time: stop at a checkpoint, exit 75
    lock: OutputLock | None = None  # rank 0's hold on --output_dir (OUTPUT_DIR/.ftpeft.lock)
    target: Any = None  # the labels' Target as saved (thresholds chosen), once ``finish`` has run
    # name -> text of the files every checkpoint gets beside Trainer's (a knowledge model's keys): ``CheckpointFiles``
    checkpoint_files: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def output_dir(self) -> Path:
        return Path(self.training_args.output_dir)

    @property
    def is_main(self) -> bool:
        return self.training_args.process_index == 0

    def hold_output_dir(self) -> None:
        """Rank 0 takes the output dir's lock (once): a second run on it is refused while this one lives."""
        if self.lock is None and self.is_main:
            self.lock = OutputLock.acquire(self.output_dir)

    def release(self) -> None:
        """The run is over (finished, stopped or failed): let go of the output dir and the preemption signals."""
        if self.lock is not None:
            self.lock.release()
        if self.preemption is not None:
            self.preemption.restore()

    def writing(self, what: str, any_oserror: bool = True):
        """A failed write in the block (a full disk, any OSError; with ``any_oserror=False``, where the block reads
        too, only a full disk, quota, read-only or I/O error) ends the run with one ``error:`` line (exit 2) that
        says how to finish it: ``outputs.writes_or_error``."""
        return writes_or_error(
            f"could not write {what} in {self.output_dir}",
            self.output_dir,
            lambda: rerun_advice(self.output_dir),
            any_oserror,
        )

    def record(self, name: str, given: Any, used: Any, why: str) -> None:
        """A choice the job made beyond TrainingArguments (a readout, class weights): logged, and kept in
        resolved_settings.json by ``save_config``."""
        logger.info("setting %s: %r -> %r (%s)", name, given, used, why)
        self.settings[name] = {"given": given, "used": used, "why": why}

    def plan_stopping(
        self, train_rows: int, validation_rows: int = 0, problem_type: str = "single_label_classification"
    ) -> None:
        """``--num_train_epochs auto``: resolve the cadence, cap and best-checkpoint settings for ``train_rows``
        training rows (``ftpeft.core.stopping``); ``train`` then stops early. A number of epochs changes nothing."""
        plan = plan_auto_epochs(self.training_args, self.run_args, train_rows, validation_rows, problem_type)
        if plan is None:
            if self.run_args.auto_epochs:  # an explicit --max_steps wins
                why = "--max_steps given: a fixed-length run, no early stopping"
                self.record("num_train_epochs", "auto", f"{self.training_args.max_steps} steps", why)
            return
        self.settings.update(
            resolve_settings(self.training_args, auto_epoch_changes(self.training_args, self.run_args, plan))
        )
        self.record("num_train_epochs", "auto", "until validation stops improving", plan.describe())
        warning = small_validation_warning(plan)
        if warning:
            logger.warning("%s", warning)
        self.stopping = plan

    def report_data(self, report: DataReport) -> None:
        """The data report: its summary line is logged (a warning when rows were dropped or leak), and it is
        kept for ``save_config`` (data_report.json) and the card."""
        log = logger.warning if report.problems() else logger.info
        log("%s", report.summary())
        self.data_report = report

    def save_config(self, freeze: FreezeReport | None = None) -> None:
        """run_args.yaml (reruns with --config), resolved_settings.json (with the software versions: ``environment``),
        freeze_report.json, data_report.json."""
        if not self.training_args.should_save:
            return
        self.settings["environment"] = {"given": None, "used": environment(), "why": "the software this run ran with"}
        self.hold_output_dir()
        with self.writing("the run's settings"):
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_resolved_config(self.output_dir / RUN_ARGS_FILE, self.config)
            write_json(self.output_dir / SETTINGS_FILE, self.settings)
            if freeze is not None:
                freeze.save(self.output_dir)
            if self.data_report is not None:
                self.data_report.save(self.output_dir)

    def train(self, trainer) -> dict[str, Any]:
        """``trainer.train`` (resuming where asked), timed; returns the train_* metrics. A preemption signal stops it
        at a checkpoint and exits 75 (``ftpeft.core.preemption``): the run goes no further."""
        self.hold_output_dir()
        epoch_timer = EpochTimer()
        trainer.add_callback(epoch_timer)
        trainer.add_callback(self.group_lrs)
        trainer.add_callback(EngineReport(trainer))
        files = CheckpointFiles(self.checkpoint_files)  # a checkpoint loads as the final model does
        # inside each save, before its seal (``ftpeft.core.checkpoints``); Trainer's state is read when it saves
        trainer.checkpoint_writers.append(lambda folder: files.on_save(trainer.args, trainer.state, trainer.control))
        if self.stopping is not None:
            add_early_stopping(trainer, self.stopping)
        start = time.perf_counter()
        try:
            if self.preemption is None:
                result = trainer.train(resume_from_checkpoint=self.resume_from)
            else:
                result = self.preemption.train(trainer, self.resume_from, self.output_dir)
        except BaseException:  # preempted (SystemExit 75) or failed: the run ends here
            self.release()
            raise
        self.train_runtime_s = time.perf_counter() - start
        metrics = run_metrics(result, epoch_timer)
        if self.stopping is not None:
            self.record_stop(stop_record(self.stopping, trainer))
            metrics.update({f"train_{key}": self.stop_record[key] for key in ("best_epoch", "stopped_epoch")})
        return metrics

    def record_stop(self, record: dict[str, Any]) -> None:
        """Log when and why an auto run stopped; resolved_settings.json gets the epochs its saved model trained."""
        self.stop_record = record
        logger.info("%s", stop_line(record))
        self.record("num_train_epochs", "auto", record["best_epoch"], stop_line(record))
        self.settings["stopping"] = {"given": None, "used": record, "why": "--num_train_epochs auto"}
        if self.training_args.should_save:
            write_json(self.output_dir / SETTINGS_FILE, self.settings)

    def finish(
        self,
        trainer,
        splits: dict[str, Any],
        label_names: list[str],
        description: ModelDescription,
        train_metrics: dict[str, Any],
        write_model: Callable[[Path, dict | None], None] | None = None,
        merged_export: Callable[[], tuple[Path, str]] | None = None,
        push_merged: bool = False,
        evaluation: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        target=None,
        threshold_rule=None,
    ) -> dict[str, Any]:
        """Save the model atomically, evaluate (validation, then test once), write reports and the card, push.

        ``target`` (``ftpeft.labels.target.Target``; default: one class per row of ``label_names``) is saved with the
        model: a regression's scaling folded into its output layer, a label set's thresholds chosen on validation
        (``threshold_rule``: ``LabelArguments.threshold_rule()``).

        ``write_model(folder, state_dict)`` saves the model into a folder on the main process (default: every
        rank calls ``trainer.save_model``); see ``save_model_atomically``. ``merged_export()`` writes a merged
        copy and returns (its folder, its loading snippet); it gets a card too, and ``push_merged`` pushes it
        instead of the output dir. ``evaluation(train_metrics)`` scores the run instead of ``evaluate_and_report`` on
        ``trainer`` (a float32-cached run scores from its cache).
        """
        from ftpeft.labels.scaling import folded_scaling
        from ftpeft.labels.target import save_target, single_label

        target = target or single_label(label_names)
        # numbers: the saved model outputs the target's units
        with self.writing("the final model"), folded_scaling(trainer.model, target):
            save_model_atomically(trainer, self.output_dir, write_model)
        with self.writing("the reports", any_oserror=False):  # the scoring reads (images, caches) as well
            if trainer.is_world_process_zero() and (self.output_dir / "adapter_config.json").is_file():
                write_json(self.output_dir / LABEL_NAMES_FILE, label_names)  # what `ftpeft predict` names classes by
            if evaluation is not None:
                scored = evaluation(train_metrics)
                metrics, target = scored if isinstance(scored, tuple) else (scored, target)
            else:
                metrics, target = evaluate_and_report(
                    trainer,
                    splits["validation"],
                    splits.get("test"),
                    label_names,
                    self.output_dir,
                    train_metrics,
                    target,
                    threshold_rule,
                )
        self.target = target
        if not trainer.is_world_process_zero():
            self.release()
            return metrics
        with self.writing("the reports"):
            save_target(self.output_dir, target)
            drawn = save_learning_curve(self.output_dir / CURVE_FILE, trainer.state.log_history, self.group_lrs.history)
        trainable, total = count_parameters(trainer.model)
        summary = RunSummary(
            recipe=self.recipe,
            command=command_line(),
            config=self.config,
            trainable_params=trainable,
            total_params=total,
            split_sizes={split: len(data) for split, data in splits.items()},
            label_names=label_names,
            metrics={k: v for k, v in metrics.items() if k.endswith(CARD_METRIC_ENDINGS)},
            train_runtime_s=self.train_runtime_s,
            learning_curve=drawn,
            data_quality=self.data_report.card_markdown() if self.data_report else "",
            per_output_results=per_output_results(self.output_dir, target),
            **dataclasses.asdict(description),
        )
        with self.writing("the model card"):
            write_model_card(self.output_dir, summary)
            if merged_export is not None:
                merged_dir, snippet = merged_export()
                save_target(merged_dir, target)
                merged = dataclasses.replace(summary, library_name="transformers", loading_snippet=snippet)
                write_model_card(merged_dir, merged)
        if self.push:
            push_run(self.output_dir, self.push, merged=push_merged)
        print(last_word(summary, self.output_dir, self.stop_record))
        self.release()
        return metrics


def start_run(
    recipe: str,
    config: dict[str, Any],
    training_args,
    run_args: RunArguments,
    keep_all_columns: bool = False,
    flags: Iterable[str] = (),
) -> Run:
    """Checks before any work: the engine asked for is the one accelerate set up (and can run the given ``flags``,
    ``TuningArguments.engine_dependent_flags``), the output dir, resume, Hub push; then the derived settings."""
    from transformers import set_seed

    setup_logging(training_args)
    # every rank says it is alive, so a DDP run that silently started one process is visible
    logger.warning(
        "process %d of %d (local %d)",
        training_args.process_index,
        training_args.world_size,
        training_args.local_process_index,
    )
    check_engine(training_args, flags)
    is_main = training_args.process_index == 0
    # a live run on the same dir is refused first (a dir that does not exist yet is taken at the first write)
    lock = OutputLock.acquire(training_args.output_dir) if is_main and Path(training_args.output_dir).is_dir() else None
    try:
        check_output_dir(training_args.output_dir, run_args.overwrite_output_dir, training_args.resume_from_checkpoint)
        # the main process puts back a checkpoint a killed save had set aside before any rank looks for one
        with training_args.main_process_first(local=False, desc="looking for a checkpoint"):
            if is_main and training_args.resume_from_checkpoint == "auto":
                recover_set_aside(training_args.output_dir)
            resume_from = resolve_resume(
                training_args.resume_from_checkpoint, training_args.output_dir, PRE_TRAINING_FILES
            )
        push = validate_push_args(training_args)  # we push once, after everything is saved locally
        changes = derived_settings(training_args, keep_all_columns=keep_all_columns, push_at_end=push is not None)
        settings = resolve_settings(training_args, changes)
        jit_checkpoint = getattr(training_args, "enable_jit_checkpoint", False)
        resume_command = command_line(resume_argv(sys.argv))
        preemption = PreemptionGuard.start(  # --max_time counts from here
            run_args.preemption_signals, resume_command, jit_checkpoint, run_args.max_time_seconds
        )
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if is_main and lock is not None:
        clear_preempted(training_args.output_dir)  # a requeue reads it: it belongs to the stop this run continues
    set_seed(training_args.seed)
    return Run(recipe, config, training_args, resume_from, push, settings, run_args, preemption=preemption, lock=lock)


def rerun_advice(output_dir: Path) -> str:
    """How to finish a run whose final save or reports could not be written."""
    found = last_complete_checkpoint(output_dir)
    if found is None:
        return "No checkpoint to resume from: free space, then rerun"
    return f"{found.name} is kept: free space, then rerun with --resume_from_checkpoint auto"


def save_model_atomically(
    trainer, output_dir: str | Path, write_model: Callable[[Path, dict | None], None] | None = None
) -> None:
    """Save into a staging dir, then rename each file into ``output_dir`` (all ranks call it).

    ``write_model(folder, state_dict)`` saves on the main process instead of ``trainer.save_model`` on every rank;
    ``state_dict`` is the full one gathered from the FSDP shards or ZeRO partitions, None when the model's own is whole.
    """
    output_dir = Path(output_dir)
    staging = output_dir / STAGING_DIR
    try:
        if write_model is None:
            trainer.save_model(str(staging))
        else:
            # FSDP and ZeRO-3 ranks hold pieces of each parameter: gathering the full weights is a collective that
            # every rank joins (accelerate gathers ZeRO-3 through the DeepSpeed engine, Trainer's model_wrapped)
            state_dict = None
            if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
                wrapped = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
                state_dict = trainer.accelerator.get_state_dict(wrapped)
            if trainer.is_world_process_zero():
                staging.mkdir(parents=True, exist_ok=True)
                write_model(staging, state_dict)
        trainer.accelerator.wait_for_everyone()
    except BaseException:
        if trainer.is_world_process_zero():  # nothing was moved into place: the half-written copy goes
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if trainer.is_world_process_zero():
        move_into_place(staging, output_dir)
    trainer.accelerator.wait_for_everyone()


def evaluate_and_report(
    trainer,
    eval_dataset,
    test_dataset,
    label_names: list[str],
    output_dir: str | Path,
    extra_metrics: dict[str, float] | None = None,
    target=None,
    threshold_rule=None,
):
    """Final validation (and test) metrics -> metrics.json, and the reports of the problem type: the confusion matrix
    PNG and per-class report (one class per row), the per-label table (label sets, whose thresholds are chosen here,
    on validation only) or the per-target table and scatter plot (numbers).

    Every rank computes (predictions are gathered); only the main process writes. Returns the metrics, and with a
    ``target`` (a Target), (metrics, the target with its thresholds).
    """
    if target is not None and not target.is_single_label:
        from ftpeft.labels.evaluation import ThresholdRule, evaluate_target

        rule = threshold_rule or ThresholdRule()
        return evaluate_target(trainer, eval_dataset, test_dataset, target, output_dir, extra_metrics, rule)
    metrics: dict[str, float] = dict(extra_metrics or {})
    metrics.update(trainer.evaluate(eval_dataset, metric_key_prefix="eval"))
    report_split = "test" if test_dataset is not None else "eval"
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
    return metrics if target is None else (metrics, target)


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


def per_output_results(output_dir: Path, target) -> str:
    """The card's per-label (label sets) or per-target (numbers) table: the report the final evaluation wrote."""
    report = output_dir / REPORT_FILE
    if target.is_single_label or not report.is_file():
        return ""
    lines = report.read_text().splitlines()
    return "\n".join(["### " + lines[0].lstrip("# "), *lines[1:]]) if lines else ""


def last_word(summary: RunSummary, output_dir: Path, stop_record: dict[str, Any] | None = None) -> str:
    """What a finished run prints: headline metrics, time, parameters, where the files are, how to load them."""
    split = "test" if any(k.startswith("test_") for k in summary.metrics) else "eval"
    scores = ", ".join(
        f"{name} {summary.metrics[f'{split}_{name}']:.4f}"
        for name in ("accuracy", "macro_f1", "map", "rmse", "spearman")
        if f"{split}_{name}" in summary.metrics
    )
    runtime = f"{summary.train_runtime_s:.1f} s" if summary.train_runtime_s is not None else "n/a"
    main_files = sorted(
        p.name for p in output_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".bin"
    )
    load = summary.loading_snippet.strip().splitlines()
    return "\n".join(
        [
            f"done: {split} {scores} ({'the test split, scored once' if split == 'test' else 'no test split'})",
            *([stop_line(stop_record)] if stop_record else []),
            f"train time {runtime}; trainable params {summary.trainable_params:,} of {summary.total_params:,}",
            f"output: {output_dir} ({', '.join(main_files)})",
            "load it:",
            *(f"    {line}" for line in load),
        ]
    )
