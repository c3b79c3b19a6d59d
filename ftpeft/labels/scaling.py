"""Regression targets train standardised (mean 0, sd 1 on the training split); the saved model outputs the targets'
own units because the scaling is folded into its output layer at save time: W' = sd * W, b' = sd * b + mean."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ftpeft.core.errors import FtpeftError
from ftpeft.labels.target import Target


def output_layer(model: nn.Module, num_outputs: int) -> nn.Linear:
    """The layer that produces the model's outputs: the last ``nn.Linear`` with ``num_outputs`` outputs (under peft,
    the trained copy of the head, which ``modules_to_save`` registers after the original)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_outputs]
    if not layers:
        raise FtpeftError(
            f"the model has no linear output layer with {num_outputs} outputs to fold the target scaling into."
        )
    return layers[-1]


@contextlib.contextmanager
def folded_scaling(model: nn.Module, target: Target | None) -> Iterator[None]:
    """Within the block the model's output layer gives target units (for saving); after it, standardised units again,
    restored bit for bit. Nothing happens for a target that is not a regression."""
    if target is None or not target.is_regression:
        yield
        return
    layer = output_layer(model, target.num_outputs)
    weight, bias = layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
    std = torch.tensor(target.std, dtype=weight.dtype, device=weight.device)
    mean = torch.tensor(target.mean, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        layer.weight.mul_(std[:, None])
        if layer.bias is None:
            raise FtpeftError("the model's output layer has no bias to fold the regression target's mean into.")
        layer.bias.mul_(std).add_(mean)
    try:
        yield
    finally:
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
