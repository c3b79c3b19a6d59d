"""Value rules of the arguments: declared next to each field, checked in one place, before any work.

An ftpeft argument field declares what it accepts in its metadata, and its dataclass's ``__post_init__``
calls ``check_fields(self)`` first::

    lora_r: int = field(default=8, metadata={"help": "LoRA rank.", "range": at_least(1)})
    cache_dtype: str = field(default="float16", metadata={"help": "...", "choices": ("float16", "float32")})

The ``TrainingArguments`` fields the recipes rely on cannot carry our metadata: their rules are the one table
``TRAINING_RULES`` below, which ``parse_args`` checks right after parsing. Either way a bad value is one
line naming the flag, the value and what is allowed: ``--lora_r must be >= 1, got 0.`` NaN and infinity
are refused everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ftpeft.core.errors import FtpeftError

RULE_KEYS = ("range", "choices")  # our metadata keys; argparse never sees them (see FtpeftArgumentParser)
SEED_MAX = 2**32 - 1  # numpy's seeds (set_seed, scikit-learn) stop here


@dataclasses.dataclass(frozen=True)
class Range:
    """The numbers a field accepts: bounds that are open or closed, either side optional, plus exceptions
    such as -1 meaning "off"."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[float, ...] = ()
    also_means: str = ""

    def admits(self, value: float) -> bool:
        if value in self.also:
            return True
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        elif self.low is None:
            text = f"{'<' if self.high_open else '<='} {self.high}"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        for value in self.also:
            text += f", or {value}" + (f" ({self.also_means})" if self.also_means else "")
        return text


def at_least(low: float, **kwargs) -> Range:
    return Range(low=low, **kwargs)


def greater_than(low: float) -> Range:
    return Range(low=low, low_open=True)


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open)


POSITIVE = greater_than(0)  # learning rates, regularisation strengths
COUNT = at_least(1)  # sizes, steps, samples, layers
NON_NEGATIVE = at_least(0)
FRACTION = between(0, 1, high_open=True)  # dropout, smoothing, betas: [0, 1)
PROBABILITY = between(0, 1)
SHARE = between(0, 1, low_open=True)  # a part of the whole that must not be empty: (0, 1]
PERCENTAGE = between(1, 99)
SEED = between(0, SEED_MAX)


def describe_choices(choices) -> str:
    names = [str(c) for c in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def rule_text(metadata: Mapping[str, Any]) -> str | None:
    """What a field accepts, for its --help line; None when it declares nothing."""
    if metadata.get("choices") is not None:
        return describe_choices(metadata["choices"])
    if metadata.get("range") is not None:
        return str(metadata["range"])
    return None


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_value(flag: str, value: Any, rule: Range | None = None, choices=None, optional: bool = False) -> None:
    """Refuse ``value`` of ``--flag`` unless ``rule``/``choices`` admit it (None passes only when ``optional``)."""
    if value is None:
        if optional:
            return
        allowed = describe_choices(choices) if choices is not None else str(rule)
        raise FtpeftError(f"--{flag} needs a value ({allowed}), got None.")
    if choices is not None:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item not in choices:
                raise FtpeftError(f"--{flag} must be {describe_choices(choices)}, got {_shown(item)}.")
    if rule is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FtpeftError(f"--{flag} must be a number {rule}, got {_shown(value)}.")
        if not rule.admits(value):
            finite = "" if math.isfinite(value) else "a finite number "
            raise FtpeftError(f"--{flag} must be {finite}{rule}, got {_shown(value)}.")


def check_fields(instance: Any) -> None:
    """Check every field of a dataclass instance against the range/choices its metadata declares."""
    for field in dataclasses.fields(instance):
        rule, choices = field.metadata.get("range"), field.metadata.get("choices")
        if rule is not None or choices is not None:
            optional = field.default is None
            check_value(field.name, getattr(instance, field.name), rule, choices, optional)


# --- TrainingArguments: one table ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingRule:
    """A TrainingArguments field's range; ``used_when`` (field, value): checked only when that setting
    makes the field count (``save_steps`` with ``--save_strategy steps``). Non-finite values are always
    refused."""

    field: str
    range: Range
    used_when: tuple[str, str] | None = None


TRAINING_RULES: tuple[TrainingRule, ...] = (
    TrainingRule("learning_rate", POSITIVE),
    TrainingRule("weight_decay", NON_NEGATIVE),
    TrainingRule("num_train_epochs", NON_NEGATIVE),  # > 0 unless --max_steps > 0: see check_training_values
    TrainingRule("max_steps", at_least(1, also=(-1,), also_means="train --num_train_epochs")),
    TrainingRule("per_device_train_batch_size", COUNT),
    TrainingRule("per_device_eval_batch_size", COUNT),
    TrainingRule("gradient_accumulation_steps", COUNT),
    TrainingRule("eval_accumulation_steps", COUNT),
    TrainingRule("warmup_steps", NON_NEGATIVE),  # a float < 1 is a fraction of the total steps
    TrainingRule("logging_steps", POSITIVE, ("logging_strategy", "steps")),  # < 1: a fraction of the total
    TrainingRule("eval_steps", POSITIVE, ("eval_strategy", "steps")),
    TrainingRule("save_steps", POSITIVE, ("save_strategy", "steps")),
    TrainingRule("save_total_limit", COUNT),
    TrainingRule("eval_delay", NON_NEGATIVE),
    TrainingRule("seed", SEED),
    TrainingRule("data_seed", SEED),
    TrainingRule("max_grad_norm", NON_NEGATIVE),  # 0 turns clipping off
    TrainingRule("label_smoothing_factor", FRACTION),
    TrainingRule("adam_beta1", FRACTION),
    TrainingRule("adam_beta2", FRACTION),
    TrainingRule("adam_epsilon", POSITIVE),
    TrainingRule("dataloader_num_workers", NON_NEGATIVE),
    TrainingRule("dataloader_prefetch_factor", COUNT),
    TrainingRule("torch_empty_cache_steps", COUNT),
)


def _setting(value: Any) -> str:
    return str(getattr(value, "value", value))  # strategies arrive as strings or as their Enum


def check_training_values(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Check parsed TrainingArguments values (flag name -> value) against ``TRAINING_RULES``.

    ``defaults`` are the dataclass defaults: a field whose default is None may stay None (unset).
    """
    for rule in TRAINING_RULES:
        if rule.field not in values:
            continue
        value = values[rule.field]
        if rule.used_when and _setting(values.get(rule.used_when[0])) != rule.used_when[1]:
            if isinstance(value, float) and not math.isfinite(value):
                raise FtpeftError(f"--{rule.field} must be a finite number {rule.range}, got {value}.")
            continue
        check_value(rule.field, value, rule.range, optional=defaults.get(rule.field) is None)
    epochs, max_steps = values.get("num_train_epochs"), values.get("max_steps")
    if epochs is not None and max_steps is not None and epochs <= 0 and max_steps <= 0:
        raise FtpeftError(
            f"--num_train_epochs must be > 0 unless --max_steps > 0, got {epochs} (and --max_steps {max_steps})."
        )
