"""The ladder's own flags; the data, model and training flags are those of bert_cls.py / image_cls.py."""

from __future__ import annotations

import dataclasses
import functools

from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, FRACTION, check_fields
from ftpeft.core.walltime import WALLTIME_MARGIN_S, duration_seconds

# rung name -> what it is; the default ladder runs DEFAULT_RUNGS, --rungs all adds the rest
RUNG_NAMES = ("probe_head", "head_only", "last_k_small", "last_k_large", "lora", "full", "lp_ft", "gradual")
DEFAULT_RUNGS = ("probe_head", "head_only", "last_k_small", "last_k_large", "lora", "full")
LADDER_FLAGS = ("modality", "time_budget", "rungs", "seeds", "metric", "tolerance")


@dataclasses.dataclass
class LadderArguments:
    modality: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "text or image; auto: image when a timm model name or an image data flag is given.",
            "choices": ("auto", "text", "image"),
        },
    )
    time_budget: str = dataclasses.field(
        default="30m",
        metadata={
            "help": "Wall time for the rungs (e.g. 90s, 20m, 1.5h; auto: the SLURM job's time left less "
            f"{WALLTIME_MARGIN_S:.0f} s); rungs estimated not to fit are skipped."
        },
    )
    rungs: list[str] = dataclasses.field(
        default_factory=lambda: ["default"],
        metadata={"help": f"Rungs to run: 'default' ({', '.join(DEFAULT_RUNGS)}), 'all', or names of {RUNG_NAMES}."},
    )
    seeds: int = dataclasses.field(
        default=1,
        metadata={"help": "Seeds per rung (--seed, --seed+1, ...); mean ± sd with 2 or more.", "range": COUNT},
    )
    metric: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "Validation metric that chooses (a name of ftpeft's metric registry: accuracy, macro_f1, map, "
            "rmse, spearman, ...). auto: accuracy for one class per row, mAP for label sets, RMSE for numbers."
        },
    )
    tolerance: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Recommend the cheapest rung within this much (a fraction: 0.005 = 0.5 points) of the best "
            "validation score. Default: the larger of 0.005 and one binomial standard error of the best score.",
            "range": FRACTION,
        },
    )

    def __post_init__(self):
        check_fields(self)
        if self.metric != "auto":
            from ftpeft.core.metrics import metric_spec

            metric_spec(self.metric, "--metric")  # an unknown name is refused before any work
        self.budget_seconds  # noqa: B018  (read once, before any work: a bad budget or auto outside SLURM is refused)
        unknown = [name for name in self.rungs if name not in (*RUNG_NAMES, "all", "default")]
        if unknown:
            raise FtpeftError(f"--rungs {' '.join(unknown)}: unknown rung(s); choose from {', '.join(RUNG_NAMES)}.")

    @functools.cached_property
    def budget_seconds(self) -> float:
        """--time_budget in seconds; auto is what the job had left when the ladder started (squeue is asked once)."""
        return duration_seconds(self.time_budget, "--time_budget")

    @property
    def named_rungs(self) -> frozenset[str]:
        """The rungs --rungs names one by one (not through 'default' or 'all'): each runs as asked."""
        return frozenset(self.rungs) - {"all", "default"}

    @property
    def rung_names(self) -> list[str]:
        """The rungs asked for, in ladder order."""
        asked = set(self.rungs)
        if "all" in asked:
            return list(RUNG_NAMES)
        if "default" in asked:
            asked |= set(DEFAULT_RUNGS)
        return [name for name in RUNG_NAMES if name in asked]
