"""The readout of a text classifier: the encoder's [CLS]/pooler (the stock model) or mean pooling over tokens.

Sentence-embedding checkpoints (sentence-transformers, e.g. all-MiniLM-L6-v2) are trained to be read by the
mean of their token states; their [CLS] state and pooler were never trained as a sentence readout, so a
classifier on a frozen encoder reads little from them (0.705 test accuracy on the demo, the majority class).
``MeanPoolingForSequenceClassification`` reads the masked mean of the last hidden states through a
dense + tanh layer and a linear classifier (the new head). It is a ``PreTrainedModel`` with
``model_type: ftpeft-mean-pooling``, registered with ``AutoConfig`` / ``AutoModelForSequenceClassification``
on ``import ftpeft``, so ``pipeline("text-classification", model=OUT)`` loads it after ``import ftpeft``.

``--pooling auto`` (the default) picks mean pooling where the encoder is frozen (``--unfreeze_last 0``)
and the checkpoint says it was trained with mean pooling (``modules.json`` + ``1_Pooling/config.json``);
everywhere else it keeps the stock model, which ``pipeline()`` loads without ftpeft and whose [CLS]
readout the trained top layers adapt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from ftpeft.core.errors import FtpeftError
from ftpeft.core.wrapped_models import classification_output, encoder_config_from_dict, register_auto

MODEL_TYPE = "ftpeft-mean-pooling"


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

    ``base_model_prefix = "encoder"``: ``ftpeft.core.freezing`` finds the encoder's layers through its table,
    and ``dense`` + ``classifier`` are the head. The encoder's own pooler is removed: it reads [CLS], which
    this model does not use (an unused trainable pooler would also stall DDP).
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


def build_mean_pooling_classifier(
    encoder_path: str, label_names: list[str], label_fields: dict[str, Any] | None = None, **load_kwargs: Any
) -> tuple[MeanPoolingForSequenceClassification, list[str]]:
    """A mean-pooling classifier around the pretrained encoder at ``encoder_path``; ``label_fields`` (num_labels,
    id2label, label2id, problem_type: ``Target.config_fields()``) default to one class per row of ``label_names``.

    Returns (model, names of the newly initialised parameters: the head). ``load_kwargs`` go to
    ``from_pretrained`` (revision, cache_dir, trust_remote_code).
    """
    encoder = AutoModel.from_pretrained(encoder_path, **load_kwargs)
    config = MeanPoolingConfig(
        encoder_config=encoder.config.to_dict(),
        encoder_name_or_path=str(encoder_path),
        **(
            label_fields
            or {
                "num_labels": len(label_names),
                "id2label": dict(enumerate(label_names)),
                "label2id": {name: i for i, name in enumerate(label_names)},
            }
        ),
        pad_token_id=encoder.config.pad_token_id,
    )
    model = MeanPoolingForSequenceClassification(config)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("position_ids")]:
        raise FtpeftError(
            f"--model_name_or_path {encoder_path}: encoder weights do not fit ({missing[:3]} {unexpected[:3]})."
        )
    del encoder
    return model, [name for name, _ in model.named_parameters() if not name.startswith("encoder.")]


# --- which readout -------------------------------------------------------------------------------------------


def _read_json(model_path: str, filename: str, **hub_kwargs: Any) -> Any:
    """A JSON file of a local model folder or Hub repo; None when it is not there (or cannot be reached)."""
    from transformers.utils import cached_file

    try:
        path = cached_file(
            model_path,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
    except (OSError, ValueError):
        return None
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def checkpoint_pooling(model_path: str, **hub_kwargs: Any) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with ('mean', 'cls' or 'other'), else None.

    Read from its ``modules.json`` (the Pooling module's folder) and that folder's ``config.json``.
    """
    modules = _read_json(model_path, "modules.json", **hub_kwargs)
    if not isinstance(modules, list):
        return None
    folders = [
        m.get("path", "") for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling")
    ]
    if not folders:
        return None
    settings = _read_json(model_path, f"{folders[0]}/config.json".lstrip("/"), **hub_kwargs)
    if not isinstance(settings, dict):
        return None
    for mode, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token")):
        if settings.get(key):
            return mode
    return "other"  # max, weighted mean, last token: not offered here


def resolve_pooling(requested: str, trained_with: str | None, unfreeze_last_k: int | None, use_peft: bool):
    """(pooling used, why) for ``--pooling requested``; ``trained_with`` is ``checkpoint_pooling``'s answer."""
    if requested == "mean" and use_peft:
        raise FtpeftError(
            "--pooling mean cannot be used with --use_peft: the adapter reloads onto the stock model class; "
            "use --pooling cls (or auto) with LoRA."
        )
    if requested != "auto":
        return requested, f"--pooling {requested} as given"
    if trained_with != "mean":
        what = "is not a sentence-transformers checkpoint" if trained_with is None else f"pools by {trained_with}"
        return "cls", f"the checkpoint {what}: its own [CLS]/pooler readout (the stock model)"
    if unfreeze_last_k != 0 or use_peft:
        return "cls", (
            "layers train, so they adapt the [CLS]/pooler readout; the stock model loads in pipeline() without ftpeft"
        )
    return "mean", (
        "the encoder is frozen (--unfreeze_last 0) and the checkpoint was trained with mean pooling "
        "(sentence-transformers 1_Pooling/config.json): its [CLS]/pooler was never trained as a readout"
    )


def pooling_for(model_args, model_path: str, unfreeze_last_k: int | None, use_peft: bool) -> tuple[str, str]:
    """(pooling used, why) for a run of ``model_path`` with these flags: ``--pooling`` against the checkpoint's own."""
    hub = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir}
    return resolve_pooling(model_args.pooling, checkpoint_pooling(model_path, **hub), unfreeze_last_k, use_peft)


def readout_note(pooling: str, requested: str, why: str) -> str:
    """The card's line on the readout, and on how to load a mean-pooling model."""
    if pooling == "mean":
        return (
            f"Readout: mean pooling over tokens -> dense + tanh -> linear classifier (--pooling {requested}: {why}). "
            f"Its model_type is {MODEL_TYPE}, registered with the Auto classes: `import ftpeft` before loading it."
        )
    return f"Readout: [CLS] + pooler, the stock model (--pooling {requested}: {why})."


def register() -> None:
    """Make AutoConfig / AutoModelForSequenceClassification know ``ftpeft-mean-pooling`` (idempotent)."""
    register_auto(MODEL_TYPE, MeanPoolingConfig, MeanPoolingForSequenceClassification)


register()
