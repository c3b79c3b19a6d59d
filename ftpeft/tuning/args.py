"""How much of the model trains: freezing depth, head/backbone LRs, LoRA, the frozen-prefix cache."""

from __future__ import annotations

import dataclasses

from ftpeft.core.errors import FtpeftError


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
    use_peft: bool = dataclasses.field(
        default=False, metadata={"help": "Train LoRA adapters (peft) instead of weights."}
    )
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
