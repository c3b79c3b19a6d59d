"""A transformers classifier that lets an encoder use external knowledge vectors, and the pipeline that feeds it text.

Saved by ftpeft next to the weights it belongs to (with ``knowledge_keys.txt``, the table's keys); it needs only
torch and transformers. Load it with

    from transformers import pipeline
    classifier = pipeline(model="OUTPUT_DIR", trust_remote_code=True)   # the custom pipeline of config.json
    classifier("great film", truncation=True)
    classifier({"text": "great film", "entity_id": "acme corp", "features": [0.1, 0.2]})  # runs trained on columns

The pipeline finds the knowledge of a text as training did: table keys matched in the text (exact, case-insensitive,
at word boundaries, longest phrase first), or the spans of the entity column, each given to the first sub-token of its
mention; ID columns are looked up in the keys, vector columns are used as they are.

Injection points (``KnowledgeInjectionConfig.inject_mode``):

- ``add`` -- token level, at the embedding layer: a token that starts a known entity/word gets its external vector,
  projected to the hidden size and added to its word embedding; every other token gets exactly zero.
- ``concat`` -- example level, after the final layer: the external vectors of an example are concatenated with the
  pooled/[CLS] output and go through an MLP to the classifier (Ostendorff et al. 2019).
- ``gate`` -- late fusion through a learned gate: ``z * tanh(W_t h) + (1 - z) * tanh(W_k e)`` with
  ``z = sigmoid(W_z [h; e])`` (a gated multimodal unit, Arevalo et al. 2017).
- ``none`` -- the text-only control with the same code path.

External features of an example (``concat``/``gate``) are, concatenated in this order: the mean of the vectors of the
entities mentioned in the text (``knowledge_ids``, token level), the vectors of ``num_example_ids`` ID slots
(``example_knowledge_ids``), and ``example_vector_dim`` raw floats (``knowledge_vectors``).

Knowledge ids: 0 = no knowledge (always a zero vector), 1 = unknown entity (zero, or a learned vector with
``unknown_entity="learned"``), 2.. = rows of the knowledge table. The table is a weight of the model (saved in
model.safetensors), frozen unless ``train_knowledge``. ``base_model_prefix = "encoder"``: ``model.base_model`` is the
wrapped encoder; every injection/fusion module is head.
"""

from __future__ import annotations

import json
import math
import re
import string
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, TextClassificationPipeline
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "ftpeft-knowledge"
PIPELINE_TASK = "knowledge-text-classification"
INJECT_MODES = ("none", "add", "concat", "gate")
UNKNOWN_MODES = ("zero", "learned")
NO_KNOWLEDGE_ID = 0
UNKNOWN_ID = 1
FIRST_ROW_ID = 2  # table row i of the knowledge source has id i + FIRST_ROW_ID
KNOWLEDGE_TABLE = "knowledge_table"  # module names: what freezing and tests refer to
UNKNOWN_VECTOR = "unknown_knowledge"
KEYS_FILE = "knowledge_keys.txt"  # the table's keys, one a line: line i is table row i (id i + 2)


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


# --- text -> knowledge ids ------------------------------------------------------------------------------------------


def normalise_key(text: str) -> str:
    """A key as case-insensitive matching compares it: lower case, runs of whitespace as one space."""
    return " ".join(text.lower().split())


