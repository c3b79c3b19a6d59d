"""One argument system for every recipe: dataclass fields, a YAML file as defaults, the command line wins.

``parse_args((ModelArguments, TextDataArguments, TuningArguments, TrainingArguments))`` returns one
instance per dataclass. Precedence, lowest first: dataclass default < the recipe's own defaults <
``--config FILE.yaml`` < command line. argparse does all typing (YAML values are fed to it as
command-line tokens), so a YAML value and a flag are checked the same way."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import os
import sys
import types
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from ftpeft.core.errors import FtpeftError, redact
from ftpeft.core.outputs import atomic_write_text
from ftpeft.core.preemption import DEFAULT_SIGNALS, parse_signals
from ftpeft.core.stopping import DEFAULT_KEEP, KEPT
from ftpeft.core.validation import (
    COUNT,
    NON_NEGATIVE,
    PERCENTAGE,
    POSITIVE,
    RULE_KEYS,
    between,
    check_fields,
    check_training_values,
    rule_text,
)
from ftpeft.core.walltime import WALLTIME_MARGIN_S, duration_seconds

AUTO_EPOCHS = "auto"  # --num_train_epochs auto: train until validation stops improving (ftpeft.core.stopping)


def epochs_value(text: str) -> str | float:
    """``--num_train_epochs``: 'auto' or a number of epochs (the type argparse applies to that one field)."""
    if str(text).strip().lower() == AUTO_EPOCHS:
        return AUTO_EPOCHS
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of epochs or 'auto', got {text!r}") from None


@dataclasses.dataclass
class OutputArguments:
    """What every recipe that writes an --output_dir takes (train_head.py takes only this)."""

    overwrite_output_dir: bool = dataclasses.field(
        default=False, metadata={"help": "Allow writing into a non-empty --output_dir (files there may be replaced)."}
    )


@dataclasses.dataclass
class RunArguments(OutputArguments):
    """A Trainer run's own flags (bert_cls, knowledge_cls, image_cls, the ladder): how long it trains under
    --num_train_epochs auto, which signals preempt it, and the wall time after which it stops as if preempted."""

    # --num_train_epochs auto (the recipes' default): how long, and how often it looks at validation
    early_stopping_patience: int = dataclasses.field(
        default=3,
        metadata={
            "help": "With --num_train_epochs auto: stop after this many evaluations without a better validation "
            "--metric_for_best_model (transformers' EarlyStoppingCallback). Unset: 3, or 2 (one epoch) where an "
            "epoch is under 50 steps; twice that where validation has under 200 rows.",
            "range": COUNT,
        },
    )
    early_stopping_threshold: float = dataclasses.field(
        default=0.0,
        metadata={
            "help": "With --num_train_epochs auto: the least change of the metric that counts as better.",
            "range": NON_NEGATIVE,
        },
    )
    auto_cooldown: float = dataclasses.field(
        default=0.2,
        metadata={
            "help": "With --num_train_epochs auto: once validation stops improving, anneal the LR linearly to 0 over "
            "this share of the steps run so far, then stop (0: stop at once). Not with an explicit "
            "--lr_scheduler_type.",
            "range": between(0, 1),
        },
    )
    auto_keep: str = dataclasses.field(
        default=DEFAULT_KEEP,
        metadata={
            "help": "With --num_train_epochs auto: the saved model. annealed: the end of the cooldown, unless an "
            "earlier evaluation beat it by more than one standard error of their difference (accuracy: paired, "
            "from the validation rows where the two disagree; other metrics: the binomial error of the best score). "
            "best: the best evaluation on validation (load_best_model_at_end's choice).",
            "choices": tuple(KEPT),
        },
    )
    auto_max_epochs: float = dataclasses.field(
        default=20.0,
        metadata={
            "help": "With --num_train_epochs auto: the cap, if validation never stops improving.",
            "range": POSITIVE,
        },
    )
    auto_max_steps: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "With --num_train_epochs auto: a cap in optimizer steps too (the lower cap wins). Default: none.",
            "range": COUNT,
        },
    )
    preemption_signals: str = dataclasses.field(
        default=DEFAULT_SIGNALS,
        metadata={
            "help": "Signals that stop training at a checkpoint (after the current optimizer step, or within a few "
            "evaluation batches), every rank at the same step, and exit 75 (EX_TEMPFAIL) leaving "
            "OUTPUT_DIR/.preempted; --resume_from_checkpoint auto continues. Comma-separated names (TERM,USR1), or none."
        },
    )
    max_time: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Wall-time cap from the run's start (e.g. 90s, 20m, 1.5h; auto: the SLURM job's time left less "
            f"{WALLTIME_MARGIN_S:.0f} s for the save): when it comes, training stops as on a preemption signal, at a "
            "checkpoint, exit 75. A resumed run gets the cap anew. Default: none."
        },
    )
    # filled by parse_args, never flags: whether --num_train_epochs was 'auto', and which fields the command line
    # or --config set (as opposed to a dataclass's or the recipe's default)
    auto_epochs: bool = dataclasses.field(default=False, init=False)
    given: frozenset[str] = dataclasses.field(default=frozenset(), init=False)

    def __post_init__(self):
        check_fields(self)
        parse_signals(self.preemption_signals)  # names the flag when a name is not a signal a run can catch
        self.max_time_seconds  # noqa: B018  (read once, before any work: a bad cap or auto outside SLURM is refused)

    @functools.cached_property
    def max_time_seconds(self) -> float | None:
        """--max_time in seconds (None: no cap); auto is what the job had left when the arguments were parsed."""
        return None if self.max_time is None else duration_seconds(self.max_time, "--max_time")


@dataclasses.dataclass
class SplitArguments:
    """How every recipe makes and trims its splits (the data arguments of text and image recipes extend it)."""

    validation_split_percentage: int = dataclasses.field(
        default=10,
        metadata={
            "help": "Stratified, seeded %% of train held out for validation when none is given.",
            "range": PERCENTAGE,
        },
    )
    max_train_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "Keep at most this many training examples.", "range": COUNT}
    )
    max_eval_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "Keep at most this many validation examples.", "range": COUNT}
    )
    max_test_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "Keep at most this many test examples.", "range": COUNT}
    )
    drop_duplicates: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Drop rows whose content (text, image bytes) occurred earlier in the same split. Default: "
            "keep them; either way they are counted in data_report.json."
        },
    )
    strict_data: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Fail before training when any row would be dropped (blank text, missing label, unreadable "
            "image) or a validation/test row also occurs in train. Default: drop such rows, keep leaked ones, "
            "and report both in the log and data_report.json."
        },
    )


class FtpeftArgumentParser(HfArgumentParser):
    """HfArgumentParser whose errors are FtpeftError (one line, exit 2) instead of argparse's exit.

    A field's declared range/choices (ftpeft.core.validation) are shown in its --help line and checked by
    its dataclass, not by argparse: every bad value gets the same kind of message.
    """

    def error(self, message):  # argparse hook
        raise FtpeftError(f"{message} (see --help)")

    @staticmethod
    def _parse_dataclass_field(parser, field):
        if field.name == "num_train_epochs" and field.type is float:  # TrainingArguments' field takes 'auto' too
            field = copy.copy(field)
            field.type = epochs_value
            field.metadata = types.MappingProxyType(
                {
                    **field.metadata,
                    "help": "Epochs to train, or 'auto': until the validation metric stops improving "
                    "(--early_stopping_patience evaluations), at most --auto_max_epochs.",
                }
            )
        if any(key in field.metadata for key in RULE_KEYS):
            metadata = {key: value for key, value in field.metadata.items() if key not in RULE_KEYS}
            allowed = rule_text(field.metadata)
            if allowed and "help" in metadata:
                metadata["help"] = f"{metadata['help']} Allowed: {allowed}."
            field = copy.copy(field)
            field.metadata = types.MappingProxyType(metadata)
        HfArgumentParser._parse_dataclass_field(parser, field)


def _field_names(dataclass_types: Iterable[type]) -> set[str]:
    return {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}


def _yaml_to_tokens(config: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Turn YAML values into command-line tokens so argparse types them; dicts/None become defaults."""
    tokens: list[str] = []
    raw_defaults: dict[str, Any] = {}
    for key, value in config.items():
        if value is None or isinstance(value, dict):
            raw_defaults[key] = value
        elif isinstance(value, list):
            tokens += [f"--{key}", *map(str, value)] if value else []
            if not value:
                raw_defaults[key] = []
        elif isinstance(value, bool):
            tokens += [f"--{key}", "true" if value else "false"]
        else:
            tokens += [f"--{key}", str(value)]
    return tokens, raw_defaults


