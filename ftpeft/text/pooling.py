"""The readout of a text classifier: the encoder's [CLS]/pooler (the stock model) or mean pooling over tokens.

Sentence-embedding checkpoints (sentence-transformers, e.g. all-MiniLM-L6-v2) are trained to be read by the
mean of their token states; their [CLS] state and pooler were never trained as a sentence readout, so a
classifier on a frozen encoder reads little from them (0.705 test accuracy on the demo, the majority class).
``MeanPoolingForSequenceClassification`` (``ftpeft.hub_code.mean_pooling``) reads the masked mean of the last hidden
states through a dense + tanh layer and a linear classifier (the new head). It is a ``PreTrainedModel`` with
``model_type: ftpeft-mean-pooling``; its module is saved with the weights, so
``pipeline("text-classification", model=OUT, trust_remote_code=True)`` loads it without ftpeft (and ``import ftpeft``
registers it with the Auto classes, so ftpeft loads it without remote code).

``--pooling auto`` (the default) picks mean pooling where the encoder is frozen (``--unfreeze_last 0``)
and the checkpoint says it was trained with mean pooling (``modules.json`` + ``1_Pooling/config.json``);
everywhere else it keeps the stock model, which ``pipeline()`` loads without ftpeft and whose [CLS]
readout the trained top layers adapt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoModel

from ftpeft.core.errors import FtpeftError
from ftpeft.core.model_code import register_auto
from ftpeft.hub_code import mean_pooling
from ftpeft.hub_code.mean_pooling import MODEL_TYPE, MeanPoolingConfig, MeanPoolingForSequenceClassification

__all__ = [
    "MODEL_TYPE",
    "MeanPoolingConfig",
    "MeanPoolingForSequenceClassification",
    "build_mean_pooling_classifier",
    "checkpoint_pooling",
    "pooling_for",
    "readout_note",
    "resolve_pooling",
    "wrap_encoder",
]


def build_mean_pooling_classifier(
    encoder_path: str, label_names: list[str], label_fields: dict[str, Any] | None = None, **load_kwargs: Any
) -> tuple[MeanPoolingForSequenceClassification, list[str]]:
    """A mean-pooling classifier around the pretrained encoder at ``encoder_path``; ``label_fields`` (num_labels,
    id2label, label2id, problem_type: ``Target.config_fields()``) default to one class per row of ``label_names``.

    Returns (model, names of the newly initialised parameters: the head). ``load_kwargs`` go to
    ``from_pretrained`` (revision, cache_dir, trust_remote_code).
    """
    encoder = AutoModel.from_pretrained(encoder_path, **load_kwargs)
    fields = label_fields or {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    model = wrap_encoder(encoder, str(encoder_path), fields)
    del encoder
    return model, [name for name, _ in model.named_parameters() if not name.startswith("encoder.")]


def wrap_encoder(
    encoder, encoder_name: str, label_fields: dict[str, Any], **readout: Any
) -> MeanPoolingForSequenceClassification:
    """The readout class around a loaded encoder (its weights copied in, its pooler left out); ``readout`` sets the
    config's readout_layer, pooling and head (default: mean of the last hidden state, dense + tanh)."""
    config = MeanPoolingConfig(
        encoder_config=encoder.config.to_dict(),
        encoder_name_or_path=encoder_name,
        **readout,
        **label_fields,
        pad_token_id=encoder.config.pad_token_id,
    )
    model = MeanPoolingForSequenceClassification(config)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("position_ids")]:
        raise FtpeftError(
            f"--model_name_or_path {encoder_name}: encoder weights do not fit ({missing[:3]} {unexpected[:3]})."
        )
    return model


MODULE_FILE = Path(mean_pooling.__file__).name  # the file a saved mean-pooling model carries


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
            f"Its model_type is {MODEL_TYPE}; its code ({MODULE_FILE}) is saved with the weights: load it with "
            "trust_remote_code=True, without ftpeft."
        )
    return f"Readout: [CLS] + pooler, the stock model (--pooling {requested}: {why})."


def register() -> None:
    """Make AutoConfig / AutoModelForSequenceClassification know ``ftpeft-mean-pooling`` (idempotent)."""
    register_auto(MODEL_TYPE, MeanPoolingConfig, MeanPoolingForSequenceClassification)


register()