class KnowledgeKeys:
    """The knowledge table's keys -> knowledge ids (key i has id i + 2): exact first, then case-insensitive."""

    def __init__(self, keys: list[str]):
        self.keys = list(keys)
        self._exact = {key: i + FIRST_ROW_ID for i, key in enumerate(self.keys)}
        self._lower: dict[str, int] = {}
        for i, key in enumerate(self.keys):  # case-insensitive: the first key wins among case variants
            self._lower.setdefault(normalise_key(key), i + FIRST_ROW_ID)
        self.max_words = max((len(k.split()) for k in self._lower), default=1)

    @classmethod
    def from_file(cls, path: str | Path) -> KnowledgeKeys:
        """A run's knowledge_keys.txt."""
        return cls(Path(path).read_text(encoding="utf-8").splitlines())

    def id_of(self, key: Any) -> int:
        """Knowledge id of ``key`` (exact, then case-insensitive); 1 (unknown) when absent, 0 for None/''/NaN."""
        if key is None or (isinstance(key, float) and math.isnan(key)) or str(key) == "":
            return NO_KNOWLEDGE_ID
        key = str(key)
        return self._exact.get(key) or self._lower.get(normalise_key(key)) or UNKNOWN_ID

    def phrase_id(self, phrase: str) -> int | None:
        """Knowledge id of a phrase of the text (case-insensitive), None when it is no key."""
        return self._lower.get(normalise_key(phrase))


_WORD = re.compile(r"\S+")
_PUNCTUATION = string.punctuation + "“”‘’…"


def match_mentions(text: str, keys: KnowledgeKeys) -> list[tuple[int, int, int]]:
    """Exact, case-insensitive matches of the table's keys in ``text`` at word boundaries.

    Words are whitespace-delimited; a word (or the ends of a phrase) may carry punctuation that is stripped for a
    second try ("good!" matches "good", ":)" matches ":)"). Longest phrase first, no overlaps. Returns (char start,
    char end, knowledge id).
    """
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    mentions, i = [], 0
    while i < len(words):
        found = None
        for n in range(min(keys.max_words, len(words) - i), 0, -1):
            start, end = words[i][0], words[i + n - 1][1]
            knowledge_id = keys.phrase_id(text[start:end])
            if knowledge_id is None:
                phrase = text[start:end]
                left = len(phrase) - len(phrase.lstrip(_PUNCTUATION))
                right = len(phrase.rstrip(_PUNCTUATION))
                if right > left:
                    knowledge_id = keys.phrase_id(phrase[left:right])
                    start, end = start + left, start + right
            if knowledge_id is not None:
                found = (start, end, knowledge_id, n)
                break
        if found:
            mentions.append(found[:3])
            i += found[3]
        else:
            i += 1
    return mentions


