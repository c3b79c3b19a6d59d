"""Long texts read whole: each text split into overlapping windows of the run's length, every window trained on with
its text's label, and a text scored by the mean of its windows' logits.

The tokenizer does the splitting (``return_overflowing_tokens`` with ``stride``, as transformers' question-answering
examples split long contexts, with their ``--doc_stride``); ``DOCUMENT_COLUMN`` says which text a window came from.
``pool_windows`` turns window outputs into one row per text; ``FtpeftTrainer`` applies it in evaluation and
prediction, ``ftpeft predict`` when it scores rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT
from ftpeft.core.windows import DOCUMENT_COLUMN

LONG_TEXT_MODES = ("auto", "truncate", "windows")


def long_texts_field(windows_do: str, scope: str = ""):
    """The --long_texts field of an arguments dataclass; ``windows_do`` says what its recipe does with windows."""
    return dataclasses.field(
        default="auto",
        metadata={
            "help": f"{scope}{'t' if scope else 'T'}exts longer than --max_seq_length. 'truncate': cut at it. 'windows': {windows_do} "
            "'auto': windows when --max_seq_length auto was clipped to the model's positions (more than 1%% of the "
            "training texts are longer than the model reads), else truncate. One text column only.",
            "choices": LONG_TEXT_MODES,
        },
    )


def doc_stride_field(scope: str = ""):
    """The --doc_stride field of an arguments dataclass."""
    return dataclasses.field(
        default=None,
        metadata={
            "help": f"{scope}--long_texts windows: tokens each window shares with the one before, less than half a "
            "window. Default: a quarter of --max_seq_length (128 of 512).",
            "range": COUNT,
        },
    )


def resolve_long_texts(
    mode: str, length_given: bool, train_lengths: Sequence[int], max_seq_length: int, text_columns: int
) -> tuple[bool, str]:
    """(whether the run splits long texts into windows, why). 'auto' splits them when --max_seq_length auto had to
    be clipped to the model's positions (more than 1% of the training texts are longer than the model reads): a
    length the user chose, or one that fits the texts, truncates as it always did."""
    longer = sum(n > max_seq_length for n in train_lengths) / max(len(train_lengths), 1)
    if mode == "truncate":
        return False, "--long_texts truncate"
    if mode == "windows":
        if text_columns != 1:
            raise FtpeftError("--long_texts windows splits one text column; a pair of texts is truncated (drop it).")
        return True, f"--long_texts windows ({longer:.1%} of the training texts are longer than {max_seq_length})"
    if length_given:
        return False, "auto: --max_seq_length was given, so longer texts are truncated at it"
    if longer <= 0.01:
        return False, f"auto: {longer:.1%} of the training texts are longer than {max_seq_length} tokens (at most 1%)"
    if text_columns != 1:
        return False, f"auto: {longer:.1%} of the training texts are longer than the model, but a pair is truncated"
    return True, (
        f"auto: {longer:.1%} of the training texts are longer than the {max_seq_length} tokens the model reads, so "
        "each is split into windows"
    )


def resolve_doc_stride(doc_stride: int | None, max_seq_length: int) -> int:
    """The windows' overlap: --doc_stride, else a quarter of the window. A window must bring new text: an overlap of
    half the window or more is refused."""
    if doc_stride is None:
        return max_seq_length // 4
    if doc_stride * 2 >= max_seq_length:
        raise FtpeftError(
            f"--doc_stride {doc_stride} overlaps windows of {max_seq_length} tokens by half or more; pass "
            f"--doc_stride {(max_seq_length - 1) // 2} or less."
        )
    return doc_stride


def window_encoder(tokenizer, text_column: str, max_length: int, doc_stride: int, carried: Sequence[str]):
    """A ``datasets.map(batched=True, with_indices=True)`` function: each text's windows, with ``DOCUMENT_COLUMN``
    and the ``carried`` columns (labels, ...) repeated for every window of a text."""
    if not getattr(tokenizer, "is_fast", False):
        raise FtpeftError("--long_texts windows needs a fast tokenizer (tokenizer.json); pass --long_texts truncate.")

    def encode(batch, indices):
        texts = ["" if t is None else str(t) for t in batch[text_column]]
        encoded = tokenizer(
            texts, truncation=True, max_length=max_length, stride=doc_stride, return_overflowing_tokens=True
        )
        origin = encoded.pop("overflow_to_sample_mapping")
        windows = {name: list(values) for name, values in encoded.items()}
        windows[DOCUMENT_COLUMN] = [indices[i] for i in origin]
        for column in carried:
            windows[column] = [batch[column][i] for i in origin]
        return windows

    return encode


def tokenize_windows(dataset, tokenizer, text_column: str, max_length: int, doc_stride: int, **map_kwargs):
    """``dataset``'s ``text_column`` as windows of at most ``max_length`` tokens, consecutive windows of a text sharing
    ``doc_stride`` tokens: the model inputs, ``labels`` (when the dataset has them; repeated on each window of a text,
    with their feature and class names) and ``DOCUMENT_COLUMN`` (the text's row). ``map_kwargs`` go to
    ``datasets.Dataset.map``. Needs a fast tokenizer."""
    carried = [c for c in ("labels",) if c in dataset.column_names]
    encode = window_encoder(tokenizer, text_column, max_length, doc_stride, carried)
    windows = dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names, **map_kwargs)
    for column in carried:
        windows = windows.cast_column(column, dataset.features[column])
    return windows


def windows_note(max_seq_length: int, doc_stride: int) -> str:
    """The model card's line on how the run read long texts, and what a stock pipeline does instead."""
    return (
        f"Texts longer than {max_seq_length} tokens were read as windows of {max_seq_length} tokens overlapping by "
        f"{doc_stride}; each window was trained on with its text's label, and a text's scores are the mean of its "
        "windows' logits (`ftpeft predict` scores texts so). A stock `pipeline(..., truncation=True)` reads the first "
        f"{max_seq_length} tokens only."
    )


def refuse_cache_with_windows(windows: bool, cache_frozen: bool, flag: str = "--cache_frozen") -> None:
    """The activation cache stores one row per text: a run that reads long texts as windows cannot use it."""
    if windows and cache_frozen:
        raise FtpeftError(
            f"{flag} caches one row per text, but the long texts are read as windows; drop --cache_frozen or pass "
            "--long_texts truncate."
        )
