"""Knowledge in the data: which columns carry it, tokenising with knowledge ids, statistics, collation.

- ``tokenize_with_knowledge``: tokens + ``knowledge_ids`` (token level), ``example_knowledge_ids`` (an ID
  column looked up in the table) and ``knowledge_vectors`` (columns of float lists), in one pass.
- ``KnowledgeCollator``: pads ``knowledge_ids`` with 0 (= "no knowledge") next to ``input_ids``.

Ids: 0 = no knowledge, 1 = unknown entity/ID (not in the table), 2.. = table rows
(``ftpeft.hub_code.knowledge_injection``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ftpeft.core.errors import FtpeftError
from ftpeft.hub_code.knowledge_injection import FIRST_ROW_ID, NO_KNOWLEDGE_ID, UNKNOWN_ID
from ftpeft.knowledge.args import KnowledgeArguments
from ftpeft.knowledge.mentions import align_mentions, mentions_in, parse_spans
from ftpeft.knowledge.table import KnowledgeTable

KNOWLEDGE_COLUMNS = ("knowledge_ids", "example_knowledge_ids", "knowledge_vectors")


# --- datasets ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class KnowledgeLayout:
    """Which knowledge inputs a dataset carries; becomes part of the model config."""

    token_knowledge: bool
    id_columns: list[str]
    vector_columns: dict[str, int]  # column -> width

    @property
    def example_vector_dim(self) -> int:
        return sum(self.vector_columns.values())

    def model_settings(self) -> dict[str, Any]:
        """The model config's fields for these inputs (the columns too: the shipped pipeline reads them by name)."""
        return {
            "token_knowledge": self.token_knowledge,
            "num_example_ids": len(self.id_columns),
            "example_vector_dim": self.example_vector_dim,
            "id_columns": list(self.id_columns),
            "vector_columns": list(self.vector_columns),
        }


def _first_value(dataset, column: str):
    for value in dataset[column]:
        if value is not None:
            return value
    return None


def knowledge_layout(datasets, args: KnowledgeArguments) -> KnowledgeLayout:
    """Check the knowledge columns exist in every split and sort them into ID and vector columns."""
    wanted = list(args.knowledge_column or []) + ([args.entity_column] if args.entity_column else [])
    for split, dataset in datasets.items():
        for column in wanted:
            if column not in dataset.column_names:
                flag = "--entity_column" if column == args.entity_column else "--knowledge_column"
                raise FtpeftError(f"{flag} '{column}' not found in the {split} split; columns: {dataset.column_names}.")
    id_columns, vector_columns = [], {}
    for column in args.knowledge_column or []:
        first = _first_value(datasets["train"], column)
        if isinstance(first, (list, tuple, np.ndarray)):
            vector_columns[column] = len(first)
        else:
            id_columns.append(column)
    if id_columns and not args.knowledge_file:
        raise FtpeftError(f"--knowledge_column {id_columns} hold IDs; pass --knowledge_file to look them up in.")
    return KnowledgeLayout(args.uses_token_knowledge, id_columns, vector_columns)


def _vector(value, column: str, width: int, row: int) -> list[float]:
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != width:
        got = "nothing" if value is None else f"{value!r:.40}" if isinstance(value, (bool, int, float, str)) else None
        got = got or f"{len(value)} values"
        raise FtpeftError(
            f"--knowledge_column {column}: row {row} has {got}, expected {width} floats (as the first row)."
        )
    vector = [math.nan if v is None else float(v) for v in value]  # readers turn NaN into None
    if not all(math.isfinite(v) for v in vector):
        raise FtpeftError(f"--knowledge_column {column}: row {row} has NaN/inf/missing values.")
    return vector


