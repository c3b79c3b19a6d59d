"""Rows that are windows of one text: ``DOCUMENT_COLUMN`` names the text each came from, and ``pool_windows`` scores
a text by the mean of its windows' outputs. ``FtpeftTrainer`` pools every evaluation and prediction of a dataset that
has the column, so validation, early stopping, test and the reports count texts, not windows (``ftpeft.text.windows``
makes the windows)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DOCUMENT_COLUMN = "document_index"  # the row of the split a window was cut from


def pool_windows(outputs, labels, documents: Sequence[int]):
    """One row per text, in order: the mean of its windows' ``outputs`` (logits, or a tuple whose first item is the
    logits) and its first window's ``labels`` (None stays None)."""
    logits = outputs[0] if isinstance(outputs, tuple) else outputs
    logits = np.asarray(logits)
    documents = np.asarray(documents)
    if len(documents) != len(logits):
        raise ValueError(f"{len(logits)} window outputs for {len(documents)} windows")  # a bug, not user input
    order, first, inverse = np.unique(documents, return_index=True, return_inverse=True)
    sums = np.zeros((len(order), *logits.shape[1:]), dtype=np.float64)
    np.add.at(sums, inverse, logits.astype(np.float64))
    counts = np.bincount(inverse, minlength=len(order)).reshape(-1, *([1] * (logits.ndim - 1)))
    pooled = (sums / counts).astype(logits.dtype)
    return pooled, None if labels is None else np.asarray(labels)[first]
