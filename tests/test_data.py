"""Text data: every local format, label handling, the validation split, and clear errors."""

import pandas as pd
import pytest
from helpers import make_text_files

from ftpeft.core.errors import FtpeftError
from ftpeft.text.args import TextDataArguments
from ftpeft.text.data import load_text_classification_data


def load(directory, fmt="csv", **kwargs):
    files = {f"{s}_file": str(directory / f"{s}.{fmt}") for s in ("train", "validation", "test")}
    files.update(kwargs)
    return load_text_classification_data(TextDataArguments(**files), seed=0)


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
@pytest.mark.parametrize("string_labels", [True, False])
def test_every_format_and_label_kind(tmp_path, fmt, string_labels):
    make_text_files(tmp_path, fmt, string_labels=string_labels)
    datasets, names, columns, *_ = load(tmp_path, fmt)
    assert names == (["neg", "pos"] if string_labels else ["0", "1"])
    assert columns == ["text"]
    assert {k: len(v) for k, v in datasets.items()} == {"train": 64, "validation": 16, "test": 16}
    assert datasets["train"].features["labels"].names == names
    assert sorted(set(datasets["train"]["labels"])) == [0, 1]


def test_stratified_seeded_validation_split(tmp_path):
    make_text_files(tmp_path, sizes=(100, 1, 1))
    args = TextDataArguments(train_file=str(tmp_path / "train.csv"), validation_split_percentage=20)
    first, *_ = load_text_classification_data(args, seed=3)
    second, *_ = load_text_classification_data(args, seed=3)
    assert len(first["validation"]) == 20 and sum(first["validation"]["labels"]) == 10  # stratified
    assert first["validation"]["text"] == second["validation"]["text"]  # seeded


def test_two_text_columns_and_max_samples(tmp_path):
    frame = pd.DataFrame({"premise": ["a b"] * 10, "hypothesis": ["c"] * 10, "label": ["x", "y"] * 5})
    frame.to_csv(tmp_path / "train.csv", index=False)
    args = TextDataArguments(
        train_file=str(tmp_path / "train.csv"), max_train_samples=4, validation_split_percentage=20
    )
    datasets, names, columns, _, _ = load_text_classification_data(args, seed=0)
    assert columns == ["premise", "hypothesis"] and names == ["x", "y"] and len(datasets["train"]) == 4


@pytest.mark.parametrize(
    "change,message",
    [
        ({"label_column": "sentiment"}, r"--label_column 'sentiment' not found .*\['text', 'label'\]"),
        ({"text_columns": ["body"]}, r"--text_columns \['body'\] not found; the data has columns \['text', 'label'\]"),
        ({"train_file": "missing.csv"}, "--train_file missing.csv: no such file"),
    ],
)
def test_bad_columns_and_files(tmp_path, change, message):
    make_text_files(tmp_path)
    with pytest.raises(FtpeftError, match=message):
        load(tmp_path, **change)


def test_validation_label_never_seen_in_training(tmp_path):
    make_text_files(tmp_path)
    frame = pd.read_csv(tmp_path / "validation.csv")
    frame.loc[0, "label"] = "meh"
    frame.to_csv(tmp_path / "validation.csv", index=False)
    with pytest.raises(FtpeftError, match=r"validation split has label\(s\) \['meh'\] never seen in training"):
        load(tmp_path)


def test_empty_training_set(tmp_path):
    make_text_files(tmp_path)
    pd.DataFrame({"text": [], "label": []}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(FtpeftError, match="--train_file .*train.csv has no data rows"):
        load(tmp_path)


def test_offline_demo_tweets_are_fixed_and_balanced_by_class_choice():
    args = TextDataArguments(demo_train_samples=200, demo_test_samples=100)
    datasets, names, columns, _, _ = load_text_classification_data(args, seed=0)
    assert names == ["negative", "positive"] and columns == ["text"]
    other_seed, *_ = load_text_classification_data(args, seed=1)
    assert datasets["test"]["text"] == other_seed["test"]["text"]  # the test set never depends on --seed
    assert len(datasets["train"]) == 180 and len(datasets["validation"]) == 20


def _normalised(texts):
    return {" ".join(t.split()).lower() for t in texts}


@pytest.mark.parametrize(("train", "test"), [(4000, 1000), (8000, 2000)])
def test_offline_demo_has_no_text_in_two_splits_and_no_repeats(train, test):
    from ftpeft.text.demo import demo_tweets

    splits = demo_tweets(["negative", "positive"], train, test)
    train_texts, test_texts = _normalised(splits["train"]["text"]), _normalised(splits["test"]["text"])
    assert len(train_texts) == train and len(test_texts) == test  # no repeats inside a split
    assert not train_texts & test_texts


def test_unique_texts_keeps_one_copy_and_drops_texts_with_two_labels():
    from ftpeft.text.demo import unique_texts

    frame = pd.DataFrame(
        {"text": ["good day", "Good  day", "bad day", "odd", "odd"], "label": ["pos", "pos", "neg", "pos", "neg"]}
    )
    assert unique_texts(frame)["text"].tolist() == ["good day", "bad day"]
