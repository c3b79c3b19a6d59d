"""What a trial samples: one range per searchable field, centred on the value the run was given.

A float searches a decade either side of its given value on a log scale, so the search space follows the
recipe, the YAML and the command line instead of a fixed table:

    learning_rate, head_lr, lora_lr   log-uniform in [given / 10, given x 10]
    layer_decay                       uniform in [0.5, 1.0] (down to the given value when it is lower)
    lora_r                            one of 4, 8, 16, 32 (and the given rank)
    lora_alpha                        one of 8, 16, 32, 64 (and the given alpha)
    unfreeze_last                     one of 0 .. number of layers, or 'all'

Trial 0 is the given settings, so the search reports its gain over them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

TRAINING_FIELDS = ("learning_rate",)  # set by Trainer itself; the rest are ftpeft's TuningArguments
DECADE = 10.0
LAYER_DECAY_RANGE = (0.5, 1.0)
LORA_RANKS = (4, 8, 16, 32)
LORA_ALPHAS = (8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched field: a log or linear float range, or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name}: one of {', '.join(map(str, self.choices))}"
        return f"{self.name}: {'log-' if self.log else ''}uniform in [{self.low:.3g}, {self.high:.3g}]"


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The searched dimensions and the given value of each (trial 0)."""

    dimensions: tuple[Dimension, ...]
    given: dict[str, Any]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def sample(self, trial) -> dict[str, Any]:
        """Every searched value of ``trial`` (Optuna returns the same value when a trial asks twice)."""
        return {d.name: d.suggest(trial) for d in self.dimensions}

    def training_values(self, trial) -> dict[str, Any]:
        """``Trainer.hyperparameter_search``'s hp_space: the TrainingArguments part of the trial's values.

        The ftpeft fields are sampled too, but left out here: Trainer would only warn and drop them. The
        search's model_init gives them to the model and optimizer groups instead."""
        return {name: value for name, value in self.sample(trial).items() if name in TRAINING_FIELDS}

    def apply(self, values: dict[str, Any], tuning_args, learning_rate: float):
        """(a copy of ``tuning_args`` with the trial's ftpeft values, the trial's learning rate); the parsed
        arguments stay as they are."""
        tuning_values = {name: value for name, value in values.items() if name not in TRAINING_FIELDS}
        return dataclasses.replace(tuning_args, **tuning_values), values.get("learning_rate", learning_rate)

    def describe(self) -> list[str]:
        return [d.describe() for d in self.dimensions]


def build_space(fields: tuple[str, ...], tuning_args, learning_rate: float, num_layers: int) -> SearchSpace:
    """The dimensions of ``fields``, centred on the given values (``num_layers`` bounds ``unfreeze_last``)."""
    head_lr = tuning_args.head_lr if tuning_args.head_lr is not None else learning_rate
    given = {
        "learning_rate": learning_rate,
        "head_lr": head_lr,
        "layer_decay": tuning_args.layer_decay,
        "lora_r": tuning_args.lora_r,
        "lora_alpha": tuning_args.lora_alpha,
        "lora_lr": tuning_args.lora_lr,
        "unfreeze_last": str(tuning_args.unfreeze_last),
    }
    depths = [str(k) for k in range(num_layers + 1)] + ["all"]
    if given["unfreeze_last"] not in depths:  # '-1' means all
        given["unfreeze_last"] = "all"
    every = {
        "learning_rate": Dimension("learning_rate", learning_rate / DECADE, learning_rate * DECADE, log=True),
        "head_lr": Dimension("head_lr", head_lr / DECADE, head_lr * DECADE, log=True),
        "layer_decay": Dimension(
            "layer_decay", min(LAYER_DECAY_RANGE[0], tuning_args.layer_decay), LAYER_DECAY_RANGE[1]
        ),
        "lora_r": Dimension("lora_r", choices=tuple(sorted({*LORA_RANKS, tuning_args.lora_r}))),
        "lora_alpha": Dimension("lora_alpha", choices=tuple(sorted({*LORA_ALPHAS, tuning_args.lora_alpha}))),
        "lora_lr": Dimension("lora_lr", tuning_args.lora_lr / DECADE, tuning_args.lora_lr * DECADE, log=True),
        "unfreeze_last": Dimension("unfreeze_last", choices=tuple(depths)),
    }
    dimensions = tuple(every[name] for name in fields)
    return SearchSpace(dimensions, {d.name: given[d.name] for d in dimensions})
