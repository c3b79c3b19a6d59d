"""The data-quality report of a run: per split, rows read, rows dropped and why, duplicates, rows that also
occur in training (leakage), label counts and, for text, the token-length quantiles and the share of texts cut at
--max_seq_length (of the split, and of each class).

Each capability's loader states, for every row of a split's source, why it cannot be used (a reason of
``DROP_REASONS``, or None) and what identifies its content (the text, an image's bytes); ``check_split``
turns that into the rows to keep and the counts. Once the validation split is made and the limits applied,
``build_report`` adds label counts and leakage. The run writes ``data_report.json``, logs ``summary()`` and
puts ``card_markdown()`` on the model card; ``--strict_data`` makes ``refuse_problems`` fail instead.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftpeft.core.errors import FtpeftError
from ftpeft.core.outputs import write_json

DATA_REPORT_FILE = "data_report.json"
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}
LENGTH_PERCENTILES = (50, 90, 95, 99)  # of the token lengths per split (text)
DROP_REASONS = {  # reason key -> how a message says it
    "blank_text": "empty or blank text",
    "missing_label": "missing label",
    "unreadable_image": "unreadable image",
}


@dataclasses.dataclass(frozen=True)
class SplitCheck:
    """One split's source, checked row by row: which rows to keep, the rows dropped by reason, duplicates."""

    source: str
    rows_read: int
    keep: list[int]  # row indices into the source
    dropped: dict[str, int]  # reason -> rows
    duplicates: int  # rows whose content occurred earlier in the same split
    duplicates_dropped: int

    def drop_note(self) -> str | None:
        """What was dropped, for a warning ("2 row(s) with empty or blank text, 1 duplicate(s)"); None: nothing."""
        notes = [f"{n} row(s) with {DROP_REASONS[reason]}" for reason, n in self.dropped.items()]
        notes += [f"{self.duplicates_dropped} duplicate(s) (--drop_duplicates)"] if self.duplicates_dropped else []
        return ", ".join(notes) or None


def check_split(
    source: str, reasons: Sequence[str | None], keys: Sequence[Hashable], drop_duplicates: bool
) -> SplitCheck:
    """Rows with a reason are dropped; of the rest, a row whose key was seen before in this split is a duplicate
    (the first copy is not), dropped only when ``drop_duplicates``."""
    unknown = set(reasons) - set(DROP_REASONS) - {None}
    if unknown:
        raise ValueError(f"unknown drop reason(s) {sorted(unknown)}")  # a bug, not user input
    keep: list[int] = []
    dropped: Counter[str] = Counter()
    seen: set[Hashable] = set()
    duplicates = 0
    for index, (reason, key) in enumerate(zip(reasons, keys, strict=True)):
        if reason is not None:
            dropped[reason] += 1
            continue
        if key in seen:
            duplicates += 1
            if drop_duplicates:
                continue
        seen.add(key)
        keep.append(index)
    return SplitCheck(
        source, len(reasons), keep, dict(sorted(dropped.items())), duplicates, duplicates if drop_duplicates else 0
    )


@dataclasses.dataclass(frozen=True)
class SplitReport:
    """What one split of the run is made of. ``rows_read`` is None for a split held out from train."""

    source: str
    rows_read: int | None
    dropped: dict[str, int]
    duplicates: int
    duplicates_dropped: int
    rows_used: int
    label_counts: dict[str, int]
    in_train: int | None = None  # validation/test: rows whose content also occurs in the training split
    truncated: int | None = None  # text: rows longer than --max_seq_length tokens
    token_lengths: dict[str, int] | None = None  # text: p50, p90, p95, p99 and max of the untruncated token counts
    truncated_share_by_class: dict[str, float] | None = None  # text: per label, the share of its rows cut
    windows: int | None = None  # text read as windows (--long_texts): how many its rows became; none is cut

    @property
    def truncated_share(self) -> float | None:
        return None if self.truncated is None else self.truncated / max(self.rows_used, 1)

    def problems(self) -> list[str]:
        """The drops and leakage of this split, as message fragments (what --strict_data refuses)."""
        found = [f"{n} row(s) with {DROP_REASONS[reason]}" for reason, n in self.dropped.items() if n]
        if self.in_train:
            found.append(f"{self.in_train} row(s) also in train (leakage)")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "truncated_share": self.truncated_share}


