"""The knowledge-injection model as ftpeft builds it: the classes of ``ftpeft.hub_code.knowledge_injection`` (the
file that ships with every saved model, so it loads without ftpeft) around a pretrained encoder.

The model, its injection points (add, concat, gate, none) and its knowledge ids are described in that module.
Importing ``ftpeft`` registers the classes with ``AutoConfig`` / ``AutoModelForSequenceClassification``, so ftpeft
itself loads a saved model without ``trust_remote_code``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from ftpeft.core.errors import FtpeftError
from ftpeft.core.model_code import register_auto
from ftpeft.hub_code.knowledge_injection import (
    FIRST_ROW_ID,
    INJECT_MODES,
    KEYS_FILE,
    KNOWLEDGE_TABLE,
    MODEL_TYPE,
    NO_KNOWLEDGE_ID,
    UNKNOWN_ID,
    UNKNOWN_MODES,
    UNKNOWN_VECTOR,
    ConcatFusion,
    GatedFusion,
    KnowledgeInjectionConfig,
    KnowledgeInjectionForSequenceClassification,
    KnowledgeTextClassificationPipeline,
    set_knowledge_trainable,
)

__all__ = [
    "FIRST_ROW_ID",
    "INJECT_MODES",
    "KEYS_FILE",
    "KNOWLEDGE_TABLE",
    "MODEL_TYPE",
    "NO_KNOWLEDGE_ID",
    "UNKNOWN_ID",
    "UNKNOWN_MODES",
    "UNKNOWN_VECTOR",
    "ConcatFusion",
    "GatedFusion",
    "KnowledgeInjectionConfig",
    "KnowledgeInjectionForSequenceClassification",
    "KnowledgeTextClassificationPipeline",
    "build_knowledge_model",
    "newly_initialised_parameters",
    "set_knowledge_trainable",
]


def build_knowledge_model(
    encoder_path: str,
    label_names: list[str],
    vectors: torch.Tensor | None,
    target=None,
    **settings: Any,
) -> KnowledgeInjectionForSequenceClassification:
    """A knowledge-injection classifier around the pretrained encoder at ``encoder_path``, with the outputs of
    ``target`` (a ``ftpeft.labels.target.Target``: label sets, numbers; default one class per row of ``label_names``).

    ``vectors`` (N, D) fill table rows 2..N+1; ``settings`` are KnowledgeInjectionConfig fields
    (inject_mode, token_knowledge, num_example_ids, example_vector_dim, the input columns, ...). Fails with FtpeftError
    when the encoder's architecture is not in ``ftpeft.ARCHITECTURES``.
    """
    from ftpeft.core.artifacts import check_model_folder, loading_model
    from ftpeft.core.freezing import ARCHITECTURES
    from ftpeft.labels.target import single_label

    if Path(encoder_path).is_dir():
        check_model_folder(encoder_path)
    try:
        encoder_config = AutoConfig.from_pretrained(encoder_path)
    except (OSError, ValueError) as error:
        raise FtpeftError(f"could not load --model_name_or_path {encoder_path}: {str(error).splitlines()[0]}") from None
    model_type = encoder_config.model_type
    if model_type not in ARCHITECTURES:
        raise FtpeftError(
            f"--inject {settings.get('inject_mode', 'add')}: encoder type '{model_type}' is not in "
            f"ftpeft.ARCHITECTURES ({', '.join(sorted(ARCHITECTURES))}); the injection model needs to "
            "know where its embeddings and layers are. Add the type to the table or pick a supported encoder."
        )
    if vectors is not None:
        settings.setdefault("knowledge_size", vectors.shape[0] + FIRST_ROW_ID)
        settings.setdefault("knowledge_dim", vectors.shape[1])
    try:
        config = KnowledgeInjectionConfig(
            encoder_config=encoder_config.to_dict(),
            encoder_name_or_path=str(encoder_path),
            **(target or single_label(label_names)).config_fields(),
            **settings,
        )
    except ValueError as error:  # the shipped module names the flag, but cannot raise ftpeft's error
        raise FtpeftError(str(error)) from None
    with loading_model(encoder_path):
        model = KnowledgeInjectionForSequenceClassification(config)
        pretrained = AutoModel.from_pretrained(encoder_path)
        missing, unexpected = model.encoder.load_state_dict(pretrained.state_dict(), strict=False)
    if unexpected or [m for m in missing if not m.endswith("position_ids")]:
        raise FtpeftError(
            f"--model_name_or_path {encoder_path}: encoder weights do not fit ({missing[:3]} {unexpected[:3]})."
        )
    del pretrained
    if vectors is not None and hasattr(model, KNOWLEDGE_TABLE):
        model.set_knowledge_vectors(torch.as_tensor(vectors, dtype=torch.float32))
    return model


def newly_initialised_parameters(model: nn.Module) -> list[str]:
    """Names of everything outside the encoder (injection, fusion, classifier): trained in every mode."""
    return [name for name, _ in model.named_parameters() if not name.startswith("encoder.")]


def register() -> None:
    """Make AutoConfig / AutoModelForSequenceClassification know ``ftpeft-knowledge`` (idempotent)."""
    register_auto(MODEL_TYPE, KnowledgeInjectionConfig, KnowledgeInjectionForSequenceClassification)


register()
