"""A sequence classifier that reads an encoder by the mean of its token states (ftpeft's mean-pooling readout), or
by one hidden state's mean or first token through a linear layer (a frozen-feature head exported as one model).

Saved by ftpeft next to the weights it belongs to; it needs only torch and transformers. Load the model with

    from transformers import pipeline
    classifier = pipeline("text-classification", model="OUTPUT_DIR", trust_remote_code=True)
    classifier("great film", truncation=True)

Sentence-embedding checkpoints (sentence-transformers) are trained to be read by the mean of their token states, not
by their [CLS] state or pooler. ``MeanPoolingForSequenceClassification`` reads the masked mean of the last hidden
states through a dense + tanh layer and a linear classifier; its loss follows ``config.problem_type`` (cross-entropy,
BCE for label sets, MSE for numbers), as transformers' own classifiers do.

Three config options say how it reads the encoder (their defaults are the readout above, which every model saved
before them has): ``readout_layer`` (None: the last hidden state; an index into the hidden states, 0 = embeddings,
-1 = last), ``pooling`` ('mean' over real tokens, or 'cls': the first token's state) and ``head`` ('dense_tanh', or
'linear': the classifier alone, as a linear head trained on ftpeft's frozen features is).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "ftpeft-mean-pooling"
POOLINGS = ("mean", "cls")
HEADS = ("dense_tanh", "linear")


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
    """A classifier that pools an encoder: the encoder's config (as a dict), where and how it is read, and the head.

    ``readout_layer``: None reads the encoder's last_hidden_state; an index reads that entry of its hidden_states
    (0 = the embeddings, -1 = the last layer). ``pooling``: 'mean' (masked mean over real tokens) or 'cls' (the first
    token's state). ``head``: 'dense_tanh' (dense + tanh, then the classifier) or 'linear' (the classifier alone).
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        encoder_config: dict | None = None,
        encoder_name_or_path: str = "",
        classifier_dropout: float = 0.1,
        initializer_range: float = 0.02,
        readout_layer: int | None = None,
        pooling: str = "mean",
        head: str = "dense_tanh",
        **kwargs,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}.")
        if head not in HEADS:
            raise ValueError(f"head {head!r}: use one of {', '.join(HEADS)}.")
        self.encoder_config = dict(encoder_config or {})
        self.encoder_name_or_path = encoder_name_or_path
        self.classifier_dropout = classifier_dropout
        self.initializer_range = initializer_range
        self.readout_layer = None if readout_layer is None else int(readout_layer)
        self.pooling = pooling
        self.head = head
        super().__init__(**kwargs)

    @property
    def encoder(self) -> PretrainedConfig:
        """The wrapped encoder's config object (built from the stored dict)."""
        return encoder_config_from_dict(self.encoder_config)


class MeanPoolingForSequenceClassification(PreTrainedModel):
    """Masked mean of the encoder's last hidden states -> dense + tanh -> dropout -> linear classifier (the default
    config); the config's readout_layer, pooling and head change where the encoder is read, how, and what follows.

    ``base_model_prefix = "encoder"``: the wrapped encoder is ``model.base_model``; ``dense`` (None for a linear
    head) + ``classifier`` are the head. The encoder's own pooler is removed: no readout here uses it (an unused
    trainable pooler would also stall DDP).
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
        self.dense = nn.Linear(hidden, hidden) if config.head == "dense_tanh" else None
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def pooled(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The mean over real tokens (padding excluded), as sentence-transformers computes it; with pooling 'cls' the
        first token's state."""
        if self.config.pooling == "cls":
            return last_hidden_state[:, 0]
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
        layer = self.config.readout_layer
        if layer is not None:
            encoder_kwargs["output_hidden_states"] = True
        outputs = self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, **encoder_kwargs)
        states = outputs.last_hidden_state if layer is None else outputs.hidden_states[layer]
        features = self.pooled(states, attention_mask)
        if self.dense is not None:
            features = torch.tanh(self.dense(features))
        logits = self.classifier(self.dropout(features))
        return classification_output(logits, labels, self.config.num_labels, self.config.problem_type)


# save_pretrained copies this file next to the weights and writes auto_map into config.json (Trainer's checkpoints too)
MeanPoolingConfig.register_for_auto_class()
MeanPoolingForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
