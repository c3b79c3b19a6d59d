"""The data-quality report: rows read, dropped (and why), duplicates, leakage, labels and truncation per split, in
data_report.json, the log and the card of every Trainer recipe; --drop_duplicates and --strict_data."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
from helpers import load_recipe, make_rows, tiny_args, write_kaggle_layout

from ftpeft.core.data_report import check_split
from ftpeft.core.errors import FtpeftError, run_cli
from ftpeft.text.args import TextDataArguments
from ftpeft.text.data import load_text_classification_data
from ftpeft.vision.args import ImageDataArguments
from ftpeft.vision.data import load_image_classification_data

bert_cls = load_recipe("bert_cls")
LONG_TEXT = " ".join(["the film was very good and"] * 4)  # 24 words: cut at --max_seq_length 12


def unique_rows(n: int, seed: int, exclude: set[str] = frozenset(), string_labels: bool = True) -> list[dict]:
    rows, seen = [], set(exclude)
    for row in make_rows(4 * n, seed, string_labels):
        if row["text"] not in seen and len(rows) < n:
            seen.add(row["text"])
            rows.append(row)
    return rows


def write_dirty_csvs(directory, leak: bool = True, dirty_train: bool = True):
    """train.csv: 20 clean rows, then 2 blank texts, 1 missing label, 2 repeats of clean rows and 1 long text;
    validation.csv: 8 clean rows; test.csv: 8 clean rows and (``leak``) one training row."""
    train = unique_rows(20, seed=1)
    if dirty_train:
        train += [
            {"text": "", "label": "pos"},
            {"text": "   ", "label": "neg"},
            {"text": "good plot", "label": None},
            train[1],
            train[2],
            {"text": LONG_TEXT, "label": "pos"},
        ]
    taken = {row["text"] for row in train}
    validation = unique_rows(8, seed=2, exclude=taken)
    test = unique_rows(8, seed=3, exclude=taken | {row["text"] for row in validation})
    test += [train[3]] if leak else []
    for name, rows in (("train", train), ("validation", validation), ("test", test)):
        pd.DataFrame(rows).to_csv(directory / f"{name}.csv", index=False)
    return directory


def load_report(directory, **flags):
    files = {f"{split}_file": str(directory / f"{split}.csv") for split in ("train", "validation", "test")}
    return load_text_classification_data(TextDataArguments(**files, **flags), seed=0)[3]


# --- the counting --------------------------------------------------------------------------------------------

CHECK_CASES = [
    # (reasons, keys, drop_duplicates, kept rows, dropped, duplicates)
    ([None, None, None], ["a", "b", "a"], False, [0, 1, 2], {}, 1),
    ([None, None, None], ["a", "b", "a"], True, [0, 1], {}, 1),
    ([None, "blank_text", None], ["a", "a", "a"], False, [0, 2], {"blank_text": 1}, 1),  # a dropped row is no copy
    (["missing_label", None, "unreadable_image"], ["a", "b", "c"], True, [1], {"missing_label": 1, "unreadable_image": 1}, 0),
]  # fmt: skip


@pytest.mark.parametrize("reasons,keys,drop,kept,dropped,duplicates", CHECK_CASES)
def test_check_split_keeps_first_copies_and_counts_drops(reasons, keys, drop, kept, dropped, duplicates):
    check = check_split("f.csv", reasons, keys, drop)
    assert (check.keep, check.dropped, check.duplicates, check.rows_read) == (kept, dropped, duplicates, len(keys))
    assert check.duplicates_dropped == (duplicates if drop else 0)


DROPPED = "train split (train.csv): dropped 2 row(s) with empty or blank text, 1 row(s) with missing label"
TEXT_CASES = [
    # (flags, train rows used, train duplicates dropped, the warning)
    ({}, 23, 0, DROPPED),
    ({"drop_duplicates": True}, 21, 2, DROPPED + ", 2 duplicate(s) (--drop_duplicates)"),
]


@pytest.mark.parametrize("flags,train_used,duplicates_dropped,warning", TEXT_CASES)
def test_text_report_counts_drops_duplicates_leakage_and_labels(
    tmp_path, caplog, flags, train_used, duplicates_dropped, warning
):
    with caplog.at_level("WARNING", logger="ftpeft"):
        report = load_report(write_dirty_csvs(tmp_path), **flags).to_dict()["splits"]
    assert [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()] == [warning]  # never silent
    train, test = report["train"], report["test"]
    assert train["rows_read"] == 26 and train["dropped"] == {"blank_text": 2, "missing_label": 1}
    assert train["duplicates"] == 2 and train["duplicates_dropped"] == duplicates_dropped
    assert train["rows_used"] == train_used and sum(train["label_counts"].values()) == train_used
    assert (test["rows_read"], test["rows_used"], test["in_train"], test["label_counts"]) == (
        9,
        9,
        1,
        {"neg": 4, "pos": 5},
    )
    assert report["validation"]["in_train"] == 0 and train["in_train"] is None


def test_integer_labels_with_an_empty_cell_keep_their_names(tmp_path):
    rows = unique_rows(12, seed=1, string_labels=False) + [{"text": "good plot", "label": None}]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)  # the reader turns the column into floats
    pd.DataFrame(unique_rows(4, seed=2, string_labels=False)).to_csv(tmp_path / "validation.csv", index=False)
    args = TextDataArguments(train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "validation.csv"))
    _, names, _, report, _ = load_text_classification_data(args, seed=0)
    assert names == ["0", "1"] and report.splits["train"].dropped == {"missing_label": 1}  # not "0.0", "1.0"
    assert report.splits["validation"].label_counts == {"0": 2, "1": 2}


def test_a_held_out_validation_split_says_so_and_shows_leaked_copies(tmp_path):
    rows = unique_rows(10, seed=1)
    pd.DataFrame(rows * 2).to_csv(tmp_path / "train.csv", index=False)  # every row twice
    args = TextDataArguments(train_file=str(tmp_path / "train.csv"), validation_split_percentage=20)
    report = load_text_classification_data(args, seed=0)[3].splits
    assert report["train"].duplicates == 10 and report["validation"].rows_read is None
    assert report["validation"].source == "held out from train (20%)"
    assert report["validation"].in_train >= 1  # the copy of a held-out row stayed in train
    deduplicated = load_text_classification_data(
        TextDataArguments(train_file=args.train_file, validation_split_percentage=20, drop_duplicates=True), seed=0
    )[3].splits
    assert deduplicated["validation"].in_train == 0 and deduplicated["train"].rows_used == 8


LENGTH_CASES = [
    # (token lengths, labels, --max_seq_length, quantiles, truncated, truncated share by class)
    ([3, 5, 9, 12], ["a", "a", "b", "b"], 8, {"p50": 5, "p90": 12, "p95": 12, "p99": 12, "max": 12}, 2, {"a": 0, "b": 1}),
    (list(range(1, 101)), ["a", "b"] * 50, 90, {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}, 10, {"a": 0.1, "b": 0.1}),
    ([], [], 8, None, 0, {}),
]  # fmt: skip


@pytest.mark.parametrize("lengths,labels,max_seq_length,quantiles,truncated,by_class", LENGTH_CASES)
def test_token_length_quantiles_and_truncation_per_class(
    lengths, labels, max_seq_length, quantiles, truncated, by_class
):
    from ftpeft.core.data_report import DataReport, SplitReport

    split = SplitReport("f.csv", len(lengths), {}, 0, 0, len(lengths), dict(Counter(labels)))
    report = DataReport({"train": split}, False).with_token_lengths(
        {"train": lengths}, {"train": labels}, max_seq_length
    )
    train = report.to_dict()["splits"]["train"]
    assert (train["token_lengths"], train["truncated"], train["truncated_share_by_class"]) == (
        quantiles,
        truncated,
        pytest.approx(by_class),
    )
    assert report.max_seq_length == max_seq_length


# --- the recipes ---------------------------------------------------------------------------------------------


def test_bert_cls_writes_the_report_logs_one_line_and_cards_the_counts(tiny_bert_dir, tmp_path, caplog):
    data = write_dirty_csvs(tmp_path)
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="ftpeft"):
        bert_cls.main(tiny_args(tiny_bert_dir, data, out, "--max_seq_length", "12"))
    report = json.loads((out / "data_report.json").read_text())
    assert report["max_seq_length"] == 12 and report["drop_duplicates"] is False
    train = report["splits"]["train"]
    assert (train["truncated"], train["truncated_share"]) == (1, 1 / 23)  # the long text only
    assert report["splits"]["test"]["in_train"] == 1 and report["splits"]["test"]["truncated"] == 0
    # 22 texts of 5 words and the long one of 24, each with [CLS] and [SEP]: one long text in 23 is past the p95
    assert train["token_lengths"] == {"p50": 7, "p90": 7, "p95": 7, "p99": 26, "max": 26}
    assert train["truncated_share_by_class"] == {"neg": 0.0, "pos": 1 / train["label_counts"]["pos"]}
    assert report["splits"]["test"]["truncated_share_by_class"] == {"neg": 0.0, "pos": 0.0}
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data report:")]
    assert (
        len(summary) == 1
        and "\n" not in summary[0]
        and summary[0].startswith(
            "data report: train 26 read, 23 used (2 dropped: empty or blank text; 1 dropped: missing label; "
            "2 duplicate(s) kept; 4.3% truncated at 12 tokens)"
        )
    )
    assert "test 9 read, 9 used (leakage: 1 also in train)" in summary[0]
    card = (out / "README.md").read_text()
    assert "## Data quality (data_report.json)" in card
    assert (
        "| train | train.csv | 26 | empty or blank text: 2, missing label: 1 | 2 (kept) | - | 23 | 1 (4.3%) |" in card
    )
    assert "| test | test.csv | 9 | 0 | 0 | 1 | 9 | 0 (0.0%) | neg: 4, pos: 5 |" in card


STRICT_CASES = [
    # (what is wrong, write_dirty_csvs settings, the message names)
    ("blank texts and a missing label", {"leak": False}, "train: 2 row(s) with empty or blank text, 1 row(s) with missing label"),
    ("a test row also in train", {"dirty_train": False}, "test: 1 row(s) also in train (leakage)"),
]  # fmt: skip


@pytest.mark.parametrize("settings,message", [c[1:] for c in STRICT_CASES], ids=[c[0] for c in STRICT_CASES])
def test_strict_data_exits_2_with_one_line_before_training(tiny_bert_dir, tmp_path, capsys, settings, message):
    data = write_dirty_csvs(tmp_path, **settings)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(bert_cls.main)(tiny_args(tiny_bert_dir, data, out, "--strict_data"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: --strict_data: ") and message in err, err
    assert err.strip().count("\n") == 0
    assert not out.exists()  # refused before anything was written


def test_clean_data_passes_strict_data(tmp_path):
    report = load_report(write_dirty_csvs(tmp_path, leak=False, dirty_train=False), strict_data=True)
    assert report.problems() == [] and report.splits["train"].rows_used == 20


# --- images ---------------------------------------------------------------------------------------------------


def test_image_report_counts_unreadable_images_rows_without_id_or_label(tmp_path, caplog):
    csv, images = write_kaggle_layout(tmp_path / "kaggle")  # 18 good images + one corrupt file
    csv.write_text(csv.read_text() + ",pug\nbe000,\nbe001,beagle\n")  # no id; no label; a repeat of be001
    args = ImageDataArguments(labels_csv=str(csv), image_dir=str(images), validation_split_percentage=20)
    with caplog.at_level("WARNING", logger="ftpeft"):
        data = load_image_classification_data(args, seed=0)
    assert (
        "train split (labels.csv): dropped 1 row(s) with missing label, 2 row(s) with unreadable image" in caplog.text
    )
    train = data.report.splits["train"]
    assert (train.rows_read, train.dropped) == (22, {"missing_label": 1, "unreadable_image": 2})
    assert train.duplicates == 1 and any(line.endswith("missing id") for line in data.skipped)
    assert train.rows_used + data.report.splits["validation"].rows_used == 19
    with pytest.raises(
        FtpeftError, match=r"--strict_data: train: 1 row\(s\) with missing label, 2 row\(s\) with unreadable image"
    ):
        load_image_classification_data(ImageDataArguments(**{**vars(args), "strict_data": True}), seed=0)
    deduplicated = load_image_classification_data(ImageDataArguments(**{**vars(args), "drop_duplicates": True}), seed=0)
    assert sum(r.rows_used for r in deduplicated.report.splits.values()) == 18
    assert deduplicated.report.splits["validation"].in_train == 0


def test_texts_read_as_windows_are_counted_as_windows_and_none_as_cut():
    from ftpeft.core.data_report import DataReport, SplitReport

    lengths, labels = [5, 20, 40], ["a", "b", "b"]
    split = SplitReport("f.csv", 3, {}, 0, 0, 3, {"a": 1, "b": 2})
    report = DataReport({"train": split}, False).with_token_lengths(
        {"train": lengths}, {"train": labels}, 16, {"train": 7}
    )
    train = report.to_dict()["splits"]["train"]
    assert (train["truncated"], train["windows"], train["truncated_share_by_class"]) == (0, 7, {"a": 0.0, "b": 0.0})
    assert "7 windows of 16 tokens" in report.summary() and "truncated" not in report.summary()
    assert "0 (0.0%), read as 7 windows" in report.card_markdown()