def read_spans(value: Any, text: str) -> list[tuple[int, int, str]]:
    """The entity spans of one row -- a list (or its JSON) of {start, end, key} or [start, end, key], character
    offsets into ``text`` -- as (start, end, key); ValueError says what does not fit (the message goes on from
    "row N ")."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise ValueError(f"is not a JSON list of spans ({value[:60]!r}).") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"is not a list of spans ({value!r:.60}).")  # noqa: TRY004  (one error type for bad data)
    spans = []
    for span in value:
        try:
            start, end, key = (span["start"], span["end"], span["key"]) if isinstance(span, dict) else span
            start, end = int(start), int(end)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"has a span {span!r}; expected {{start, end, key}} or [start, end, key].") from None
        if not 0 <= start < end <= len(text):
            raise ValueError(f"span ({start}, {end}, {key!r}) is outside the text (length {len(text)}).")
        spans.append((start, end, str(key)))
    return spans


def align_mentions(
    offsets: list[tuple[int, int]], sequence_ids: list[int | None], mentions: list[tuple[int, int, int]]
) -> list[int]:
    """Token-level knowledge ids from char-level mentions, using the fast tokenizer's offset_mapping.

    A mention's id goes to the FIRST sub-token it overlaps only, not to every piece: each mention then contributes
    exactly once whatever the tokenizer does with it ("unbelievable" in 3 pieces is not injected 3 times as strongly
    as "good" in one), mean-pooling over mentions (concat/gate) counts mentions rather than pieces, and it is the
    alignment ERNIE (Zhang et al. 2019) uses. The encoder's attention spreads the signal to the other pieces. Mentions
    cut off by truncation get no token. Special tokens and the second text of a pair never receive knowledge.
    """
    ids = [NO_KNOWLEDGE_ID] * len(offsets)
    for start, end, knowledge_id in mentions:
        for position, ((token_start, token_end), sequence) in enumerate(zip(offsets, sequence_ids)):
            if sequence != 0 or token_end <= token_start:
                continue
            if token_start < end and token_end > start:
                if ids[position] == NO_KNOWLEDGE_ID:
                    ids[position] = knowledge_id
                break
    return ids


def mentions_in(text: str, keys: KnowledgeKeys, spans: list[tuple[int, int, str]] | None = None):
    """The mentions of one text as (start, end, knowledge id): the given ``spans`` (from ``read_spans``) looked up in
    the keys, else the keys matched in the text."""
    if spans is None:
        return match_mentions(text, keys)
    return [(start, end, keys.id_of(key)) for start, end, key in spans]


# --- the model ------------------------------------------------------------------------------------------------------


class KnowledgeInjectionConfig(PretrainedConfig):
    """What a knowledge-injection model is: the encoder (config dict + name), the mode, the sizes, and the input
    columns it was trained with (what its pipeline reads from a dict input)."""

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
        text_columns: list[str] | None = None,
        entity_column: str | None = None,
        id_columns: list[str] | None = None,
        vector_columns: list[str] | None = None,
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
        self.text_columns = list(text_columns or [])  # the pipeline's dict input: the text (and pair) keys
        self.entity_column = entity_column  # spans [{start, end, key}, ...] instead of matching the text
        self.id_columns = list(id_columns or [])  # entity IDs, looked up in the keys (example_knowledge_ids)
        self.vector_columns = list(vector_columns or [])  # lists of floats, concatenated (knowledge_vectors)
        # pipeline(model=DIR, trust_remote_code=True) finds the text-to-knowledge step here
        kwargs.setdefault(
            "custom_pipelines",
            {
                PIPELINE_TASK: {
                    "impl": f"{__name__.rsplit('.', 1)[-1]}.KnowledgeTextClassificationPipeline",
                    "pt": ["AutoModelForSequenceClassification"],
                    "tf": [],
                    "type": "text",
                }
            },
        )
        super().__init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        """ValueError naming the setting (and the ftpeft flag) that does not fit."""
        if self.inject_mode not in INJECT_MODES:
            raise ValueError(f"--inject must be one of {', '.join(INJECT_MODES)}, got '{self.inject_mode}'.")
        if self.unknown_entity not in UNKNOWN_MODES:
            raise ValueError(
                f"--unknown_entity must be one of {', '.join(UNKNOWN_MODES)}, got '{self.unknown_entity}'."
            )
        if self.inject_mode == "add" and (not self.token_knowledge or self.knowledge_dim <= 0):
            raise ValueError("--inject add needs a token-level knowledge table (--knowledge_file) with dimension > 0.")
        if self.inject_mode in ("concat", "gate") and self.encoder_config and self.external_dim <= 0:
            raise ValueError(
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

    @property
    def needs_keys(self) -> bool:
        """Whether its inputs are found through the table's keys (matched mentions, spans or ID columns)."""
        return self.inject_mode != "none" and bool(self.token_knowledge or self.num_example_ids)


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


