"""A sequence classifier that reads an encoder by the mean of its token states (ftpeft's mean-pooling readout).

Saved by ftpeft next to the weights it belongs to; it needs only torch and transformers. Load the model with

    from transformers import pipeline
    classifier = pipeline("text-classification", model="OUTPUT_DIR", trust_remote_code=True)
    classifier("great film", truncation=True)

Sentence-embedding checkpoints (sentence-transformers) are trained to be read by the mean of their token states, not
by their [CLS] state or pooler. ``MeanPoolingForSequenceClassification`` reads the masked mean of the last hidden
states through a dense + tanh layer and a linear classifier; its loss follows ``config.problem_type`` (cross-entropy,
BCE for label sets, MSE for numbers), as transformers' own classifiers do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "ftpeft-mean-pooling"


# --- what every ftpeft architecture needs (kept identical in each shipped module) ----------------------------------


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


# --- the model ------------------------------------------------------------------------------------------------------


class MeanPoolingConfig(PretrainedConfig):
    """A classifier that mean-pools an encoder: the encoder's config (as a dict) plus the head's sizes."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        encoder_config: dict | None = None,
        encoder_name_or_path: str = "",
        classifier_dropout: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.encoder_config = dict(encoder_config or {})
        self.encoder_name_or_path = encoder_name_or_path
        self.classifier_dropout = classifier_dropout
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def encoder(self) -> PretrainedConfig:
        """The wrapped encoder's config object (built from the stored dict)."""
        return encoder_config_from_dict(self.encoder_config)


class MeanPoolingForSequenceClassification(PreTrainedModel):
    """Masked mean of the encoder's last hidden states -> dense + tanh -> dropout -> linear classifier.

    ``base_model_prefix = "encoder"``: the wrapped encoder is ``model.base_model``; ``dense`` + ``classifier`` are the
    head. The encoder's own pooler is removed: it reads [CLS], which this model does not use (an unused trainable
    pooler would also stall DDP).
    """

    config_class = MeanPoolingConfig
    config: MeanPoolingConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: MeanPoolingConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        hidden = self.encoder.config.hidden_size
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def pooled(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The mean over real tokens (padding excluded), as sentence-transformers computes it."""
        if attention_mask is None:
            return last_hidden_state.mean(dim=1)
        weights = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
        return (last_hidden_state * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        encoder_kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            encoder_kwargs["token_type_ids"] = token_type_ids
        outputs = self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, **encoder_kwargs)
        features = torch.tanh(self.dense(self.pooled(outputs.last_hidden_state, attention_mask)))
        logits = self.classifier(self.dropout(features))
        return classification_output(logits, labels, self.config.num_labels, self.config.problem_type)


# save_pretrained copies this file next to the weights and writes auto_map into config.json (Trainer's checkpoints too)
MeanPoolingConfig.register_for_auto_class()
MeanPoolingForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
