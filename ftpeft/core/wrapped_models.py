"""What ftpeft's own transformers models share: they wrap an encoder, end in a sequence-classification loss,
and register with the Auto classes so ``from_pretrained`` finds them after ``import ftpeft``."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput


def encoder_config_from_dict(stored: dict) -> PretrainedConfig:
    """The wrapped encoder's config object, rebuilt from the dict a wrapper config stores."""
    settings = dict(stored)
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def classification_output(
    logits: torch.Tensor, labels: torch.Tensor | None, num_labels: int, problem_type: str | None = None
) -> SequenceClassifierOutput:
    """Logits plus the loss transformers' own classifiers use for the config's ``problem_type``: BCE with logits for
    label sets, MSE for numbers (and for one output when unset), cross-entropy otherwise."""
    loss = None
    if labels is not None:
        if problem_type == "multi_label_classification":
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype).view_as(logits))
        elif problem_type == "regression" or num_labels == 1:
            loss = nn.functional.mse_loss(logits, labels.to(logits.dtype).view_as(logits))
        else:
            loss = nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return SequenceClassifierOutput(loss=loss, logits=logits)


def register_auto(model_type: str, config_class: type, model_class: type) -> None:
    """Make AutoConfig / AutoModelForSequenceClassification know ``model_type`` (idempotent)."""
    try:
        AutoConfig.register(model_type, config_class)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForSequenceClassification.register(config_class, model_class)
    except ValueError:
        pass