@dataclasses.dataclass(frozen=True)
class DataReport:
    """The data-quality report of a run: one ``SplitReport`` per split, and the settings that shaped it."""

    splits: dict[str, SplitReport]
    drop_duplicates: bool
    max_seq_length: int | None = None
    targets: dict[str, Any] | None = None  # label sets and numbers: ftpeft.labels.stats.target_statistics

    def with_targets(self, statistics: dict[str, Any]) -> DataReport:
        """This report plus the label-set or target statistics (nothing to add for one class per row)."""
        return dataclasses.replace(self, targets=statistics or None)

    def problems(self) -> list[str]:
        return [f"{split}: {', '.join(found)}" for split, r in self.splits.items() if (found := r.problems())]

    def with_token_lengths(
        self,
        lengths: Mapping[str, Sequence[int]],
        labels: Mapping[str, Sequence[str]],
        max_seq_length: int,
        windows: Mapping[str, int] | None = None,
    ) -> DataReport:
        """This report plus, per split, the quantiles of its token ``lengths`` (untruncated, one per row) and the rows
        longer than ``max_seq_length`` (cut when tokenised): how many, and the share of each class (``labels``). With
        ``windows`` (split -> windows its rows became) long rows are split, not cut: none is truncated."""
        splits = {}
        for name, r in self.splits.items():
            if name not in lengths:
                splits[name] = r
                continue
            cut = [length > max_seq_length and windows is None for length in lengths[name]]
            rows, cut_rows = Counter(labels[name]), Counter(label for label, is_cut in zip(labels[name], cut) if is_cut)
            splits[name] = dataclasses.replace(
                r,
                truncated=sum(cut),
                token_lengths=token_length_quantiles(lengths[name]),
                truncated_share_by_class={label: cut_rows[label] / n for label, n in sorted(rows.items())},
                windows=None if windows is None else windows.get(name),
            )
        return dataclasses.replace(self, splits=splits, max_seq_length=max_seq_length)

    def to_dict(self) -> dict[str, Any]:
        return {
            "drop_duplicates": self.drop_duplicates,
            "max_seq_length": self.max_seq_length,
            "splits": {name: r.to_dict() for name, r in self.splits.items()},
            **({"targets": self.targets} if self.targets else {}),
        }

    def summary(self) -> str:
        """One log line: per split the rows read and used, and anything dropped, duplicated, leaked or cut."""
        parts = []
        for name, r in self.splits.items():
            read = f"{r.rows_read} read" if r.rows_read is not None else r.source
            notes = [f"{n} dropped: {DROP_REASONS[reason]}" for reason, n in r.dropped.items() if n]
            if r.duplicates:
                notes.append(f"{r.duplicates} duplicate(s) {'dropped' if r.duplicates_dropped else 'kept'}")
            if r.in_train:
                notes.append(f"leakage: {r.in_train} also in train")
            if r.truncated:
                notes.append(f"{r.truncated_share:.1%} truncated at {self.max_seq_length} tokens")
            if r.windows is not None:
                notes.append(f"{r.windows:,} windows of {self.max_seq_length} tokens")
            parts.append(f"{name} {read}, {r.rows_used} used" + (f" ({'; '.join(notes)})" if notes else ""))
        return f"data report: {' | '.join(parts)}; see {DATA_REPORT_FILE}"

    def card_markdown(self) -> str:
        """A table of the counts for the model card."""
        truncation = f"truncated at {self.max_seq_length} tokens" if self.max_seq_length else None
        header = ["split", "source", "rows read", "dropped (why)", "duplicates", "also in train", "rows used"]
        header += [truncation] if truncation else []
        header.append("labels")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, r in self.splits.items():
            dropped = ", ".join(f"{DROP_REASONS[reason]}: {n:,}" for reason, n in r.dropped.items() if n) or "0"
            duplicates = f"{r.duplicates} ({'dropped' if r.duplicates_dropped else 'kept'})" if r.duplicates else "0"
            labels = ", ".join(f"{label}: {n:,}" for label, n in list(r.label_counts.items())[:20])
            labels += " ..." if len(r.label_counts) > 20 else ""
            cells = [
                name,
                r.source,
                "-" if r.rows_read is None else f"{r.rows_read:,}",
                dropped,
                duplicates,
                "-" if r.in_train is None else f"{r.in_train:,}",
                f"{r.rows_used:,}",
            ]
            if truncation:
                cut = "-" if r.truncated is None else f"{r.truncated:,} ({r.truncated_share:.1%})"
                cells.append(cut if r.windows is None else f"{cut}, read as {r.windows:,} windows")
            lines.append("| " + " | ".join([*cells, labels]) + " |")
        return "\n".join(lines)

    def save(self, output_dir: str | Path) -> Path:
        path = Path(output_dir) / DATA_REPORT_FILE
        write_json(path, self.to_dict())
        return path


def token_length_percentile(lengths: Sequence[int], percent: float) -> int:
    """The smallest token length that ``percent``% of the texts do not exceed (nearest rank: a length some text has)."""
    return int(np.percentile(np.asarray(lengths), percent, method="inverted_cdf"))


def token_length_quantiles(lengths: Sequence[int]) -> dict[str, int] | None:
    """p50, p90, p95, p99 and max of a split's token lengths; None for an empty split."""
    if len(lengths) == 0:
        return None
    return {f"p{q}": token_length_percentile(lengths, q) for q in LENGTH_PERCENTILES} | {"max": int(max(lengths))}


def build_report(
    checks: Mapping[str, SplitCheck],
    used_keys: Mapping[str, Sequence[Hashable]],
    used_labels: Mapping[str, Sequence[str]],
    drop_duplicates: bool,
    held_out_source: str = "held out from train",
) -> DataReport:
    """The report of the splits as used (after the validation split and the limits): ``used_keys`` and
    ``used_labels`` are each split's content keys and label names; ``checks`` those of the splits read from a
    source (a split without one was ``held_out_source``)."""
    train_keys = set(used_keys["train"])
    splits = {}
    for name in sorted(used_keys, key=lambda split: (SPLIT_ORDER.get(split, len(SPLIT_ORDER)), split)):
        keys = used_keys[name]
        check = checks.get(name)
        splits[name] = SplitReport(
            source=check.source if check else held_out_source,
            rows_read=check.rows_read if check else None,
            dropped=check.dropped if check else {},
            duplicates=check.duplicates if check else len(keys) - len(set(keys)),
            duplicates_dropped=check.duplicates_dropped if check else 0,
            rows_used=len(keys),
            label_counts=dict(sorted(Counter(used_labels[name]).items())),
            in_train=None if name == "train" else sum(key in train_keys for key in keys),
        )
    return DataReport(splits, drop_duplicates)


def refuse_problems(report: DataReport) -> None:
    """--strict_data: any dropped row or leakage is an error (one line naming each problem)."""
    problems = report.problems()
    if problems:
        raise FtpeftError(
            f"--strict_data: {'; '.join(problems)}. Fix the data, or run without --strict_data to drop such rows "
            "(leaked rows are kept and reported)."
        )
