"""A validation split held out of train that keeps every label's share, for label sets: iterative stratification
(Sechidis, Tsoumakas and Vlahavas, ECML PKDD 2011). scikit-learn stratifies one class per row only."""

from __future__ import annotations

import numpy as np


def iterative_split(label_matrix, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows) of a multi-hot ``label_matrix``: the rarest label's rows are placed first, each in
    the part that still wants most of that label."""
    labels = np.asarray(label_matrix).astype(bool)
    rng = np.random.default_rng(seed)
    rows = labels.shape[0]
    fractions = np.array([1 - test_fraction, test_fraction])
    wanted_rows = rows * fractions
    wanted_labels = labels.sum(axis=0)[None, :] * fractions[:, None]  # parts x labels
    part = np.full(rows, -1)
    while True:
        counts = labels[part == -1].sum(axis=0)
        if not counts.any():
            break
        label = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        for row in rng.permutation(np.flatnonzero((part == -1) & labels[:, label])):
            want = wanted_labels[:, label]
            choices = np.flatnonzero(want == want.max())
            if len(choices) > 1:
                choices = choices[wanted_rows[choices] == wanted_rows[choices].max()]
            chosen = int(rng.choice(choices))
            part[row] = chosen
            wanted_labels[chosen, labels[row]] -= 1
            wanted_rows[chosen] -= 1
    for row in rng.permutation(np.flatnonzero(part == -1)):  # rows with no label
        chosen = int(np.argmax(wanted_rows))
        part[row] = chosen
        wanted_rows[chosen] -= 1
    if rows > 1 and test_fraction > 0 and not (part == 1).any():  # a tiny split still holds one row out
        part[int(rng.integers(rows))] = 1
    return np.flatnonzero(part == 0).tolist(), np.flatnonzero(part == 1).tolist()
