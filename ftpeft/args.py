"""One argument system for every recipe: dataclass fields, a YAML file as defaults, the command line wins.

``parse_args((ModelArguments, TextDataArguments, TuningArguments, TrainingArguments))`` returns one
instance per dataclass. Precedence, lowest first: dataclass default < the recipe's own defaults <
``--config FILE.yaml`` < command line. argparse does all typing (YAML values are fed to it as
command-line tokens), so a YAML value and a flag are checked the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .errors import FtpeftError, redact


@dataclasses.dataclass
class ModelArguments:
    model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Hub id or local folder of the pretrained model. Default: the recipe's offline demo model."},
    )
    tokenizer_name: str | None = dataclasses.field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    model_revision: str = dataclasses.field(default="main", metadata={"help": "Hub branch, tag or commit."})
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "Where Hub downloads are cached."})
    trust_remote_code: bool = dataclasses.field(
        default=False, metadata={"help": "Run modelling code shipped with the checkpoint. Off unless you ask."}
    )


@dataclasses.dataclass
class TextDataArguments:
    dataset_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub dataset id (e.g. glue). Default: the built-in offline demo tweets."}
    )
    dataset_config_name: str | None = dataclasses.field(default=None, metadata={"help": "Hub dataset config (e.g. sst2)."})
    train_file: str | None = dataclasses.field(default=None, metadata={"help": "Local csv/json/jsonl/parquet training file."})
    validation_file: str | None = dataclasses.field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = dataclasses.field(default=None, metadata={"help": "Local test file."})
    text_columns: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "One or two text columns (a pair is encoded as one sequence pair). Default: guessed."},
    )
    label_column: str = dataclasses.field(default="label", metadata={"help": "Column holding the labels (strings or ints)."})
    validation_split_percentage: int = dataclasses.field(
        default=10, metadata={"help": "Stratified, seeded %% of train held out for validation when none is given."}
    )
    max_train_samples: int | None = dataclasses.field(default=None, metadata={"help": "Keep at most this many training rows."})
    max_eval_samples: int | None = dataclasses.field(default=None, metadata={"help": "Keep at most this many validation rows."})
    max_test_samples: int | None = dataclasses.field(default=None, metadata={"help": "Keep at most this many test rows."})
    max_seq_length: int = dataclasses.field(default=128, metadata={"help": "Truncate tokenised inputs to this length."})
    demo_classes: list[str] = dataclasses.field(
        default_factory=lambda: ["negative", "positive"],
        metadata={"help": "Classes of the offline demo tweets to keep (negative, neutral, positive)."},
    )
    demo_train_samples: int = dataclasses.field(
        default=4000, metadata={"help": "Offline demo only: training tweets to use (the rest of the corpus is unused)."}
    )
    demo_test_samples: int = dataclasses.field(
        default=1000, metadata={"help": "Offline demo only: held-out test tweets (a fixed split, independent of --seed)."}
    )
    preprocessing_num_workers: int | None = dataclasses.field(default=None, metadata={"help": "Processes for tokenisation."})

    def __post_init__(self):
        if not 0 < self.validation_split_percentage < 100:
            raise FtpeftError(
                f"--validation_split_percentage must be between 1 and 99, got {self.validation_split_percentage}."
            )
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise FtpeftError(f"--text_columns takes one or two column names, got {self.text_columns}.")
        for flag in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            value = getattr(self, flag)
            if value is not None and value <= 0:
                raise FtpeftError(f"--{flag} must be positive, got {value}.")
        if self.validation_file and not self.train_file:
            raise FtpeftError("--validation_file was given without --train_file; pass both (or neither).")


@dataclasses.dataclass
class TuningArguments:
    unfreeze_last: str = dataclasses.field(
        default="all",
        metadata={
            "help": "Train only the top K encoder layers/stages (+ pooler + head): 0 = head only, "
            "'all' or -1 = full fine-tuning."
        },
    )
    train_embeddings: bool = dataclasses.field(
        default=False, metadata={"help": "Also train the embeddings when --unfreeze_last is not 'all'."}
    )
    head_lr: float | None = dataclasses.field(
        default=None, metadata={"help": "Learning rate of the new head. Default: --learning_rate."}
    )
    layer_decay: float = dataclasses.field(
        default=1.0, metadata={"help": "Layer-wise LR decay: each layer going down gets d x the LR of the one above."}
    )
    use_peft: bool = dataclasses.field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of weights."})
    lora_r: int = dataclasses.field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = dataclasses.field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = dataclasses.field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_lr: float = dataclasses.field(
        default=2e-3,
        metadata={"help": "LR of the LoRA weights (they start at zero and need larger steps than full weights)."},
    )
    lora_target_modules: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "Module names to adapt. Default: peft's defaults for the model type."}
    )
    lora_layers: int | None = dataclasses.field(
        default=None, metadata={"help": "Put adapters only on the top K layers (peft layers_to_transform)."}
    )
    merge_adapter: bool = dataclasses.field(
        default=False, metadata={"help": "Also write a merged plain transformers model to OUTPUT_DIR/merged."}
    )
    push_merged: bool = dataclasses.field(
        default=False, metadata={"help": "With --push_to_hub and --use_peft: push the merged model, not the adapter."}
    )

    cache_frozen: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Compute the frozen embeddings + bottom layers once, cache their output on disk, and train only "
            "the top --unfreeze_last k layers from it (exact; refused where it cannot be)."
        },
    )
    activation_cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Where --cache_frozen keeps its caches. Default: ~/.cache/ftpeft/activations."}
    )
    cache_dtype: str = dataclasses.field(
        default="float16",
        metadata={"help": "Storage dtype of cached activations: float16 (half the disk), bfloat16 or float32 (exact)."},
    )

    def __post_init__(self):
        unfreeze_last_k(self.unfreeze_last)  # validates early, before any model is loaded
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            raise FtpeftError(f"--cache_dtype must be float16, bfloat16 or float32, got {self.cache_dtype!r}.")
        if self.cache_frozen and (self.unfreeze_last_k is None or self.use_peft or self.train_embeddings):
            raise FtpeftError(
                "--cache_frozen needs --unfreeze_last k (not 'all') and cannot be combined with --use_peft or "
                "--train_embeddings: the cached layers must stay frozen."
            )
        if self.layer_decay <= 0 or self.layer_decay > 1:
            raise FtpeftError(f"--layer_decay must be in (0, 1], got {self.layer_decay}.")
        if self.head_lr is not None and self.head_lr <= 0:
            raise FtpeftError(f"--head_lr must be positive, got {self.head_lr}.")
        if self.lora_lr <= 0:
            raise FtpeftError(f"--lora_lr must be positive, got {self.lora_lr}.")
        if self.lora_r <= 0:
            raise FtpeftError(f"--lora_r must be a positive rank, got {self.lora_r}.")
        if not 0 <= self.lora_dropout < 1:
            raise FtpeftError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.lora_layers is not None and self.lora_layers <= 0:
            raise FtpeftError(f"--lora_layers must be a positive number of top layers, got {self.lora_layers}.")
        if (self.merge_adapter or self.push_merged) and not self.use_peft:
            raise FtpeftError("--merge_adapter/--push_merged only make sense with --use_peft.")

    @property
    def unfreeze_last_k(self) -> int | None:
        """Number of top layers to train, or None for full fine-tuning."""
        return unfreeze_last_k(self.unfreeze_last)


@dataclasses.dataclass
class RunArguments:
    overwrite_output_dir: bool = dataclasses.field(
        default=False, metadata={"help": "Allow writing into a non-empty --output_dir (files there may be replaced)."}
    )


def unfreeze_last_k(value: str | int) -> int | None:
    """Parse ``--unfreeze_last``: 'all' or -1 -> None (everything), else a non-negative layer count."""
    text = str(value).strip().lower()
    if text in ("all", "-1"):
        return None
    try:
        k = int(text)
    except ValueError:
        raise FtpeftError(f"--unfreeze_last must be a layer count (0 = head only) or 'all'/-1, got {value!r}.") from None
    if k < 0:
        raise FtpeftError(f"--unfreeze_last must be >= 0 or 'all'/-1, got {k}.")
    return k


class FtpeftArgumentParser(HfArgumentParser):
    """HfArgumentParser whose errors are FtpeftError (one line, exit 2) instead of argparse's exit."""

    def error(self, message):  # argparse hook
        raise FtpeftError(f"{message} (see --help)")


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
        os.environ["ACCELERATE_USE_CPU"] = "true"
        return True
    return False


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
    try:
        parsed = ParsedArgs(parser.parse_args_into_dataclasses(yaml_tokens + argv, look_for_args_file=False))
    except FtpeftError:
        raise
    except ValueError as error:
        if "not used by the HfArgumentParser" in str(error):
            unknown = str(error).split(":", 1)[1].strip()
            raise FtpeftError(f"unknown argument(s): {unknown} (see --help)") from None
        raise FtpeftError(str(error)) from None
    except TypeError as error:  # TrainingArguments' own __post_init__ checks
        raise FtpeftError(str(error)) from None
    parsed.resolved = _resolved_settings(parser, yaml_tokens + argv)
    return parsed


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
    Path(path).write_text(redact(yaml.safe_dump(resolved, sort_keys=True)))


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