def tokenize_with_knowledge(
    datasets,
    tokenizer,
    text_columns: list[str],
    max_length: int,
    table: KnowledgeTable | None,
    layout: KnowledgeLayout,
    args: KnowledgeArguments,
    num_proc: int | None = None,
    check_coverage: bool = True,
):
    """Tokenise every split (no padding) and add the knowledge inputs the layout asks for, in one pass.

    Keeps only the model inputs, ``labels`` and the knowledge columns. A tokenizer that turns most training
    words into its unknown token is refused first (``check_coverage``; off for a trained model's own tokenizer).
    """
    from ftpeft.text.modeling import check_tokenizer_covers, training_text_sample

    if not getattr(tokenizer, "is_fast", False):
        raise FtpeftError("knowledge injection aligns mentions with offset_mapping, which needs a fast tokenizer.")
    if check_coverage:
        check_tokenizer_covers(tokenizer, training_text_sample(datasets, text_columns))
    token_level = layout.token_knowledge and table is not None
    entity_column = args.entity_column

    def encode(batch, indices):
        texts = [["" if t is None else str(t) for t in batch[c]] for c in text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")
        if token_level:
            rows = []
            for i, text in enumerate(texts[0]):
                spans = parse_spans(batch[entity_column][i], indices[i], text, entity_column) if entity_column else None
                rows.append(align_mentions(offsets[i], encoded.sequence_ids(i), mentions_in(text, table, spans)))
            encoded["knowledge_ids"] = rows
        if layout.id_columns:
            encoded["example_knowledge_ids"] = [
                [table.id_of(batch[c][i]) if table else UNKNOWN_ID for c in layout.id_columns]
                for i in range(len(texts[0]))
            ]
        if layout.vector_columns:
            encoded["knowledge_vectors"] = [
                [x for c, w in layout.vector_columns.items() for x in _vector(batch[c][i], c, w, indices[i])]
                for i in range(len(texts[0]))
            ]
        return encoded

    from datasets import DatasetDict

    tokenized = {}
    for split, dataset in datasets.items():
        drop = [c for c in dataset.column_names if c != "labels"]
        tokenized[split] = dataset.map(
            encode, batched=True, with_indices=True, remove_columns=drop, num_proc=num_proc, desc=f"tokenising {split}"
        )
    return DatasetDict(tokenized)


def knowledge_stats(tokenized) -> dict[str, dict[str, int]]:
    """Per split: examples, mentions aligned to a token, unknown entities/IDs, examples with any known entry."""
    stats = {}
    for split, dataset in tokenized.items():
        counts = {"examples": len(dataset), "mentions": 0, "unknown": 0, "examples_with_knowledge": 0}
        columns = [c for c in ("knowledge_ids", "example_knowledge_ids") if c in dataset.column_names]
        for row in dataset.select_columns(columns) if columns else []:
            ids = [i for c in columns for i in row[c]]
            counts["mentions"] += sum(i != NO_KNOWLEDGE_ID for i in row.get("knowledge_ids", []))
            counts["unknown"] += sum(i == UNKNOWN_ID for i in ids)
            counts["examples_with_knowledge"] += any(i >= FIRST_ROW_ID for i in ids)
        if "knowledge_vectors" in dataset.column_names:
            counts["examples_with_knowledge"] = len(dataset)
        stats[split] = counts
    return stats


def knowledge_report(stats: dict[str, dict[str, int]], unknown_entity: str) -> tuple[dict[str, int], list[str]]:
    """Flat metrics (``knowledge_<split>_<count>``) for metrics.json and one card note per split."""
    metrics, notes = {}, []
    for split, counts in stats.items():
        metrics.update({f"knowledge_{split}_{key}": value for key, value in counts.items()})
        notes.append(
            f"Knowledge ({split}): {counts['examples_with_knowledge']:,}/{counts['examples']:,} examples with a known "
            f"entry, {counts['mentions']:,} token-level mentions, {counts['unknown']:,} unknown entities/IDs "
            f"(given the {'learned UNK' if unknown_entity == 'learned' else 'zero'} vector)."
        )
    return metrics, notes


class KnowledgeCollator:
    """Pads the text like ``DataCollatorWithPadding`` and the knowledge inputs next to it.

    ``knowledge_ids`` are padded with 0 (= no knowledge) on the tokenizer's padding side, to exactly
    the padded ``input_ids`` length; ID slots and float vectors are stacked. Everything is a plain tensor
    in the batch, so it works unchanged under DDP.
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        from transformers import DataCollatorWithPadding

        self.tokenizer = tokenizer
        self.text_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        features = [dict(f) for f in features]
        extra = {name: [f.pop(name) for f in features] for name in KNOWLEDGE_COLUMNS if name in features[0]}
        batch = self.text_collator(features)
        if "knowledge_ids" in extra:
            length = batch["input_ids"].shape[1]
            left = self.tokenizer.padding_side == "left"
            padded = []
            for ids in extra["knowledge_ids"]:
                ids = list(ids)
                pad = [NO_KNOWLEDGE_ID] * (length - len(ids))
                padded.append(pad + ids if left else ids + pad)
            batch["knowledge_ids"] = torch.tensor(padded, dtype=torch.long)
        if "example_knowledge_ids" in extra:
            batch["example_knowledge_ids"] = torch.tensor(extra["example_knowledge_ids"], dtype=torch.long)
        if "knowledge_vectors" in extra:
            batch["knowledge_vectors"] = torch.tensor(extra["knowledge_vectors"], dtype=torch.float32)
        return batch


def knowledge_batch(tokenizer, texts: list[str], table: KnowledgeTable, max_length: int = 512, spans=None) -> dict:
    """Inference helper: tokenise ``texts`` and add token-level ``knowledge_ids`` (text matching, or
    ``spans[i]`` = [(start, end, key), ...]); returns padded tensors ready for ``model(**batch)``."""
    features = []
    for i, text in enumerate(texts):
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")
        mentions = mentions_in(text, table, None if spans is None else spans[i])
        encoded["knowledge_ids"] = align_mentions(offsets, encoded.sequence_ids(), mentions)
        features.append(dict(encoded))
    return KnowledgeCollator(tokenizer)(features)
