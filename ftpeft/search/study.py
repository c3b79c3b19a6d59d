"""Trials through ``Trainer.hyperparameter_search`` (Optuna) that reach ftpeft's own fields.

Trainer sets only TrainingArguments fields from a trial; ``head_lr``, ``layer_decay`` and the LoRA and depth
fields live in ``TuningArguments``. So every trial's model comes from ``model_init(trial)``: a copy of the
tuning arguments with the trial's values (``dataclasses.replace``; the parsed ones stay as given) builds the
model, and the optimizer groups (head LR, layer decay, LoRA LR) are computed on it from the same values.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from torch import nn
from transformers import TrainerCallback

from ftpeft.core.errors import FtpeftError
from ftpeft.core.metrics import metric_spec
from ftpeft.core.param_groups import build_param_groups
from ftpeft.core.preemption import PREDICTION_STEPS_PER_CHECK, Preempted, SignalFlag, Stop
from ftpeft.core.settings import resolve_settings
from ftpeft.core.stopping import PlateauStopping, StoppingPlan, auto_epoch_changes, early_stopping
from ftpeft.core.trainer import FtpeftTrainer
from ftpeft.search.space import SearchSpace

logger = logging.getLogger("ftpeft")
STUDY_NAME = "ftpeft"
PRUNER_STARTUP_TRIALS = 2  # the median needs a few finished trials before it can judge


@dataclasses.dataclass
class TrialModel:
    """What one trial trains: the values it sampled, its tuning arguments and model, its optimizer groups."""

    number: int | None  # None: the model Trainer builds at construction (the given settings)
    values: dict[str, Any]
    tuning_args: Any
    model: nn.Module
    param_groups: list[dict]


class TrialModels:
    """``model_init`` for the search: builds each trial's model and optimizer groups from the trial's values.

    ``build(tuning_args) -> TuningReport`` loads and tunes a fresh model (``apply_tuning``); ``wrap(model)``
    turns it into what trains (the cached-prefix model with ``--cache_frozen``; default: itself). The
    groups are computed on the complete model, before ``wrap``.
    """

    def __init__(
        self,
        space: SearchSpace,
        tuning_args,
        training_args,
        build: Callable[[Any], Any],
        wrap: Callable[[nn.Module], nn.Module] | None = None,
    ):
        self.space, self.tuning_args, self.training_args = space, tuning_args, training_args
        self.build, self.wrap = build, wrap
        self.current: TrialModel | None = None

    def __call__(self, trial=None) -> nn.Module:
        values = self.space.given if trial is None else self.space.sample(trial)
        tuning_args, learning_rate = self.space.apply(values, self.tuning_args, self.training_args.learning_rate)
        tuning = self.build(tuning_args)
        groups = build_param_groups(
            tuning.model,
            learning_rate,
            head_lr=tuning_args.head_lr,
            layer_decay=tuning_args.layer_decay,
            weight_decay=self.training_args.weight_decay,
            layers=tuning.layers,
            adapter_lr=tuning_args.lora_lr if tuning_args.use_peft else None,
        )
        model = tuning.model if self.wrap is None else self.wrap(tuning.model)
        number = None if trial is None else trial.number
        self.current = TrialModel(number, values, tuning_args, model, groups)
        logger.info("trial %s: %s", "given" if number is None else number, values)
        return model


class SearchPreemption(TrainerCallback):
    """Ends the search once a preemption signal came (``--preemption_signals``; the handler only sets ``flag``) or its
    ``--max_time`` passed: the flag is read as a trial begins, after every optimizer step and every few evaluation
    batches, and ``Preempted`` is raised through Trainer and Optuna. The trial then running stays unfinished in the
    journal, and is run again, from its start, when the search continues (trials keep no checkpoints)."""

    def __init__(self, flag: SignalFlag):
        self.flag = flag
        self.prediction_steps = 0

    def _check(self, state) -> None:
        if self.flag.current():  # a signal, or the --max_time cap
            raise Preempted(Stop(self.flag.current(), state.global_step))

    def on_train_begin(self, args, state, control, **kwargs):
        self._check(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._check(state)

    def on_prediction_step(self, args, state, control, **kwargs):
        self.prediction_steps += 1
        if self.prediction_steps % PREDICTION_STEPS_PER_CHECK == 0:
            self._check(state)


BEST_STEP_ATTR = "best_step"  # the optimizer step of a trial's best evaluation (Optuna user attribute)


class SearchTrainer(FtpeftTrainer):
    """FtpeftTrainer whose model and optimizer groups are rebuilt for every trial by ``TrialModels``.

    With ``preemption`` (the search's signal flag) a preemption signal ends the search (``SearchPreemption``).
    With ``plan`` (``--num_train_epochs auto``) every trial stops on validation ``plan.metric`` (transformers'
    early stopping, its counter reset per trial) and is scored by its best evaluation, not its last; the step of
    that evaluation is kept on the trial (``BEST_STEP_ATTR``), so the final run can train to it.
    """

    def __init__(
        self,
        *args,
        trial_models: TrialModels,
        plan: StoppingPlan | None = None,
        preemption: SignalFlag | None = None,
        **kwargs,
    ):
        self.trial_models = trial_models
        self.plan = plan
        super().__init__(*args, model_init=trial_models, **kwargs)
        if preemption is not None:
            self.add_callback(SearchPreemption(preemption))
        if plan is not None:
            self.stopper = early_stopping(plan)
            self.add_callback(self.stopper)

    def train(self, *args, trial=None, **kwargs):
        if self.plan is None:
            return super().train(*args, trial=trial, **kwargs)
        self.stopper = early_stopping(self.plan)  # a fresh patience and cooldown for every trial
        self.callback_handler.remove_callback(PlateauStopping)
        self.add_callback(self.stopper)
        evaluations: list[tuple[int, float]] = []
        self.evaluations = evaluations
        result = super().train(*args, trial=trial, **kwargs)
        if evaluations:  # the trial's score: its best evaluation (the earliest of equals)
            better = max if self.plan.greater_is_better else min
            best_value = better(value for _, value in evaluations)
            best_step = next(step for step, value in evaluations if value == best_value)
            self.objective = best_value
            if trial is not None and hasattr(trial, "set_user_attr"):
                trial.set_user_attr(BEST_STEP_ATTR, best_step)
        return result

    def evaluate(self, *args, **kwargs):
        metrics = super().evaluate(*args, **kwargs)
        evaluations = getattr(self, "evaluations", None)
        if self.plan is not None and evaluations is not None and f"eval_{self.plan.metric}" in metrics:
            evaluations.append((self.state.global_step, metrics[f"eval_{self.plan.metric}"]))
        return metrics

    def call_model_init(self, trial=None):
        model = super().call_model_init(trial)
        self.param_groups = self.trial_models.current.param_groups  # the trial's LRs, not the parsed ones
        return model


def search_training_args(training_args, trial_dir: str, plan: StoppingPlan | None = None, run_args=None):
    """A copy of ``training_args`` for the trials: no checkpoints, no best-model reload, no push (the final
    run does those), outputs in ``trial_dir``. Under ``--num_train_epochs auto`` (``plan``) the trials evaluate at
    the run's cadence and stop on validation as the run would; the search scores each by its best evaluation
    (``SearchTrainer``). The parsed arguments are not touched."""
    from transformers.trainer_utils import SaveStrategy

    trial_args = copy.deepcopy(training_args)
    if plan is not None:
        resolve_settings(trial_args, auto_epoch_changes(trial_args, run_args, plan))
    for field, value, why in (
        ("output_dir", trial_dir, "trials write into a temporary folder"),
        ("save_strategy", SaveStrategy.NO, "trials keep no checkpoints; the best settings are retrained"),
        ("load_best_model_at_end", False, "trials keep no checkpoints"),
        ("push_to_hub", False, "only the final run pushes"),
    ):
        if getattr(trial_args, field) != value:
            logger.info("search setting %s: %r -> %r (%s)", field, getattr(trial_args, field), value, why)
            setattr(trial_args, field, value)
    return trial_args


def direction_of(metric: str) -> str:
    return "maximize" if metric_spec(metric, "--hp_search_metric").greater_is_better else "minimize"


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Optuna's TPE sampler, seeded afresh for every trial with ``seed + trial.number``: a trial's values depend only on
    the seed and the trials before it, not on what this process sampled earlier, so a search continued from its journal
    after a preemption samples the trials it had left exactly as the uninterrupted search would have."""

    def __init__(self, seed: int):
        self.seed = seed
        self.current = optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study, trial) -> None:
        self.current = optuna.samplers.TPESampler(seed=self.seed + trial.number)
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.current.reseed_rng()


