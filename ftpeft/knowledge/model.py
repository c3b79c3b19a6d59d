"""A transformers model that lets any supported encoder use external knowledge vectors.

Three injection points (``KnowledgeInjectionConfig.inject_mode``):

- ``add`` -- token level, at the embedding layer: a token that starts a known entity/word gets its
  external vector, projected to the hidden size and added to its word embedding (before the encoder's
  position embeddings and LayerNorm); every other token gets exactly zero.
- ``concat`` -- example level, after the final layer: the external vectors of an example are concatenated
  with the pooled/[CLS] output and go through an MLP to the classifier (Ostendorff et al. 2019).
- ``gate`` -- late fusion through a learned gate: ``z * tanh(W_t h) + (1 - z) * tanh(W_k e)`` with
  ``z = sigmoid(W_z [h; e])`` (a gated multimodal unit, Arevalo et al. 2017).
- ``none`` -- the text-only control with the same code path (used by the benchmark).

External features of an example (``concat``/``gate``) are, concatenated in this order: the mean of the
vectors of the entities mentioned in the text (``knowledge_ids``, token level), the vectors of
``num_example_ids`` ID slots (``example_knowledge_ids``), and ``example_vector_dim`` raw floats
(``knowledge_vectors``).

Knowledge ids: 0 = no knowledge (always a zero vector), 1 = unknown entity (zero, or a learned vector
with ``unknown_entity="learned"``), 2.. = rows of the knowledge table. The table is a weight of the model
(saved in model.safetensors), frozen unless ``train_knowledge``.

``base_model_prefix = "encoder"``: ``model.base_model`` is the wrapped encoder, so ``ftpeft.core.freezing``
sees its layers through the table of architectures, and every injection/fusion module is "head".
Importing ``ftpeft`` registers the classes with ``AutoConfig`` / ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from ftpeft.core.errors import FtpeftError
from ftpeft.core.wrapped_models import classification_output, encoder_config_from_dict, register_auto

MODEL_TYPE = "ftpeft-knowledge"
INJECT_MODES = ("none", "add", "concat", "gate")
UNKNOWN_MODES = ("zero", "learned")
NO_KNOWLEDGE_ID = 0
UNKNOWN_ID = 1
FIRST_ROW_ID = 2  # table row i of the knowledge source has id i + FIRST_ROW_ID
KNOWLEDGE_TABLE = "knowledge_table"  # module names: what freezing and tests refer to
UNKNOWN_VECTOR = "unknown_knowledge"


class KnowledgeInjectionConfig(PretrainedConfig):
    """What a knowledge-injection model is: the encoder (config dict + name), the mode and the sizes."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        encoder_config: dict | None = None,
        encoder_name_or_path: str = "",
        inject_mode: str = "add",
        knowledge_size: int = 0,
        knowledge_dim: int = 0,
        token_knowledge: bool = True,
        num_example_ids: int = 0,
        example_vector_dim: int = 0,
        fusion_hidden_size: int = 256,
        unknown_entity: str = "zero",
        train_knowledge: bool = False,
        knowledge_sources: list | None = None,
        classifier_dropout: float = 0.1,
        **kwargs,
    ):
        self.encoder_config = dict(encoder_config or {})
        self.encoder_name_or_path = encoder_name_or_path
        self.inject_mode = inject_mode
        self.knowledge_size = knowledge_size  # table rows including the two reserved ones (0, 1)
        self.knowledge_dim = knowledge_dim
        self.token_knowledge = token_knowledge
        self.num_example_ids = num_example_ids
        self.example_vector_dim = example_vector_dim
        self.fusion_hidden_size = fusion_hidden_size
        self.unknown_entity = unknown_entity
        self.train_knowledge = train_knowledge
        self.knowledge_sources = list(knowledge_sources or [])  # [{"name":..., "dim":...}] for the record
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        if self.inject_mode not in INJECT_MODES:
            raise FtpeftError(f"--inject must be one of {', '.join(INJECT_MODES)}, got '{self.inject_mode}'.")
        if self.unknown_entity not in UNKNOWN_MODES:
            raise FtpeftError(
                f"--unknown_entity must be one of {', '.join(UNKNOWN_MODES)}, got '{self.unknown_entity}'."
            )
        if self.inject_mode == "add" and (not self.token_knowledge or self.knowledge_dim <= 0):
            raise FtpeftError("--inject add needs a token-level knowledge table (--knowledge_file) with dimension > 0.")
        if self.inject_mode in ("concat", "gate") and self.encoder_config and self.external_dim <= 0:
            raise FtpeftError(
                f"--inject {self.inject_mode} needs external features: --knowledge_file or --knowledge_column."
            )

    @property
    def encoder(self) -> PretrainedConfig:
        """The wrapped encoder's config object (built from the stored dict)."""
        return encoder_config_from_dict(self.encoder_config)

    @property
    def external_dim(self) -> int:
        """Width of the example-level external features fed to concat/gate fusion."""
        if self.inject_mode not in ("concat", "gate"):
            return 0
        pooled = self.knowledge_dim if self.token_knowledge else 0
        return pooled + self.num_example_ids * self.knowledge_dim + self.example_vector_dim


