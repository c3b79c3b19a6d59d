"""Arguments of knowledge injection: where knowledge enters, its sources and columns."""

from __future__ import annotations

import dataclasses

from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, check_fields
from ftpeft.knowledge.model import INJECT_MODES, UNKNOWN_MODES


@dataclasses.dataclass
class KnowledgeArguments:
    inject: str = dataclasses.field(
        default="add",
        metadata={
            "help": "Where external knowledge enters: add (projected entity vectors added to token embeddings), "
            "concat (example features concatenated with [CLS] before an MLP), gate (learned gate between text "
            "and external features), none (text-only control).",
            "choices": list(INJECT_MODES),
        },
    )
    knowledge_file: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "One or more vector tables keyed by entity/word (.npy + key list, .safetensors, word2vec/GloVe "
            "or tab-separated text); several are concatenated. Default: the VADER lexicon (vaderSentiment)."
        },
    )
    knowledge_column: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "concat/gate: columns with per-example features -- a list of floats (used as is) or an "
            "entity ID looked up in --knowledge_file. With these, the text is not matched against the table."
        },
    )
    entity_column: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Column of entity mentions [{start, end, key}, ...] (char offsets into the first text column). "
            "Default: exact, case-insensitive, word-bounded matching of the table's keys in the text."
        },
    )
    train_knowledge: bool = dataclasses.field(
        default=False, metadata={"help": "Also train the knowledge table (frozen by default: it is the knowledge)."}
    )
    unknown_entity: str = dataclasses.field(
        default="zero",
        metadata={
            "help": "Vector of a mention/ID missing from the table: zero, or one learned UNK vector.",
            "choices": list(UNKNOWN_MODES),
        },
    )
    knowledge_dim: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Expected total width of the knowledge vectors; checked against the files.", "range": COUNT},
    )
    fusion_hidden_size: int = dataclasses.field(
        default=256, metadata={"help": "concat/gate: width of the fusion layer before the classifier.", "range": COUNT}
    )

    def __post_init__(self):
        check_fields(self)
        if self.inject == "add" and self.knowledge_column:
            raise FtpeftError(
                "--knowledge_column gives example-level features; use it with --inject concat or gate, not add."
            )
        if self.inject == "none" and (self.knowledge_file or self.knowledge_column or self.entity_column):
            raise FtpeftError(
                "--inject none is the text-only control; drop --knowledge_file/--knowledge_column/--entity_column."
            )

    @property
    def uses_token_knowledge(self) -> bool:
        """add always; concat/gate when mentions come from spans or text matching (not only from columns)."""
        return self.inject == "add" or (
            self.inject != "none" and (bool(self.entity_column) or not self.knowledge_column)
        )
