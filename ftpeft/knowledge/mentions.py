"""Entity mentions: matched in text or given as spans, aligned to the first sub-token.

Matching and alignment are those of ``ftpeft.hub_code.knowledge_injection``, the file that ships with a saved model
(its pipeline finds a text's knowledge exactly as training did); this module adds the data's error messages.
"""

from __future__ import annotations

from typing import Any

from ftpeft.core.errors import FtpeftError
from ftpeft.hub_code.knowledge_injection import align_mentions, match_mentions, mentions_in, read_spans

__all__ = ["align_mentions", "match_mentions", "mentions_in", "parse_spans"]


def parse_spans(value: Any, row: int, text: str, column: str) -> list[tuple[int, int, str]]:
    """Spans of one row of ``--entity_column`` -> (start, end, key), checked against the text length."""
    try:
        return read_spans(value, text)
    except ValueError as error:
        raise FtpeftError(f"--entity_column {column}: row {row} {error}") from None