class ConcatFusion(nn.Module):
    """[text; external] -> Linear -> GELU -> dropout (the MLP before the classifier)."""

    def __init__(self, text_dim: int, external_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(text_dim + external_dim, hidden)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor, external: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.activation(self.dense(torch.cat([text, external], dim=-1))))


class GatedFusion(nn.Module):
    """A learned per-unit gate between the text and the external features (gated multimodal unit)."""

    def __init__(self, text_dim: int, external_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, hidden)
        self.knowledge_proj = nn.Linear(external_dim, hidden)
        self.gate = nn.Linear(text_dim + external_dim, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor, external: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(torch.cat([text, external], dim=-1)))
        fused = gate * torch.tanh(self.text_proj(text)) + (1 - gate) * torch.tanh(self.knowledge_proj(external))
        return self.dropout(fused)


class KnowledgeInjectionForSequenceClassification(PreTrainedModel):
    """Sequence classification with an encoder plus external knowledge (see the module docstring)."""

    config_class = KnowledgeInjectionConfig
    config: KnowledgeInjectionConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: KnowledgeInjectionConfig):
        super().__init__(config)
        config.validate()
        self.encoder = AutoModel.from_config(config.encoder)
        hidden = self.encoder.config.hidden_size
        dim = config.knowledge_dim
        if config.inject_mode != "none" and config.knowledge_size > 0 and dim > 0:
            setattr(self, KNOWLEDGE_TABLE, nn.Embedding(config.knowledge_size, dim, padding_idx=NO_KNOWLEDGE_ID))
            if config.unknown_entity == "learned":
                setattr(self, UNKNOWN_VECTOR, nn.Embedding(1, dim))
        if config.inject_mode == "add":
            self.knowledge_projection = nn.Linear(dim, hidden)
        if config.inject_mode in ("concat", "gate"):
            fusion = ConcatFusion if config.inject_mode == "concat" else GatedFusion
            self.fusion = fusion(hidden, config.external_dim, config.fusion_hidden_size, config.classifier_dropout)
            classifier_in = config.fusion_hidden_size
        else:
            classifier_in = hidden
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(classifier_in, config.num_labels)
        self.post_init()
        self.set_knowledge_trainable(config.train_knowledge)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As PreTrainedModel.from_pretrained; loading replaces parameters, so the table is re-frozen after it."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.set_knowledge_trainable(model.config.train_knowledge)
        return loaded

    # --- weights -----------------------------------------------------------------------------------------
    def _init_weights(self, module):
        from transformers import initialization as init

        if module is getattr(self, KNOWLEDGE_TABLE, None) or module is getattr(self, UNKNOWN_VECTOR, None):
            init.zeros_(module.weight)  # filled from the knowledge source; a learned UNK starts at zero
        elif module is getattr(self, "knowledge_projection", None):
            # zero at the start: the model begins as the text-only encoder and learns how much to inject
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def set_knowledge_vectors(self, vectors: torch.Tensor) -> None:
        """Write the source vectors into table rows 2.. (rows 0 and 1 stay zero)."""
        table = getattr(self, KNOWLEDGE_TABLE)
        expected = (table.num_embeddings - FIRST_ROW_ID, table.embedding_dim)
        if tuple(vectors.shape) != expected:
            raise FtpeftError(
                f"knowledge vectors have shape {tuple(vectors.shape)}, the model's table expects {expected}."
            )
        with torch.no_grad():
            table.weight.zero_()
            table.weight[FIRST_ROW_ID:] = vectors.to(table.weight.dtype)

    def set_knowledge_trainable(self, trainable: bool) -> list[str]:
        """Freeze (default) or train the knowledge table; a learned UNK vector always trains."""
        return set_knowledge_trainable(self, trainable)

    # --- forward -----------------------------------------------------------------------------------------
    def lookup_knowledge(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...,) -> vectors (..., D): 0 -> zero, 1 -> zero or the learned UNK, 2.. -> table rows."""
        vectors = getattr(self, KNOWLEDGE_TABLE)(ids)
        # rows 0 and 1 read as zero even when the table trains (a trainable table would otherwise move them)
        vectors = vectors * (ids >= FIRST_ROW_ID).unsqueeze(-1).to(vectors.dtype)
        if hasattr(self, UNKNOWN_VECTOR):
            # always in the graph (not only when a batch has an unknown), so DDP sees every trainable parameter used
            unknown = getattr(self, UNKNOWN_VECTOR)(torch.zeros_like(ids))
            vectors = torch.where((ids == UNKNOWN_ID).unsqueeze(-1), unknown, vectors)
        return vectors

    def knowledge_injection(self, knowledge_ids: torch.Tensor) -> torch.Tensor:
        """``add`` mode: the (B, T, hidden) tensor added to the word embeddings; exactly zero where id == 0."""
        injected = self.knowledge_projection(self.lookup_knowledge(knowledge_ids))
        return injected * (knowledge_ids != NO_KNOWLEDGE_ID).unsqueeze(-1).to(injected.dtype)

    def external_features(
        self,
        knowledge_ids: torch.Tensor | None,
        example_knowledge_ids: torch.Tensor | None,
        knowledge_vectors: torch.Tensor | None,
        batch_size: int,
    ) -> torch.Tensor:
        """``concat``/``gate``: the (B, external_dim) example features, in the documented order."""
        config, parts = self.config, []
        if config.token_knowledge:
            if knowledge_ids is None:
                raise ValueError("this model needs knowledge_ids (token-level entity ids) in its inputs")
            mask = (knowledge_ids != NO_KNOWLEDGE_ID).unsqueeze(-1).float()
            summed = (self.lookup_knowledge(knowledge_ids) * mask).sum(dim=1)
            parts.append(summed / mask.sum(dim=1).clamp(min=1.0))  # mean over mentions; zero when none
        if config.num_example_ids:
            if example_knowledge_ids is None:
                raise ValueError("this model needs example_knowledge_ids in its inputs")
            parts.append(self.lookup_knowledge(example_knowledge_ids).reshape(batch_size, -1))
        if config.example_vector_dim:
            if knowledge_vectors is None:
                raise ValueError("this model needs knowledge_vectors in its inputs")
            parts.append(knowledge_vectors.to(self.classifier.weight.dtype))
        return torch.cat(parts, dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        knowledge_ids: torch.Tensor | None = None,
        example_knowledge_ids: torch.Tensor | None = None,
        knowledge_vectors: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        mode = self.config.inject_mode
        encoder_kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            encoder_kwargs["token_type_ids"] = token_type_ids
        if mode == "add":
            if knowledge_ids is None:
                raise ValueError("inject_mode 'add' needs knowledge_ids (B, T) next to input_ids")
            if inputs_embeds is None:
                inputs_embeds = self.encoder.get_input_embeddings()(input_ids)
            inputs_embeds = inputs_embeds + self.knowledge_injection(knowledge_ids)
            outputs = self.encoder(inputs_embeds=inputs_embeds, **encoder_kwargs)
        else:
            outputs = self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, **encoder_kwargs)
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            pooled = outputs.last_hidden_state[:, 0]
        features = self.dropout(pooled)
        if mode in ("concat", "gate"):
            external = self.external_features(knowledge_ids, example_knowledge_ids, knowledge_vectors, pooled.shape[0])
            features = self.fusion(features, external)
        logits = self.classifier(features)
        return classification_output(logits, labels, self.config.num_labels, self.config.problem_type)


def set_knowledge_trainable(model: nn.Module, trainable: bool) -> list[str]:
    """Set ``requires_grad`` of the knowledge table (also inside a peft wrapper); the learned UNK always trains.

    Returns the names of the parameters it changed. Call it after ``unfreeze_last``/``apply_lora``, which
    treat every non-encoder module (the table included) as head.
    """
    changed = []
    for name, param in model.named_parameters():
        if f".{KNOWLEDGE_TABLE}." in f".{name}":
            param.requires_grad_(trainable)
            changed.append(name)
        elif f".{UNKNOWN_VECTOR}." in f".{name}":
            param.requires_grad_(True)
    return changed


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
    (inject_mode, token_knowledge, num_example_ids, example_vector_dim, ...). Fails with FtpeftError
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
    config = KnowledgeInjectionConfig(
        encoder_config=encoder_config.to_dict(),
        encoder_name_or_path=str(encoder_path),
        **(target or single_label(label_names)).config_fields(),
        **settings,
    )
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
