"""Entity mentions: matched in text or given as spans, aligned to the first sub-token."""

from __future__ import annotations

import json
import re
import string
from typing import Any

from ftpeft.core.errors import FtpeftError
from ftpeft.knowledge.model import NO_KNOWLEDGE_ID
from ftpeft.knowledge.table import KnowledgeTable

# --- mentions and token alignment ------------------------------------------------------------------------
_WORD = re.compile(r"\S+")


_PUNCTUATION = string.punctuation + "“”‘’…"


def match_mentions(text: str, table: KnowledgeTable) -> list[tuple[int, int, int]]:
    """Exact, case-insensitive matches of the table's keys in ``text`` at word boundaries.

    Words are whitespace-delimited; a word (or the ends of a phrase) may carry punctuation that is
    stripped for a second try ("good!" matches "good", ":)" matches ":)"). Longest phrase first,
    no overlaps. Returns (char start, char end, knowledge id).
    """
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    mentions, i = [], 0
    while i < len(words):
        found = None
        for n in range(min(table.max_words, len(words) - i), 0, -1):
            start, end = words[i][0], words[i + n - 1][1]
            knowledge_id = table.phrase_id(text[start:end])
            if knowledge_id is None:
                phrase = text[start:end]
                left = len(phrase) - len(phrase.lstrip(_PUNCTUATION))
                right = len(phrase.rstrip(_PUNCTUATION))
                if right > left:
                    knowledge_id = table.phrase_id(phrase[left:right])
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


def parse_spans(value: Any, row: int, text: str, column: str) -> list[tuple[int, int, str]]:
    """Spans of one row of ``--entity_column`` -> (start, end, key), checked against the text length."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise FtpeftError(
                f"--entity_column {column}: row {row} is not a JSON list of spans ({value[:60]!r})."
            ) from None
    if not isinstance(value, (list, tuple)):
        raise FtpeftError(f"--entity_column {column}: row {row} is not a list of spans ({value!r:.60}).")
    spans = []
    for span in value:
        try:
            start, end, key = (span["start"], span["end"], span["key"]) if isinstance(span, dict) else span
            start, end = int(start), int(end)
        except (KeyError, TypeError, ValueError):
            raise FtpeftError(
                f"--entity_column {column}: row {row} has a span {span!r}; expected {{start, end, key}} or [start, end, key]."
            ) from None
        if not 0 <= start < end <= len(text):
            raise FtpeftError(
                f"--entity_column {column}: row {row} span ({start}, {end}, {key!r}) is outside the text (length {len(text)})."
            )
        spans.append((start, end, str(key)))
    return spans


def align_mentions(
    offsets: list[tuple[int, int]], sequence_ids: list[int | None], mentions: list[tuple[int, int, int]]
) -> list[int]:
    """Token-level knowledge ids from char-level mentions, using the fast tokenizer's offset_mapping.

    A mention's id goes to the FIRST sub-token it overlaps only, not to every piece: each mention then
    contributes exactly once whatever the tokenizer does with it ("unbelievable" in 3 pieces is not
    injected 3 times as strongly as "good" in one), mean-pooling over mentions (concat/gate) counts
    mentions rather than pieces, and it is the alignment ERNIE (Zhang et al. 2019) uses. The encoder's
    attention spreads the signal to the other pieces. Mentions cut off by truncation get no token.
    Special tokens and the second text of a pair never receive knowledge.
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
