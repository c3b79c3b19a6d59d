"""``--num_train_epochs auto``: train until the validation metric stops improving, and keep the best checkpoint.

Resolved once the training split's size is known, because the evaluation cadence depends on it::

    plan = plan_auto_epochs(training_args, run_args, train_rows=len(train))        # None unless auto
    changes = auto_epoch_changes(training_args, run_args, plan)                   # pure: SettingChanges
    resolve_settings(training_args, changes)                                       # core.settings applies them
    add_early_stopping(trainer, plan)                                             # transformers' early stopping

What it sets, unless the command line or --config set it (each change is logged and kept in
resolved_settings.json):

- **cadence**: evaluate (and checkpoint) every ``ceil(S / k)`` optimizer steps, S steps per epoch, with
  ``k = min(4, max(2, S // 25))`` evaluations per epoch: two in an epoch of fewer than 75 steps, three or four in
  longer ones, 25 steps apart at least (but in an epoch of under 50). Large data may peak inside the first epoch;
  small data converges in many short ones, where evaluations a whole epoch apart made the patience and the cooldown
  cost up to 2.15x the steps of the best fixed epoch count (``benchmarks/results/epochs.md``).
- **patience, then a cooldown**: after ``--early_stopping_patience`` evaluations without a better
  ``--metric_for_best_model`` (3; 2, one epoch, where an epoch is under 50 steps; twice that where validation has
  under 200 rows) the LR anneals linearly to 0 over
  ``--auto_cooldown`` (0.2) of the steps run so far
  (rounded up to whole evaluation intervals), and the run stops at the end of it. This is the decay phase of a
  warm-up/stable/decay schedule: a run at a constant LR has not annealed, and a fixed-length run's decay to 0
  buys it a point or more (``benchmarks/results/epochs.md``: constant LR without the cooldown trailed the best
  fixed epoch count by 1.4 to 1.6 test points). ``--auto_cooldown 0`` stops at the plateau.
- **which evaluation is saved** (``--auto_keep annealed``): the best one on validation, except that the end of the
  cooldown is kept when no earlier evaluation beat it by more than one standard error: the earlier best is the
  maximum of many noisy evaluations, and among models validation cannot tell apart the annealed one is kept (the
  ladder's tolerance rule, applied to checkpoints). For accuracy the error is the paired one of the two models'
  difference, from the validation rows where they disagree (McNemar): checkpoints of one run agree on most rows, so
  a small real lead is seen that one score's binomial error (2 points on 500 rows) hides, while models far apart
  (an evaluation half an epoch in against the annealed end) still need a large lead. The best evaluation's per-row
  correctness is packed into the callback's checkpointed state, so a resumed run compares the same rows. Other
  metrics use one binomial standard error of the best score where it is a share of rows (macro-F1, subset
  accuracy), none otherwise. ``--auto_keep best`` keeps the best evaluation, as ``load_best_model_at_end`` alone
  does. Validation cannot choose between the rules (the best evaluation's score is its maximum by construction);
  the test splits of the epochs benchmark can (``benchmarks/results/epochs.md``, "Which evaluation is saved").
- **cap**: ``--auto_max_epochs`` (20) and ``--auto_max_steps``, if validation never stops improving.
- **the best checkpoint**: ``load_best_model_at_end``; its direction comes from the metric registry
  (``ftpeft.core.metrics.METRICS``). The patience counter is restored on resume
  (``restore_callback_states_from_checkpoint``), and the best score is part of ``trainer_state.json``.
- **the LR schedule**: warm-up, then constant (``constant_with_warmup``). The stopping point is unknown, so a
  schedule that decays towards the cap would still be near its peak LR when the run stops, and one that decays
  over a guessed length would either stop before its decay or anneal a run that was still improving. A constant
  LR makes every evaluation a fair "stop here" candidate. ``--lr_scheduler_type`` given explicitly is kept, and
  then runs over the cap. A fractional ``--warmup_steps`` (a share of the run) becomes that share of one epoch:
  the share the one-epoch defaults were chosen with.

An explicit ``--max_steps`` wins: the run is the fixed-length run it asks for. ``--eval_strategy no`` with
``auto`` is refused: early stopping needs evaluations.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ftpeft.core.errors import FtpeftError
from ftpeft.core.metrics import chosen_metric, metric_spec, paired_standard_error, standard_error
from ftpeft.core.settings import SettingChange

logger = logging.getLogger("ftpeft")

EVALS_PER_EPOCH_MAX = 4
EVALS_PER_EPOCH_MIN = 2
MIN_STEPS_BETWEEN_EVALS = 25
# An epoch of fewer steps is evaluated twice with a patience of 2: one epoch without improvement, as the longer
# epochs' 3 evaluations of 3 or 4 per epoch are. At 3 evaluations of one per epoch, 500 training tweets and 2,000
# digits took 1.16x to 2.18x the chosen fixed counts' train time; at this rule 0.53x to 1.35x, within a test point
# on the mean (benchmarks/results/epochs.md).
SHORT_EPOCH_STEPS = EVALS_PER_EPOCH_MIN * MIN_STEPS_BETWEEN_EVALS  # 50: where S // 25 falls below the minimum
SHORT_EPOCH_PATIENCE = 2
# Under this many validation rows one standard error of accuracy is over 2 points: an early evaluation that reads
# high by chance is hard to beat, and stopped 500-tweet runs validated on 50 up to 6 points below their best fixed
# epoch count (benchmarks/results/epochs.md), so the patience doubles.
SMALL_VALIDATION_ROWS = 200
KEPT = {  # --auto_keep's choices (the first is its default): which evaluation is the saved model
    "annealed": "the end of the cooldown unless an earlier evaluation beat it by more than one standard error",
    "best": "the best checkpoint",
}
DEFAULT_KEEP = next(iter(KEPT))


def optimizer_steps_per_epoch(train_rows: int, training_args) -> int:
    """Optimizer steps in one epoch of ``train_rows`` rows, as Trainer counts them (each rank gets its share)."""
    per_rank_batches = math.ceil(train_rows / (training_args.per_device_train_batch_size * training_args.world_size))
    return max(math.ceil(per_rank_batches / training_args.gradient_accumulation_steps), 1)


def evaluation_steps(epoch_steps: int) -> int:
    """Optimizer steps between two evaluations: ``k = min(4, max(2, S // 25))`` per epoch of S steps."""
    per_epoch = min(EVALS_PER_EPOCH_MAX, max(EVALS_PER_EPOCH_MIN, epoch_steps // MIN_STEPS_BETWEEN_EVALS))
    return math.ceil(epoch_steps / per_epoch)


def default_patience(epoch_steps: int, patience: int, validation_rows: int = 0) -> int:
    """The patience of a run that did not choose one: ``patience`` (the flag's default, 3), or 2 evaluations (one
    epoch) where an epoch is under SHORT_EPOCH_STEPS steps; twice that on under SMALL_VALIDATION_ROWS validation
    rows (0: unknown)."""
    chosen = SHORT_EPOCH_PATIENCE if epoch_steps < SHORT_EPOCH_STEPS else patience
    return 2 * chosen if is_small_validation(validation_rows) else chosen


def is_small_validation(validation_rows: int) -> bool:
    """Under SMALL_VALIDATION_ROWS validation rows (0: unknown, not small)."""
    return 0 < validation_rows < SMALL_VALIDATION_ROWS


@dataclasses.dataclass(frozen=True)
class StoppingPlan:
    """What ``--num_train_epochs auto`` resolved to for one run."""

    epoch_steps: int
    eval_steps: int
    patience: int
    threshold: float
    cap_steps: int
    metric: str
    greater_is_better: bool
    cooldown: float = 0.0  # share of the steps so far that anneal the LR to 0 after the plateau (0: stop there)
    validation_rows: int = 0  # what the metric's noise is measured on (0: unknown)
    keep: str = DEFAULT_KEEP  # the saved model: the cooldown's end within one SE of the best, or "best"

    def describe(self) -> str:
        per_epoch = self.epoch_steps / self.eval_steps
        then = (
            f"then anneal the LR to 0 over {self.cooldown:g} of the steps run so far and stop"
            if self.cooldown
            else "then stop"
        )
        return (
            f"evaluate every {self.eval_steps} steps ({per_epoch:.3g} per epoch of {self.epoch_steps} steps); after "
            f"{self.patience} evaluations without a better validation {self.metric}, {then}; at most "
            f"{self.cap_steps} steps; keep {KEPT[self.keep]}"
        )


def plan_auto_epochs(
    training_args,
    run_args,
    train_rows: int,
    validation_rows: int = 0,
    problem_type: str = "single_label_classification",
) -> StoppingPlan | None:
    """The plan for an auto run on ``train_rows`` training rows; None where the run is not auto (a number of
    epochs, or an explicit ``--max_steps``, which wins). Refuses ``--eval_strategy no``. It stops on
    --metric_for_best_model, else on ``problem_type``'s default metric (HF's long name)."""
    if not run_args.auto_epochs or "max_steps" in run_args.given:
        return None
    if "eval_strategy" in run_args.given and str(getattr(training_args.eval_strategy, "value", "")) == "no":
        raise FtpeftError(
            "--num_train_epochs auto needs evaluations to stop on: drop --eval_strategy no, or give a number of epochs."
        )
    given = run_args.given
    metric = chosen_metric(
        training_args.metric_for_best_model if "metric_for_best_model" in given else None, problem_type
    )
    spec = metric_spec(metric)
    epoch_steps = optimizer_steps_per_epoch(train_rows, training_args)
    if "eval_strategy" in given and str(training_args.eval_strategy.value) == "epoch":
        eval_steps = epoch_steps
    elif "eval_steps" in given and training_args.eval_steps:
        eval_steps = _steps(training_args.eval_steps, epoch_steps * run_args.auto_max_epochs)
    else:
        eval_steps = evaluation_steps(epoch_steps)
    cap_steps = math.ceil(epoch_steps * run_args.auto_max_epochs)
    if run_args.auto_max_steps is not None:
        cap_steps = min(cap_steps, run_args.auto_max_steps)
    patience = run_args.early_stopping_patience
    if "early_stopping_patience" not in given:
        patience = default_patience(epoch_steps, patience, validation_rows)
    return StoppingPlan(
        epoch_steps=epoch_steps,
        eval_steps=eval_steps,
        patience=patience,
        threshold=run_args.early_stopping_threshold,
        cap_steps=cap_steps,
        metric=spec.name,
        greater_is_better=spec.greater_is_better,
        # the cooldown reshapes the constant schedule auto chooses; a schedule the user chose is left as it is
        cooldown=0.0 if "lr_scheduler_type" in given else run_args.auto_cooldown,
        validation_rows=validation_rows,
        keep=run_args.auto_keep,
    )


def small_validation_warning(plan: StoppingPlan) -> str | None:
    """A line for a run whose validation split is too small to choose on, else None. On 50 validation tweets the
    best evaluation of one run was half an epoch in, 11 test points below its annealed end
    (benchmarks/results/epochs.md, auto_keep_best)."""
    rows = plan.validation_rows
    if not is_small_validation(rows) or not metric_spec(plan.metric).share:
        return None
    return (
        f"validation has {rows} rows: one row is {100 / rows:.1f} points of {plan.metric}, so the stopping point and "
        f"the saved model are chosen on noise (the patience is {plan.patience} evaluations); give a "
        f"--validation_file of a few hundred rows."
    )


def _steps(value: float, total: float) -> int:
    """An --eval_steps value: a float < 1 is a share of the run (here: of the cap)."""
    return max(1, math.ceil(value * total)) if value < 1 else int(value)


def auto_epoch_changes(training_args, run_args, plan: StoppingPlan) -> list[SettingChange]:
    """The TrainingArguments changes ``plan`` needs; pure (``ftpeft.core.settings.resolve_settings`` applies them)."""
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

    why_cadence = f"--num_train_epochs auto: {plan.describe()}"
    wanted: list[tuple[str, Any, str]] = [
        ("max_steps", plan.cap_steps, f"--num_train_epochs auto: the cap ({plan.cap_steps} steps)"),
        ("eval_strategy", IntervalStrategy.STEPS, why_cadence),
        ("eval_steps", plan.eval_steps, why_cadence),
        # a checkpoint at every evaluation: the best one is kept (with the latest, for resuming)
        ("save_strategy", SaveStrategy.STEPS, "--num_train_epochs auto: a checkpoint at every evaluation"),
        ("save_steps", plan.eval_steps, "--num_train_epochs auto: a checkpoint at every evaluation"),
        ("load_best_model_at_end", True, "--num_train_epochs auto: the saved model is the best evaluation's"),
        ("metric_for_best_model", plan.metric, f"--num_train_epochs auto: stops on validation {plan.metric}"),
        ("greater_is_better", plan.greater_is_better, f"the metric registry's direction for {plan.metric}"),
        ("restore_callback_states_from_checkpoint", True, "a resumed run keeps its early-stopping patience counter"),
    ]
    if "lr_scheduler_type" not in run_args.given:
        why = "--num_train_epochs auto: the stopping point is unknown, so the LR stays constant after warm-up"
        wanted.append(("lr_scheduler_type", SchedulerType.CONSTANT_WITH_WARMUP, why))
    if 0 < training_args.warmup_steps < 1:
        steps = max(1, math.ceil(training_args.warmup_steps * plan.epoch_steps))
        why = f"--num_train_epochs auto: warm-up for {training_args.warmup_steps:g} of one epoch (the run's length is open)"
        wanted.append(("warmup_steps", steps, why))
    changes = []
    for field, used, why in wanted:
        given = getattr(training_args, field)
        if given != used:
            changes.append(SettingChange(field, _plain(given), used, why))  # used: the enum TrainingArguments holds
    return changes


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def cooldown_length(cooldown: float, plateau_step: int, eval_steps: int) -> int:
    """Optimizer steps of the cooldown that starts at ``plateau_step``: ``cooldown`` of the steps so far, rounded up to
    whole evaluation intervals (at least one), so that it ends on an evaluation."""
    return max(1, math.ceil(cooldown * plateau_step / eval_steps)) * eval_steps


class PlateauStopping(TrainerCallback, ExportableState):
    """Early stopping with a cooldown: after ``patience`` evaluations without a better metric (more than
    ``threshold``, compared with ``state.best_metric`` as transformers' EarlyStoppingCallback does), the LR multiplier
    falls linearly from 1 to 0 over ``cooldown`` of the steps so far (whole evaluation intervals), and training stops
    at the evaluation that ends it. With ``cooldown`` 0 it stops at the plateau, as EarlyStoppingCallback would.

    Its state (counter, cooldown start and length) is an ``ExportableState``: Trainer saves it in every checkpoint and
    restores it on resume (``restore_callback_states_from_checkpoint``). The multiplier is installed on the Trainer's
    ``LambdaLR`` (warm-up then 1, the ``constant_with_warmup`` shape) as a plain function of the step, which the
    scheduler's checkpoint does not store and every resume installs again.
    """

    def __init__(
        self,
        patience: int,
        threshold: float = 0.0,
        cooldown: float = 0.0,
        eval_steps: int = 1,
        greater: bool = True,
        metric: str = "accuracy",
        validation_rows: int = 0,
        keep: str = DEFAULT_KEEP,
    ):
        self.patience, self.threshold, self.cooldown = patience, threshold, cooldown
        self.eval_steps, self.greater = eval_steps, greater
        self.metric, self.validation_rows, self.keep = metric, validation_rows, keep
        self.annealed_choice: dict | None = None  # the end of the cooldown kept over an earlier, noisier best
        self.rows_correct: np.ndarray | None = None  # the evaluation being scored: each validation row right or not
        self.best_rows: dict | None = None  # the best evaluation's rows_correct, packed (checkpointed)
        self.counter = 0  # evaluations since the last better one
        self.cooldown_start: int | None = None
        self.cooldown_steps = 0
        self.stopped = False  # patience ran out (and the cooldown, if any, ended): converged
        self._warmup = 0

    @classmethod
    def for_plan(cls, plan: StoppingPlan) -> PlateauStopping:
        return cls(
            plan.patience,
            plan.threshold,
            plan.cooldown,
            plan.eval_steps,
            plan.greater_is_better,
            plan.metric,
            plan.validation_rows,
            plan.keep,
        )

    def state(self) -> dict:
        return {
            "args": {
                "patience": self.patience,
                "threshold": self.threshold,
                "cooldown": self.cooldown,
                "eval_steps": self.eval_steps,
                "greater": self.greater,
                "metric": self.metric,
                "validation_rows": self.validation_rows,
                "keep": self.keep,
            },
            "attributes": {
                "counter": self.counter,
                "cooldown_start": self.cooldown_start,
                "cooldown_steps": self.cooldown_steps,
                "stopped": self.stopped,
                "annealed_choice": self.annealed_choice,
                "best_rows": self.best_rows,
            },
        }

    def multiplier(self, step: int) -> float:
        """The LR multiplier at optimizer step ``step``: warm-up, 1, then the cooldown's linear fall to 0."""
        if step < self._warmup:
            return step / max(1, self._warmup)
        if self.cooldown_start is None or step < self.cooldown_start:
            return 1.0
        return max(0.0, 1.0 - (step - self.cooldown_start) / max(self.cooldown_steps, 1))

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        if self.stopped:  # resumed from the checkpoint that ended the run: one step at LR 0, not another interval
            control.should_training_stop = True
        if self.cooldown and lr_scheduler is not None and hasattr(lr_scheduler, "lr_lambdas"):
            self._warmup = args.get_warmup_steps(state.max_steps)

            def schedule(step: int) -> float:  # a function: LambdaLR's state_dict leaves it out
                return self.multiplier(step)

            lr_scheduler.lr_lambdas = [schedule] * len(lr_scheduler.lr_lambdas)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        key = args.metric_for_best_model
        value = (metrics or {}).get(key if key.startswith("eval_") else f"eval_{key}")
        rows, self.rows_correct = self.rows_correct, None
        if self.stopped:  # after the stop, evaluations score the saved model: nothing to choose
            control.should_training_stop = True
            return
        if value is None:
            return
        improves = self._is_new_best(value, state)
        if improves:
            self.best_rows = None if rows is None else pack_rows(rows)
        better = improves and (state.best_metric is None or abs(value - state.best_metric) > self.threshold)
        self.counter = 0 if better else self.counter + 1
        if self.cooldown_start is not None:  # the cooldown runs to its end; the best evaluation is kept anyway
            if state.global_step >= self.cooldown_start + self.cooldown_steps:
                self.stopped = control.should_training_stop = True
                if self.keep == "annealed":
                    self._prefer_annealed(value, state, rows)
            return
        if self.counter >= self.patience:
            if not self.cooldown:
                self.stopped = control.should_training_stop = True
                return
            self.cooldown_start = state.global_step
            self.cooldown_steps = cooldown_length(self.cooldown, state.global_step, self.eval_steps)
            logger.info(
                "validation %s has not improved for %d evaluations: annealing the LR to 0 over %d steps, then stopping",
                key,
                self.counter,
                self.cooldown_steps,
            )

    def _is_new_best(self, value: float, state) -> bool:
        """Trainer's own check (no threshold): this evaluation becomes the best, and its checkpoint the saved one."""
        return state.best_metric is None or (value > state.best_metric if self.greater else value < state.best_metric)

    def _prefer_annealed(self, value: float, state, rows: np.ndarray | None = None) -> None:
        """(``--auto_keep annealed``) Keep the end of the cooldown when no earlier evaluation beat it by more than one
        standard error: among models validation cannot tell apart, the annealed one. (The earlier best is the maximum
        of many noisy evaluations, so its score is the optimistic one.) With both evaluations' per-row correctness
        (accuracy) the error is the paired one of their difference, from the rows where they disagree; else one
        binomial standard error of the best score on the validation rows. Trainer then records this step as the
        best, and this checkpoint is the saved model."""
        if self._is_new_best(value, state):
            return
        spec = metric_spec(self.metric)
        best = None if self.best_rows is None else unpack_rows(self.best_rows)
        if best is not None and rows is not None and len(best) == len(rows):
            test, tolerance = "paired", paired_standard_error(best, rows)
            disagree = int(np.count_nonzero(best != rows))
        else:
            test, tolerance, disagree = "binomial", standard_error(spec, state.best_metric, self.validation_rows), None
        if abs(value - state.best_metric) <= tolerance:
            self.annealed_choice = {
                "step": state.global_step,
                "value": value,
                "earlier_best": state.best_metric,
                "earlier_best_step": state.best_global_step,
                "tolerance": round(tolerance, 6),
                "test": test,
                "rows_disagreeing": disagree,
            }
            state.best_metric = None  # Trainer's best-metric check then makes this evaluation the best
            self.best_rows = None if rows is None else pack_rows(rows)
        else:
            logger.info(
                "keeping step %s (validation %s %.4f): it beat the annealed end (%.4f) by more than one %s standard "
                "error (%.4f)",
                state.best_global_step,
                self.metric,
                state.best_metric,
                value,
                test,
                tolerance,
            )


def rows_correct(eval_prediction) -> np.ndarray | None:
    """Each row right or not: the top class of its logits against its class id (None unless one class per row)."""
    logits = eval_prediction.predictions
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits)
    labels = np.asarray(eval_prediction.label_ids)
    if logits.ndim != 2 or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return None
    return logits.argmax(-1) == labels


def pack_rows(rows: np.ndarray) -> dict:
    """Per-row booleans as JSON (trainer_state.json holds the callback's state): 1 bit a row, base64."""
    return {"rows": len(rows), "bits": base64.b64encode(np.packbits(rows)).decode("ascii")}


def unpack_rows(packed: dict) -> np.ndarray:
    """``pack_rows``' booleans back."""
    bits = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(bits, count=packed["rows"]).astype(bool)


def add_early_stopping(trainer, plan: StoppingPlan) -> PlateauStopping:
    """Adds the callback that stops an auto run as ``plan`` says (patience, then the cooldown) to ``trainer``, and
    replaces ``trainer.compute_metrics`` with one that also shows it each evaluation's rows (``showing_rows``)."""
    stopper = PlateauStopping.for_plan(plan)
    trainer.add_callback(stopper)
    if metric_spec(plan.metric).name == "accuracy" and not trainer.args.batch_eval_metrics:
        # (batched metrics see one batch at a time, not the split's rows)
        trainer.compute_metrics = showing_rows(trainer, trainer.compute_metrics)
    return stopper


def showing_rows(trainer, compute_metrics: Callable | None) -> Callable | None:
    """``compute_metrics`` that also gives the trainer's ``PlateauStopping`` each evaluation's per-row correctness,
    for the paired comparison of the annealed end with the best evaluation. The callback is looked up at each call:
    a resume replaces it with one restored from the checkpoint."""
    if compute_metrics is None:
        return None

    def compute(eval_prediction):
        rows = rows_correct(eval_prediction)
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, PlateauStopping):
                callback.rows_correct = rows
        return compute_metrics(eval_prediction)

    return compute


def early_stopping(plan: StoppingPlan) -> PlateauStopping:
    """The callback that stops an auto run as ``plan`` says (patience, then the cooldown)."""
    return PlateauStopping.for_plan(plan)


def stop_record(plan: StoppingPlan, trainer) -> dict[str, Any]:
    """When and why ``trainer``'s run stopped, and where its best evaluation was (what the saved model is)."""
    state = trainer.state
    stoppers = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PlateauStopping)]
    stopper = stoppers[0] if stoppers else None
    converged = bool(stopper and stopper.stopped)
    best_step = state.best_global_step or state.global_step
    if converged and stopper.cooldown_start is not None:
        reason = (
            f"{plan.patience} evaluations without a better validation {plan.metric} by step {stopper.cooldown_start}, "
            f"then the LR annealed to 0 over {stopper.cooldown_steps} steps"
        )
    elif converged:
        reason = f"{plan.patience} evaluations without a better validation {plan.metric}"
    elif state.global_step >= plan.cap_steps:
        reason = f"the cap of {plan.cap_steps} steps, still improving (not converged)"
    else:
        reason = "training ended before the cap"
    return {
        "stopped_step": state.global_step,
        "stopped_epoch": round(state.global_step / plan.epoch_steps, 3),
        "best_step": best_step,
        "best_epoch": round(best_step / plan.epoch_steps, 3),
        "best_metric": state.best_metric,
        "metric": plan.metric,
        "reason": reason,
        "converged": converged,
        "cooldown_start": stopper.cooldown_start if stopper else None,
        "annealed_choice": stopper.annealed_choice if stopper else None,
        "plan": dataclasses.asdict(plan),
    }


def stop_line(record: dict[str, Any]) -> str:
    """One line for the run's last words: when and why it stopped, and which evaluation the model is."""
    best = record["best_metric"]
    best_text = f"{best:.4f}" if isinstance(best, (int, float)) else "n/a"
    line = (
        f"stopped at step {record['stopped_step']} (epoch {record['stopped_epoch']:g}): {record['reason']}; the saved "
        f"model is the best evaluation, step {record['best_step']} (epoch {record['best_epoch']:g}, validation "
        f"{record['metric']} {best_text})"
    )
    choice = record.get("annealed_choice")
    if choice:
        line += (
            f": the annealed end of the cooldown, kept over step {choice['earlier_best_step']} "
            f"({choice['earlier_best']:.4f}), which is within one {choice.get('test', 'binomial')} standard error "
            f"({choice['tolerance']:.4f})"
        )
    return line