def set_knowledge_trainable(model: nn.Module, trainable: bool) -> list[str]:
    """Set ``requires_grad`` of the knowledge table (also inside a peft wrapper); the learned UNK always trains.

    Returns the names of the parameters it changed. Call it after freezing or LoRA, which treat every non-encoder
    module (the table included) as head.
    """
    changed = []
    for name, param in model.named_parameters():
        if f".{KNOWLEDGE_TABLE}." in f".{name}":
            param.requires_grad_(trainable)
            changed.append(name)
        elif f".{UNKNOWN_VECTOR}." in f".{name}":
            param.requires_grad_(True)
    return changed


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
            raise ValueError(
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


# --- the pipeline: raw text (or a row of columns) -> knowledge inputs -> scores ---------------------------------------


def knowledge_inputs(tokenizer, row: dict[str, Any], config: KnowledgeInjectionConfig, keys, **tokenizer_kwargs):
    """One example's model inputs (tensors of batch 1): the tokenised text plus the knowledge inputs its config asks
    for, from ``row`` -- the text under "text" or the first training text column (a pair under "text_pair" or the
    second), spans under the entity column, IDs and float lists under the knowledge columns. ``keys`` is a
    ``KnowledgeKeys`` (None when the config needs none)."""
    columns = list(config.text_columns)
    names = [columns[0] if columns and columns[0] in row else "text"]
    if len(columns) > 1 or "text_pair" in row:
        names.append(columns[1] if len(columns) > 1 and columns[1] in row else "text_pair")
    texts = ["" if row.get(name) is None else str(row[name]) for name in names]
    encoded = tokenizer(*texts, return_offsets_mapping=True, return_tensors="pt", **tokenizer_kwargs)
    offsets = encoded.pop("offset_mapping")[0].tolist()
    if config.inject_mode == "none":
        return encoded
    if config.token_knowledge:
        spans = None
        if config.entity_column:
            try:
                spans = read_spans(row.get(config.entity_column), texts[0])
            except ValueError as error:
                raise ValueError(f"{config.entity_column}: {error}") from None
        ids = align_mentions(offsets, encoded.sequence_ids(0), mentions_in(texts[0], keys, spans))
        encoded["knowledge_ids"] = torch.tensor([ids], dtype=torch.long)
    missing = [name for name in [*config.id_columns, *config.vector_columns] if name not in row]
    if missing:
        raise ValueError(f"this model also reads the column(s) {missing}: pass a dict with them next to the text")
    if config.num_example_ids:
        encoded["example_knowledge_ids"] = torch.tensor([[keys.id_of(row[name]) for name in config.id_columns]])
    if config.example_vector_dim:
        vector = [float(value) for name in config.vector_columns for value in row[name]]
        if len(vector) != config.example_vector_dim:
            raise ValueError(
                f"{config.vector_columns} give {len(vector)} floats; the model takes {config.example_vector_dim}"
            )
        encoded["knowledge_vectors"] = torch.tensor([vector], dtype=torch.float32)
    return encoded


class KnowledgeTextClassificationPipeline(TextClassificationPipeline):
    """``pipeline(model=DIR, trust_remote_code=True)`` for a knowledge-injection model: a text, or a dict with the
    text and the columns the model was trained with, -> label scores (softmax, sigmoid for label sets, the numbers
    for regression), as ``text-classification`` gives them. The keys come from the model's ``knowledge_keys.txt``
    (``knowledge_keys=PATH`` to read them from elsewhere). Inputs are truncated at the tokenizer's
    ``model_max_length`` (the run's length) unless ``truncation=False`` is passed."""

    def __init__(self, *args, knowledge_keys: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.keys = None
        if self.model.config.needs_keys:
            if knowledge_keys is None:
                from transformers.utils import cached_file

                knowledge_keys = cached_file(self.model.config.name_or_path, KEYS_FILE)
            self.keys = KnowledgeKeys.from_file(knowledge_keys)

    def check_model_type(self, supported_models):  # a custom class is not in transformers' list, and is supported
        pass

    def preprocess(self, inputs, **tokenizer_kwargs):
        tokenizer_kwargs.setdefault("truncation", True)
        row = inputs if isinstance(inputs, dict) else {"text": inputs}
        return knowledge_inputs(self.tokenizer, row, self.model.config, self.keys, **tokenizer_kwargs)


# save_pretrained copies this file next to the weights and writes auto_map into config.json (Trainer's checkpoints too)
KnowledgeInjectionConfig.register_for_auto_class()
KnowledgeInjectionForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