FINISHED = ("COMPLETE", "PRUNED")  # trial states a continued search keeps; a trial cut short is run again


def search_identity(space: SearchSpace, metric: str, seed: int) -> dict[str, Any]:
    """What a journal's study must match to be continued: the space, the metric and the sampler's seed."""
    return {"space": space.describe(), "metric": metric, "seed": seed}


def last_study(journal: Path):
    """(the journal's storage, the names of its studies, the last study or None) of Optuna's journal file."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    return storage, names, optuna.load_study(study_name=names[-1], storage=storage) if names else None


def finished(study) -> list:
    """The trials of ``study`` a continued search keeps (not a waiting, running or failed one)."""
    return [trial for trial in study.trials if trial.state.name in FINISHED]


def open_study(journal: Path, space: SearchSpace, metric: str, seed: int):
    """The study in ``journal`` (Optuna's journal file), ready to run its remaining trials: a new one whose first trial
    is the given settings; or the last one there, continued. Trials are numbered as they ran, so when the last
    study's final trial was cut short (a preemption, a kill), its finished trials are copied into a fresh study in
    the same journal and the cut trial is run again under its own number."""
    storage, names, previous = last_study(journal)
    identity = search_identity(space, metric, seed)
    if previous is not None and previous.user_attrs.get("identity") != identity:
        raise FtpeftError(
            f"--resume_from_checkpoint auto: {journal} holds a search with other settings "
            f"({previous.user_attrs.get('identity')}); pass --overwrite_output_dir to start afresh there, or choose "
            "another --output_dir."
        )
    kept = [] if previous is None else finished(previous)
    if previous is not None and len(kept) == len(previous.trials):
        return previous, storage
    study = optuna.create_study(
        storage=storage,
        study_name=f"{STUDY_NAME}-{len(names)}" if names else STUDY_NAME,
        direction=direction_of(metric),
    )
    study.set_user_attr("identity", identity)
    study.add_trials(kept)
    if not kept:
        study.enqueue_trial(space.given)
    return study, storage


def finished_trials(journal: Path) -> int:
    """How many trials the last study in ``journal`` finished (0 when there is none yet)."""
    if not journal.is_file():
        return 0
    _, _, study = last_study(journal)
    return 0 if study is None else len(finished(study))


def run_search(trainer: SearchTrainer, space: SearchSpace, n_trials: int, metric: str, seed: int, journal: Path):
    """``n_trials`` Optuna trials (the first: the given settings), TPE seeded per trial from ``seed``, median pruner
    at every evaluation, kept in ``journal`` (Optuna's journal file): a search run again with the same settings
    continues there and runs only the trials it had left. Returns the finished ``optuna.Study``. Only the validation
    split is scored."""
    study, storage = open_study(journal, space, metric, seed)
    done = len(finished(study))  # not the waiting trial 0 of a new study
    if done:
        logger.warning("hp search: %d of %d trials already done (%s); running the rest", done, n_trials, journal)
    if done < n_trials:
        trainer.hyperparameter_search(
            hp_space=space.training_values,
            compute_objective=lambda metrics: metrics[f"eval_{metric}"],
            n_trials=n_trials - done,
            direction=direction_of(metric),
            backend="optuna",
            storage=storage,
            study_name=study.study_name,
            load_if_exists=True,
            sampler=TrialSeededSampler(seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS),
        )
    return optuna.load_study(study_name=study.study_name, storage=storage)