def load_yaml_config(path: str | Path, known_keys: set[str]) -> dict[str, Any]:
    """Read a recipe YAML file; an unknown key is an error naming the key."""
    path = Path(path)
    if not path.is_file():
        raise FtpeftError(f"--config {path}: no such file.")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise FtpeftError(f"--config {path}: not valid YAML ({error}).") from None
    if not isinstance(config, dict):
        raise FtpeftError(f"--config {path}: expected a mapping of flag names to values.")
    normalised = {str(key).replace("-", "_"): value for key, value in config.items()}
    for key in normalised:
        if key not in known_keys:
            close = difflib.get_close_matches(key, known_keys, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise FtpeftError(f"--config {path}: unknown key '{key}'.{hint}")
    return normalised


def _pop_flag(argv: list[str], flag: str, takes_value: bool) -> tuple[list[str], str | bool | None]:
    rest, found = [], None
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == flag:
            if takes_value:
                if i + 1 >= len(argv):
                    raise FtpeftError(f"{flag} needs a value.")
                found = argv[i + 1]
                i += 2
                continue
            # a bare --debug is ours; '--debug underflow_overflow' is TrainingArguments'
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                rest.append(token)
            else:
                found = True
            i += 1
            continue
        if takes_value and token.startswith(flag + "="):
            found = token.split("=", 1)[1]
        else:
            rest.append(token)
        i += 1
    return rest, found


def use_cpu_ranks_without_gpu() -> bool:
    """Let torch.distributed ranks run on CPU (gloo) when there is no GPU.

    ``accelerate launch --multi_gpu`` / torchrun start N ranks, but on a machine without CUDA accelerate
    (and so TrainingArguments) only sees them as one process each unless ACCELERATE_USE_CPU is set: every
    rank would then train alone on the full data. Sets that variable in such a case; returns whether it did.
    """
    import torch

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("LOCAL_RANK") is not None
    # `accelerate launch --multi_gpu` exports ACCELERATE_USE_CPU=False itself: without CUDA that cannot hold
    asked_for_cpu = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    if launched and not torch.cuda.is_available() and not asked_for_cpu:
        if deepspeed_on_cpu_ranks() or fsdp_on_cpu_ranks():  # they need cpu off (and gloo)
            return False
        os.environ["ACCELERATE_USE_CPU"] = "true"
        return True
    return False


def deepspeed_on_cpu_ranks() -> bool:
    """Whether a DeepSpeed launch runs on ranks without a GPU; then DeepSpeed's CPU accelerator is selected.

    accelerate starts DeepSpeed only with ``cpu`` off, and off a GPU it then finds no backend and gives every
    rank world size 1; ``ddp_backend: gloo`` (``launch_defaults``) gives it the real ranks. Sets DS_ACCELERATOR=cpu
    unless the user chose one.
    """
    import torch

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("LOCAL_RANK") is not None
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").strip().lower() in ("1", "true", "yes")
    if not (launched and deepspeed) or torch.cuda.is_available():
        return False
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return True


def fsdp_on_cpu_ranks() -> bool:
    """Whether an FSDP launch without ``use_cpu`` runs on ranks without a GPU (with ``use_cpu`` accelerate trains
    with DDP, which ``ftpeft.core.engine`` refuses). Such ranks, as under DeepSpeed, keep ACCELERATE_USE_CPU unset
    and get ``ddp_backend: gloo``; ``let_accelerate_shard_cpu_ranks`` then lets accelerate apply FSDP to them."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("LOCAL_RANK") is not None
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true", "yes")
    asked_for_cpu = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    if not (launched and fsdp) or asked_for_cpu:
        return False
    import torch

    return not torch.cuda.is_available()


def let_accelerate_shard_cpu_ranks() -> bool:
    """Under an FSDP launch on CPU ranks, mark accelerate's process state as multi-device, so that the Trainer's
    AcceleratorState applies FSDP; returns whether it did.

    accelerate 1.15 applies FSDP only to GPU-like distributed types (``AcceleratorState.__init__``); CPU ranks on
    gloo without ``cpu`` are type NO (``PartialState._prepare_backend`` finds no GPU backend), though the gloo
    process group spans every rank. torch's ``fully_shard`` runs on CPU over gloo; the device stays ``cpu``.
    """
    if not fsdp_on_cpu_ranks():
        return False
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if not torch.distributed.is_initialized():
        return False
    state = PartialState()
    if state.distributed_type != DistributedType.NO or state.num_processes < 2:
        return False
    state.distributed_type = DistributedType.MULTI_GPU  # shared by every PartialState/AcceleratorState after this
    return True


# seconds a rank waits in a collective for the others before its process group fails it: torch's own NCCL default,
# where transformers sets 30 min. It bounds how long the ranks of a lost node wait (on one node the launcher stops
# them first) and must outlast any step one rank takes alone: rank 0 tokenising or caching a large training set.
RANK_TIMEOUT_S = 600


def launch_defaults(known_keys: set[str]) -> dict[str, Any]:
    """Defaults the launch needs (YAML and command line still win): gloo for DeepSpeed or FSDP on CPU ranks; in a
    launch of several ranks, ``--ddp_timeout RANK_TIMEOUT_S`` (read once, when TrainingArguments sets the ranks up)."""
    defaults: dict[str, Any] = {}
    if "ddp_backend" in known_keys and (deepspeed_on_cpu_ranks() or fsdp_on_cpu_ranks()):
        defaults["ddp_backend"] = "gloo"
    if "ddp_timeout" in known_keys and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        defaults["ddp_timeout"] = RANK_TIMEOUT_S
    return defaults


def apply_rank_timeout(parsed: tuple) -> float | None:
    """Give the process group the --ddp_timeout of the parsed TrainingArguments; returns it (None: no ranks to time
    out). transformers passes it on for GPU ranks only: CPU ranks (gloo) kept torch's 30 min."""
    import datetime

    timeouts = [args.ddp_timeout for args in parsed if hasattr(args, "ddp_timeout")]
    if not timeouts:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    # torch.distributed.set_timeout; older releases have only the private _set_pg_timeout, the oldest neither
    set_timeout = getattr(dist, "set_timeout", None) or getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if set_timeout is None:
        return None
    set_timeout(datetime.timedelta(seconds=timeouts[0]))
    return timeouts[0]


def parse_args(
    dataclass_types: tuple[type, ...],
    argv: list[str] | None = None,
    recipe_defaults: dict[str, Any] | None = None,
) -> tuple:
    """Parse ``argv`` (default ``sys.argv[1:]``) into one instance of each dataclass type."""
    argv = list(sys.argv[1:] if argv is None else argv)
    use_cpu_ranks_without_gpu()
    argv, config_path = _pop_flag(argv, "--config", takes_value=True)
    argv, _debug = _pop_flag(argv, "--debug", takes_value=False)
    parser = FtpeftArgumentParser(dataclass_types)
    known_keys = _field_names(dataclass_types)
    parser.set_defaults(**launch_defaults(known_keys))
    if recipe_defaults:
        unknown = set(recipe_defaults) - known_keys
        if unknown:
            raise ValueError(f"recipe defaults name unknown fields: {sorted(unknown)}")  # a bug, not user input
        parser.set_defaults(**recipe_defaults)
    yaml_tokens: list[str] = []
    if config_path:
        config = load_yaml_config(config_path, known_keys)
        yaml_tokens, raw_defaults = _yaml_to_tokens(config)
        parser.set_defaults(**raw_defaults)
        try:
            parser.parse_known_args(yaml_tokens)
        except FtpeftError as error:
            raise FtpeftError(f"--config {config_path}: {error}") from None
    namespace, unknown = parser.parse_known_args(yaml_tokens + argv)
    if unknown:
        raise FtpeftError(f"unknown argument(s): {unknown} (see --help)")
    run_types = [dtype for dtype in dataclass_types if issubclass(dtype, RunArguments)]
    auto_epochs = getattr(namespace, "num_train_epochs", None) == AUTO_EPOCHS
    if auto_epochs:
        if not run_types:
            raise FtpeftError("--num_train_epochs auto: not supported here; give a number of epochs.")
        namespace.num_train_epochs = namespace.auto_max_epochs  # TrainingArguments holds the cap; the job stops earlier
    _check_training_values(dataclass_types, vars(namespace))  # before any __post_init__ does work
    try:  # each ftpeft dataclass checks its declared rules, then its cross-field ones, in __post_init__
        parsed = ParsedArgs(
            dtype(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(dtype) if f.init})
            for dtype in dataclass_types
        )
    except FtpeftError:
        raise
    except (ValueError, TypeError) as error:  # TrainingArguments' own __post_init__ checks
        raise FtpeftError(str(error)) from None
    parsed.resolved = _resolved_settings(parser, yaml_tokens + argv)
    for run_args in (args for args in parsed if isinstance(args, RunArguments)):
        run_args.auto_epochs = auto_epochs
        run_args.given = _given_fields(dataclass_types, yaml_tokens + argv)
    let_accelerate_shard_cpu_ranks()  # TrainingArguments has set up the ranks; the Trainer's Accelerator comes next
    apply_rank_timeout(parsed)
    return parsed


