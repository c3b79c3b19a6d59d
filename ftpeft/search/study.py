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
from typing import Any

from torch import nn

from ftpeft.core.metrics import metric_spec
from ftpeft.core.param_groups import build_param_groups
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


BEST_STEP_ATTR = "best_step"  # the optimizer step of a trial's best evaluation (Optuna user attribute)


class SearchTrainer(FtpeftTrainer):
    """FtpeftTrainer whose model and optimizer groups are rebuilt for every trial by ``TrialModels``.

    With ``plan`` (``--num_train_epochs auto``) every trial stops on validation ``plan.metric`` (transformers'
    early stopping, its counter reset per trial) and is scored by its best evaluation, not its last; the step of
    that evaluation is kept on the trial (``BEST_STEP_ATTR``), so the final run can train to it.
    """

    def __init__(self, *args, trial_models: TrialModels, plan: StoppingPlan | None = None, **kwargs):
        self.trial_models = trial_models
        self.plan = plan
        super().__init__(*args, model_init=trial_models, **kwargs)
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


def run_search(trainer: SearchTrainer, space: SearchSpace, n_trials: int, metric: str, seed: int):
    """``n_trials`` Optuna trials (the first: the given settings), TPE sampler seeded with ``seed``, median
    pruner at every evaluation; returns the finished ``optuna.Study``. Only the validation split is scored."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    direction = direction_of(metric)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction)
    study.enqueue_trial(space.given)
    trainer.hyperparameter_search(
        hp_space=space.training_values,
        compute_objective=lambda metrics: metrics[f"eval_{metric}"],
        n_trials=n_trials,
        direction=direction,
        backend="optuna",
        storage=storage,
        study_name=STUDY_NAME,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS),
    )
    return optuna.load_study(study_name=STUDY_NAME, storage=storage)
