"""How much of the model trains: freezing depth, head/backbone LRs, LoRA, the frozen-prefix cache."""

from __future__ import annotations

import dataclasses

from ftpeft.core.class_weights import check_class_weights
from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, FRACTION, POSITIVE, SHARE, between, check_fields

EXACT_CACHE_DTYPE = "float32"  # a cache holding the frozen layers' exact output (scores read from it are exact)


def cached_splits(cache_dtype: str) -> tuple[str, ...]:
    """What a --cache_frozen text run caches: train and validation, and test when it scores from the cache."""
    return ("train", "validation", "test") if cache_dtype == EXACT_CACHE_DTYPE else ("train", "validation")


# what to use instead, per recipe, when it refuses a tuning flag
UNSUPPORTED_HINTS = {
    "knowledge_cls": "use recipes/bert_cls.py for the cache ('add' changes the embeddings' output).",
    "image_cls": "image_cls tunes with --unfreeze_last (for a head on frozen features use "
    "recipes/extract_features.py + recipes/train_head.py).",
}


@dataclasses.dataclass
class TuningArguments:
    unfreeze_last: str = dataclasses.field(
        default="all",
        metadata={
            "help": "Train only the top K encoder layers/stages (+ pooler + head): 0 = the readout only (head + "
            "pooler / final norm), 'all' or -1 = full fine-tuning."
        },
    )
    train_embeddings: bool = dataclasses.field(
        default=False, metadata={"help": "Also train the embeddings when --unfreeze_last is not 'all'."}
    )
    head_lr: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Learning rate of the new head. The recipes default to 3e-3 (chosen on validation); left unset "
            "(the library's default, e.g. TuningArguments()), the head trains at --learning_rate.",
            "range": POSITIVE,
        },
    )
    layer_decay: float = dataclasses.field(
        default=1.0,
        metadata={
            "help": "Layer-wise LR decay: each layer going down gets d x the LR of the one above.",
            "range": SHARE,
        },
    )
    use_peft: bool = dataclasses.field(
        default=False, metadata={"help": "Train LoRA adapters (peft) instead of weights."}
    )
    lora_r: int = dataclasses.field(default=8, metadata={"help": "LoRA rank.", "range": COUNT})
    lora_alpha: int = dataclasses.field(default=16, metadata={"help": "LoRA scaling alpha.", "range": COUNT})
    lora_dropout: float = dataclasses.field(
        default=0.05, metadata={"help": "Dropout on the LoRA input.", "range": FRACTION}
    )
    lora_lr: float = dataclasses.field(
        default=2e-3,
        metadata={
            "help": "LR of the LoRA weights (they start at zero and need larger steps than full weights).",
            "range": POSITIVE,
        },
    )
    lora_target_modules: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "Module names to adapt. Default: peft's defaults for the model type."}
    )
    lora_layers: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Put adapters only on the top K layers (peft layers_to_transform).", "range": COUNT},
    )
    merge_adapter: bool = dataclasses.field(
        default=False, metadata={"help": "Also write a merged plain transformers model to OUTPUT_DIR/merged."}
    )
    push_merged: bool = dataclasses.field(
        default=False, metadata={"help": "With --push_to_hub and --use_peft: push the merged model, not the adapter."}
    )
    class_weights: str = dataclasses.field(
        default="none",
        metadata={
            "help": "Class-weighted cross-entropy for imbalanced labels: 'balanced' (n_samples / (n_classes * "
            "count) on the training labels), 'none', or a JSON/CSV FILE mapping every label to a weight >= 0."
        },
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
        metadata={
            "help": "Storage dtype of cached activations: float16 (half the disk), bfloat16 or float32 (exact: "
            "bert_cls then scores validation and test from the cache too, skipping the frozen layers there as well).",
            "choices": ("float16", "bfloat16", "float32"),
        },
    )

    lp_ft: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "LP-FT (Kumar et al. 2022): train the readout alone (what --unfreeze_last 0 trains: head + pooler) "
            "for --lp_fraction of the steps, a probe, then the layers --unfreeze_last asks for from that head; one run."
        },
    )
    lp_fraction: float = dataclasses.field(
        default=0.5,
        metadata={
            "help": "With --lp_ft: the share of the training steps spent on the readout alone.",
            "range": between(0, 1, low_open=True, high_open=True),
        },
    )
    gradual_unfreeze: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Gradual unfreezing (ULMFiT): start with the readout, then unfreeze one more layer (top first) "
            "per epoch (or per --unfreeze_every steps), down to what --unfreeze_last allows."
        },
    )
    unfreeze_every: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "With --gradual_unfreeze: optimizer steps between two unfreezings. Default: one epoch, or the run "
            "split into equal stages (head, then each group) when it has fewer epochs than stages.",
            "range": COUNT,
        },
    )

    def __post_init__(self):
        check_fields(self)
        check_class_weights(self.class_weights)  # balanced, none, or a readable file of valid weights
        unfreeze_last_k(self.unfreeze_last)  # validates early, before any model is loaded
        # the cached prefix must stay frozen, or a cached run would differ from an uncached one
        if self.cache_frozen and self.unfreeze_last_k is None:
            raise FtpeftError(
                "--cache_frozen needs --unfreeze_last k (not 'all'): with 'all' nothing is frozen to cache."
            )
        if self.cache_frozen and self.train_embeddings:
            raise FtpeftError("--cache_frozen cannot be used with --train_embeddings: the cached part would change.")
        if self.cache_frozen and self.use_peft:
            raise FtpeftError("--cache_frozen cannot be used with --use_peft: LoRA adapters below the boundary train.")
        if (self.merge_adapter or self.push_merged) and not self.use_peft:
            raise FtpeftError("--merge_adapter/--push_merged only make sense with --use_peft.")
        self._check_staged_unfreezing()

    def _check_staged_unfreezing(self) -> None:
        if self.unfreeze_every is not None and not self.gradual_unfreeze:
            raise FtpeftError("--unfreeze_every only makes sense with --gradual_unfreeze.")
        if not (self.lp_ft or self.gradual_unfreeze):
            return
        flag = "--lp_ft" if self.lp_ft else "--gradual_unfreeze"
        if self.lp_ft and self.gradual_unfreeze:
            raise FtpeftError(
                "--lp_ft and --gradual_unfreeze cannot be combined: both start with the head alone; pick one."
            )
        if self.use_peft:
            raise FtpeftError(f"{flag} unfreezes layers of the model; it cannot be used with --use_peft (LoRA).")
        if self.unfreeze_last_k == 0:
            raise FtpeftError(
                f"{flag} needs --unfreeze_last k >= 1 or 'all': with 0 only the head trains, so nothing unfreezes later."
            )

    def require_supported(self, recipe: str, peft: bool, cache: bool) -> None:
        """Refuse, before any work, what ``recipe`` cannot do (LoRA, the frozen-prefix cache)."""
        refused = [flag for flag, ok in (("--use_peft", peft), ("--cache_frozen", cache)) if not ok]
        asked = [flag for flag in refused if getattr(self, flag[2:])]
        if asked:
            raise FtpeftError(f"{' and '.join(asked)}: not supported by {recipe}; {UNSUPPORTED_HINTS[recipe]}")

    @property
    def evaluates_from_cache(self) -> bool:
        """A float32 cache holds the frozen layers' exact output, so scores read from it are the saved model's."""
        return self.cache_frozen and self.cache_dtype == EXACT_CACHE_DTYPE

    @property
    def engine_dependent_flags(self) -> list[str]:
        """The given flags that some engines cannot run (``ftpeft.core.engine.ENGINE_REFUSALS``, before any work)."""
        return [flag for flag in ("--cache_frozen", "--lp_ft", "--gradual_unfreeze") if getattr(self, flag[2:])]

    @property
    def unfreeze_last_k(self) -> int | None:
        """Number of top layers to train, or None for full fine-tuning."""
        return unfreeze_last_k(self.unfreeze_last)


def unfreeze_last_k(value: str | int) -> int | None:
    """Parse ``--unfreeze_last``: 'all' or -1 -> None (everything), else a non-negative layer count."""
    text = str(value).strip().lower()
    if text in ("all", "-1"):
        return None
    try:
        k = int(text)
    except ValueError:
        raise FtpeftError(
            f"--unfreeze_last must be a layer count (0 = head only) or 'all'/-1, got {value!r}."
        ) from None
    if k < 0:
        raise FtpeftError(f"--unfreeze_last must be >= 0 or 'all'/-1, got {k}.")
    return k
