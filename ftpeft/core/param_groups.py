"""Optimizer parameter groups: head LR, layer-wise LR decay, no weight decay on biases and norms."""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from ftpeft.core.freezing import LayerMap, layer_map

ADAPTER_MARKER = "lora_"


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm weights and other 1-D parameters get no weight decay (as timm and transformers do)."""
    return param.ndim <= 1 or name.endswith(".bias")


def build_param_groups(
    model: nn.Module,
    learning_rate: float,
    head_lr: float | None = None,
    layer_decay: float = 1.0,
    weight_decay: float = 0.0,
    layers: LayerMap | None = None,
    adapter_lr: float | None = None,
) -> list[dict]:
    """Optimizer groups for the trainable parameters of ``model``; frozen ones are left out.

    The head gets ``head_lr`` (default ``learning_rate``); LoRA adapter weights get ``adapter_lr``
    (default ``learning_rate``). With ``layer_decay=d`` the top layer (and
    pooler) gets ``learning_rate``, the layer below ``d *`` that, and so on down to the embeddings.
    Every group carries an explicit ``lr`` so a stock ``torch.optim`` optimizer (and HF Trainer's
    schedulers, which scale each group's initial LR) use it as is.
    """
    head_lr = learning_rate if head_lr is None else head_lr
    if layer_decay != 1.0 or head_lr != learning_rate:
        layers = layers or layer_map(model)
    head = set(layers.head) if layers else set()
    depth = layers.depth_of() if layers and layer_decay != 1.0 else {}
    top_depth = layers.num_layers + 1 if layers else 0

    grouped: dict[tuple[float, float], list] = defaultdict(list)
    names: dict[tuple[float, float], list[str]] = defaultdict(list)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name in head:
            lr = head_lr
        elif adapter_lr is not None and ADAPTER_MARKER in name:
            lr = adapter_lr
        else:
            lr = learning_rate * layer_decay ** (top_depth - depth.get(name, top_depth))
        wd = 0.0 if no_decay(name, param) else weight_decay
        grouped[(lr, wd)].append(param)
        names[(lr, wd)].append(name)
    return [
        {"params": params, "lr": lr, "weight_decay": wd, "param_names": names[(lr, wd)]}
        for (lr, wd), params in sorted(grouped.items(), key=lambda item: -item[0][0])
    ]
