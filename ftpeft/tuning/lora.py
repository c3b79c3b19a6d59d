"""LoRA through peft: target modules, top-k layers, and the new head always trained and saved with the adapter.

How LoRA combines with ``--unfreeze_last k``: adapters go on the layers *below* the top k; the top k layers
are trained in full and saved with the adapter (peft ``modules_to_save``), as is the head. ``k=0`` (or
'all', the default) puts adapters on every layer (or the top ``--lora_layers``). The readout that
``--unfreeze_last 0`` trains (head + pooler / final norm) is always trained in full with LoRA too: a
checkpoint's pooler may never have been trained as a readout (sentence-transformers models are mean-pooled).
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from ftpeft.core.errors import FtpeftError
from ftpeft.core.freezing import ARCHITECTURES, LayerMap, layer_map


def _top_level_modules(names: list[str]) -> list[str]:
    return sorted({name.split(".")[0] for name in names})


def linear_module_names(model: nn.Module, limit: int = 8) -> list[str]:
    """The most common leaf names of Linear layers (what --lora_target_modules can name)."""
    counts = Counter(name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear))
    return [name for name, _ in counts.most_common(limit)]


def encoder_model_type(model: nn.Module) -> str | None:
    """The model type of the encoder (``model.base_model``): the same as the model's own for stock
    transformers classes, the wrapped encoder's for wrappers such as ftpeft's knowledge-injection model."""
    base = getattr(model, "base_model", model)
    return getattr(getattr(base, "config", None), "model_type", None) or getattr(
        getattr(model, "config", None), "model_type", None
    )


def _layers_attribute(model: nn.Module) -> str | None:
    model_type = encoder_model_type(model)
    layout = ARCHITECTURES.get(model_type)
    return layout.layers.rsplit(".", 1)[-1] if layout else None


def build_lora_config(
    model: nn.Module,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str] | None,
    lora_layers: int | None,
    unfreeze_last: int,
    newly_initialised: list[str],
    layers: LayerMap | None = None,
    task_type: str = "SEQ_CLS",
):
    """A peft ``LoraConfig`` for ``model`` following ftpeft's rules (see the module docstring)."""
    from peft import LoraConfig
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = encoder_model_type(model)
    if target_modules is None:
        target_modules = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if target_modules is None:
            raise FtpeftError(
                f"--lora_target_modules: peft has no default target modules for model type '{model_type}'; "
                f"pass some, e.g. --lora_target_modules {' '.join(linear_module_names(model)[:2])} "
                f"(Linear layers in this model: {', '.join(linear_module_names(model))})."
            )
    layers = layers or layer_map(model)
    num_layers = layers.num_layers
    if unfreeze_last > num_layers or (lora_layers or 0) > num_layers:
        raise FtpeftError(
            f"--unfreeze_last {unfreeze_last} / --lora_layers {lora_layers}: the model has only {num_layers} layers."
        )
    modules_to_save = set(_top_level_modules(layers.head)) | set(_top_level_modules(newly_initialised))
    if model_type in ARCHITECTURES:  # the readout, as --unfreeze_last 0 trains it
        modules_to_save |= set(ARCHITECTURES[model_type].top)
    layers_pattern = _layers_attribute(model)
    adapted = list(range(num_layers))
    if unfreeze_last:
        adapted = adapted[: num_layers - unfreeze_last]
        # fully trained top layers travel with the adapter; names like 'encoder.layer.5' match by suffix
        layers_path = ARCHITECTURES[model_type].layers if model_type in ARCHITECTURES else None
        if layers_path is None:
            raise FtpeftError(f"--unfreeze_last with --use_peft needs a known architecture, not '{model_type}'.")
        modules_to_save |= {f"{layers_path}.{i}" for i in range(num_layers - unfreeze_last, num_layers)}
    if lora_layers:
        adapted = [i for i in adapted if i >= num_layers - lora_layers]
    restrict = adapted != list(range(num_layers))
    if restrict and not adapted:
        raise FtpeftError("--lora_layers and --unfreeze_last leave no layer for LoRA adapters; lower --unfreeze_last.")
    if restrict and layers_pattern is None:
        raise FtpeftError(f"--lora_layers needs a known layer list; model type '{model_type}' is not in the table.")
    return LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=sorted(modules_to_save),
        layers_to_transform=adapted if restrict else None,
        layers_pattern=layers_pattern if restrict else None,
    )


def apply_lora(model: nn.Module, config):
    """``get_peft_model`` with a clear error when the targets match nothing."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except ValueError as error:  # peft's NoMatchingPeftModuleError is a ValueError
        if "not found in the base model" in str(error) or "No modules were targeted" in str(error):
            raise FtpeftError(
                f"--lora_target_modules {sorted(config.target_modules)} match no module of this model; "
                f"Linear layers it has: {', '.join(linear_module_names(model))}."
            ) from None
        raise


MERGED_DIR = "merged"


def write_merged_model(adapter_dir: str, label_names: list[str], merged_subdir: str = MERGED_DIR) -> str:
    """Reload the saved adapter, merge it into its base model and save a plain transformers model.

    The merged copy (with tokenizer) lands in ``adapter_dir/merged`` and loads in ``pipeline()``.
    Reloading from disk also proves the saved adapter is complete.
    """
    from pathlib import Path

    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    from ftpeft.core.card import adapter_label_kwargs

    target = Path(adapter_dir) / merged_subdir
    adapter = AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir, **adapter_label_kwargs(label_names))
    adapter.merge_and_unload().save_pretrained(target)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(target)
    return str(target)
