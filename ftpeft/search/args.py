"""The search flags: how many trials, and which fields they sample."""

from __future__ import annotations

import dataclasses

from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, check_fields

# every field a trial can sample; the ranges are in ftpeft.search.space
SEARCHABLE = ("learning_rate", "head_lr", "layer_decay", "lora_r", "lora_alpha", "lora_lr", "unfreeze_last")
LORA_FIELDS = ("lora_r", "lora_alpha", "lora_lr")


@dataclasses.dataclass
class SearchArguments:
    hp_search: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Run N Optuna trials (trial 0 = the settings as given), choose on the validation split, prune "
            "with a median pruner, write hp_search.md + best.yaml, then train the best settings once and score "
            "the test split with that model only. Needs pip install -e '.[tune]'.",
            "range": COUNT,
        },
    )
    hp_search_fields: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Fields the trials sample. Default: learning_rate head_lr layer_decay, plus lora_r lora_alpha "
            "lora_lr with --use_peft. unfreeze_last is searched only when listed (not with --cache_frozen).",
            "choices": SEARCHABLE,
        },
    )
    hp_search_metric: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "Validation metric the trials are scored by, in its registry direction (loss, RMSE: lower is "
            "better). auto: accuracy for one class per row, mAP for label sets, RMSE for numbers."
        },
    )

    def __post_init__(self):
        check_fields(self)
        if self.hp_search_metric != "auto":
            from ftpeft.core.metrics import metric_spec

            metric_spec(self.hp_search_metric, "--hp_search_metric")  # an unknown name is refused before any work
        if self.hp_search_fields is not None and self.hp_search is None:
            raise FtpeftError("--hp_search_fields only makes sense with --hp_search N.")
        if self.hp_search_fields is not None and not self.hp_search_fields:
            raise FtpeftError("--hp_search_fields needs at least one field.")

    def fields(self, use_peft: bool) -> tuple[str, ...]:
        """The fields the trials sample, in a fixed order."""
        if self.hp_search_fields is not None:
            return tuple(name for name in SEARCHABLE if name in self.hp_search_fields)
        return ("learning_rate", "head_lr", "layer_decay", *(LORA_FIELDS if use_peft else ()))

    def check_with(self, tuning_args, training_args) -> None:
        """Refuse, before any model is loaded, a search that cannot run as asked (naming the flags)."""
        if self.hp_search is None:
            return
        fields = self.fields(tuning_args.use_peft)
        lora = [f"--{name}" for name in fields if name in LORA_FIELDS]
        if lora and not tuning_args.use_peft:
            raise FtpeftError(f"--hp_search_fields {' '.join(lora)}: LoRA fields need --use_peft.")
        if "unfreeze_last" in fields and tuning_args.cache_frozen:
            raise FtpeftError(
                "--hp_search_fields unfreeze_last cannot be used with --cache_frozen: each depth needs its own cache; "
                "fix --unfreeze_last k to share one cache across trials, or search the depth without the cache."
            )
        if tuning_args.lp_ft or tuning_args.gradual_unfreeze:
            raise FtpeftError("--hp_search cannot be combined with --lp_ft or --gradual_unfreeze (staged unfreezing).")
        if training_args.resume_from_checkpoint not in (None, "auto"):
            raise FtpeftError(
                f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: a search continues only from its "
                "own output dir (--resume_from_checkpoint auto: the trials left, then the final run); or train the "
                "best settings with --config best.yaml."
            )
        if training_args.world_size > 1:
            raise FtpeftError("--hp_search runs in one process; launch it without several ranks.")