def _check_training_values(dataclass_types: tuple[type, ...], values: dict[str, Any]) -> None:
    """The TRAINING_RULES table, for the TrainingArguments (or subclass) among ``dataclass_types``."""
    module = sys.modules.get("transformers.training_args")  # not imported: no TrainingArguments here (keeps torch out)
    for dtype in dataclass_types:
        if module is not None and issubclass(dtype, module.TrainingArguments):
            fields = {f.name: f.default for f in dataclasses.fields(dtype) if f.init}
            check_training_values({name: values[name] for name in fields}, fields)


def _given_fields(dataclass_types: tuple[type, ...], tokens: list[str]) -> frozenset[str]:
    """The fields that ``tokens`` (--config YAML, then the command line) set, whatever their value."""
    unset = object()
    parser = FtpeftArgumentParser(dataclass_types)
    parser.set_defaults(**{name: unset for name in _field_names(dataclass_types)})
    namespace = vars(parser.parse_known_args(tokens)[0])
    return frozenset(name for name, value in namespace.items() if value is not unset)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ParsedArgs(tuple):
    """The parsed dataclass instances (unpack it like a tuple) plus ``resolved``: every setting that differs
    from the dataclass defaults, after recipe defaults, YAML and command line -- re-feedable as --config."""

    resolved: dict[str, Any]


def _resolved_settings(parser: HfArgumentParser, tokens: list[str]) -> dict[str, Any]:
    namespace = vars(parser.parse_known_args(tokens)[0])
    pristine = FtpeftArgumentParser(parser.dataclass_types)
    resolved = {}
    for key, value in namespace.items():
        if value != pristine.get_default(key) and not key.startswith("no_"):
            resolved[key] = _plain(value)
    resolved.pop("hub_token", None)  # never written anywhere
    return resolved


def save_resolved_config(path: str | Path, resolved: dict[str, Any]) -> None:
    """Write the run's settings as YAML (token-free); ``--config`` accepts the file as it is."""
    atomic_write_text(path, redact(yaml.safe_dump(resolved, sort_keys=True)))


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this run, Hub token removed."""
    argv = sys.argv if argv is None else argv
    parts, hide_next = [], False
    for token in argv:
        if hide_next:
            parts.append("***")
            hide_next = False
            continue
        if token in ("--hub_token", "--hub-token"):
            hide_next = True
        elif token.startswith(("--hub_token=", "--hub-token=")):
            token = token.split("=", 1)[0] + "=***"
        parts.append(token)
    return redact(" ".join(parts))
