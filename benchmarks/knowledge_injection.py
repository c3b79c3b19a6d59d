"""Does external knowledge help a strong text model? text-only vs add / concat / gate, two lexicons and an entity table.

    python benchmarks/knowledge_injection.py                                   # 2,000 and 4,000 tweets, 3 seeds (~60 min)
    python benchmarks/knowledge_injection.py --sizes 2000 --seeds 42 --sources entities   # one look at one source

Every run is recipes/knowledge_cls.py at its defaults (bert_cls.py's LRs, TEXT_LR_DEFAULTS, the injection at the
head's; --unfreeze-last 2; batch 32; 1 epoch; max_seq_length 64), so the text-only arm is the strong
one a user gets. Only ``--inject`` and ``--knowledge_file`` differ between arms. Data: the demo tweets
(positive vs negative), 10% of the drawn tweets are validation, the 1,000 fixed test tweets.

Knowledge sources:
- vader: the VADER lexicon (the recipe's default; 7,506 words and emoticons, 12 values each);
- afinn: AFINN-en-165 from the ``afinn`` package (3,382 words and phrases, one valence -5..5), passed as is;
- entities: a table of @-mentions and #hashtags built from **held-out** demo tweets, the rows of the shuffled
  corpus past every tweet a run can draw (test and up to 4,445 training tweets), so no trained or tested
  tweet contributes. Each entity seen at least 3 times there gets (share of positive tweets, Laplace-smoothed;
  log count / log max count): what the crowd says about the airline or event a tweet names, which the tweet's
  own words may not. This is the Ostendorff et al. (2019) setting (metadata/author embeddings), built offline.

Runs go two at a time (one torch thread each). Each finished run is appended to RESULTS/knowledge_injection.jsonl
(a killed benchmark resumes where it stopped); the table (mean ± sd over seeds, and the paired difference
from the text-only arm of the same seed) is rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from run_benchmarks import RESULTS, ROOT, run_recipe, text_lr_defaults_phrase

SOURCES = ("vader", "afinn", "entities")
MODES = {"vader": ("add", "concat", "gate"), "afinn": ("add", "concat", "gate"), "entities": ("concat",)}
MODE_NAMES = {"none": "text only", "add": "add (token level)", "concat": "concat (late)", "gate": "gate (late)"}
TEST_SAMPLES, MAX_TRAIN_SIZE = 1000, 4000
ENTITY = re.compile(r"[@#]\w+")
MIN_ENTITY_COUNT = 3


def drawn_tweets(train_size: int) -> int:
    """--demo_train_samples that leaves ``train_size`` for training after the 10% validation cut."""
    return math.ceil(train_size / 0.9)


def afinn_path() -> Path:
    from ftpeft.core.packaged import packaged_file

    return packaged_file(
        "afinn", "data/AFINN-en-165.txt", "the afinn source needs the afinn package: pip install afinn"
    )


def write_entity_table(path: Path) -> dict:
    """The held-out entity table (see the module doc) as 'key<TAB>share log_count' lines; returns its summary."""
    from ftpeft.text.demo import demo_tweet_frame

    frame = demo_tweet_frame(["negative", "positive"])
    held_out = frame.iloc[TEST_SAMPLES + drawn_tweets(MAX_TRAIN_SIZE) :]
    counts, positives = Counter(), Counter()
    for text, label in zip(held_out["text"], held_out["label"]):
        for entity in {match.lower() for match in ENTITY.findall(text)}:
            counts[entity] += 1
            positives[entity] += label == "positive"
    kept = sorted(entity for entity, n in counts.items() if n >= MIN_ENTITY_COUNT)
    top = math.log1p(max(counts[entity] for entity in kept))
    lines = [
        f"{entity}\t{(positives[entity] + 1) / (counts[entity] + 2):.4f} {math.log1p(counts[entity]) / top:.4f}"
        for entity in kept
    ]
    path.write_text("\n".join(lines) + "\n")
    return {"held_out_tweets": len(held_out), "entities": len(kept), "first_held_out_row": int(held_out.index[0])}


def arms(sources: list[str]) -> list[tuple[str, str]]:
    """(mode, source) pairs: the text-only control first."""
    return [("none", "-")] + [(mode, source) for source in sources for mode in MODES[source]]


def run_arm(mode: str, source: str, train_size: int, seed: int, files: dict, workdir: Path, env: dict) -> dict:
    argv = ["--inject", mode, "--seed", str(seed), "--demo_train_samples", str(drawn_tweets(train_size)),
            "--num_train_epochs", "1",
            "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1000"]  # fmt: skip
    if source in files:
        argv += ["--knowledge_file", str(files[source])]
    output_dir = workdir / f"{mode}_{source}_{train_size}_{seed}"
    metrics, trainable = run_recipe("recipes/knowledge_cls.py", argv, output_dir, env)
    train_examples = metrics.get("knowledge_train_examples")
    return {
        "mode": mode,
        "source": source,
        "train_size": train_size,
        "seed": seed,
        "val_accuracy": metrics["eval_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "test_macro_f1": metrics["test_macro_f1"],
        "train_coverage": (
            metrics["knowledge_train_examples_with_knowledge"] / train_examples if train_examples else None
        ),
        "trainable_params": trainable,
        "train_runtime_s": metrics["train_runtime"],
        "load_average": round(os.getloadavg()[0], 1),
    }


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):+.{digits}f} ± {scale * sd:.{digits}f}".lstrip("+")


def write_table(rows: list[dict], summary: dict, command: str, path: Path) -> None:
    lines = [
        "# Knowledge injection against the strong text model (demo tweets, positive vs negative)",
        "",
        f"Command: `{command}`. "
        + re.sub(r"\s*\n(?!- )\s*", " ", __doc__.split("\n\n", 2)[2].split("\n\nRuns go")[0]).replace(
            "TEXT_LR_DEFAULTS", text_lr_defaults_phrase()
        ),  # the library's values, never a stale copy
        "",
        (
            f"Entity table: {summary.get('entities', '?')} entities from {summary.get('held_out_tweets', '?')} held-out "
            f"tweets (corpus rows {summary.get('first_held_out_row', '?')} onward)."
        ),
        "",
        (
            "| train tweets | arm | knowledge | seeds | val acc | test acc | test macro-F1 | test acc − text only (points, "
            "paired by seed) | train tweets with knowledge | train s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sorted({r["train_size"] for r in rows}):
        base = {r["seed"]: r["test_accuracy"] for r in rows if r["train_size"] == size and r["mode"] == "none"}
        for mode, source in arms(list(SOURCES)):
            runs = sorted(
                (r for r in rows if (r["train_size"], r["mode"], r["source"]) == (size, mode, source)),
                key=lambda r: r["seed"],
            )
            if not runs:
                continue
            paired = [r["test_accuracy"] - base[r["seed"]] for r in runs if r["seed"] in base]
            coverage = [r["train_coverage"] for r in runs if r["train_coverage"] is not None]
            lines.append(
                f"| {size} | {MODE_NAMES[mode]} | {source} | {len(runs)} | "
                f"{_mean_sd([r['val_accuracy'] for r in runs])} | {_mean_sd([r['test_accuracy'] for r in runs])} | "
                f"{_mean_sd([r['test_macro_f1'] for r in runs])} | "
                f"{'–' if mode == 'none' else _mean_sd(paired, 100, 1)} | "
                f"{f'{statistics.mean(coverage):.0%}' if coverage else '–'} | "
                f"{statistics.mean(r['train_runtime_s'] for r in runs):.0f} |"
            )
    loads = [r["load_average"] for r in rows]
    lines += ["", f"Load average during the runs: {min(loads)} to {max(loads)}.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000], help="Training tweets (<= 4000).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["none", "add", "concat", "gate"],
        help="Injection points to run (none = text only).",
    )
    parser.add_argument("--workers", type=int, default=2, help="Runs at a time (one torch thread each).")
    parser.add_argument("--results", default=str(RESULTS / "knowledge_injection"), help="Path stem of .jsonl/.md.")
    args = parser.parse_args(argv)
    if max(args.sizes) > MAX_TRAIN_SIZE:
        parser.error(f"--sizes: at most {MAX_TRAIN_SIZE} (the entity table is built from the tweets past that)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    command = "python benchmarks/knowledge_injection.py" + (f" {' '.join(argv)}" if argv else "")

    jsonl, markdown = Path(args.results + ".jsonl"), Path(args.results + ".md")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    done = {(r["mode"], r["source"], r["train_size"], r["seed"]) for r in rows}
    with tempfile.TemporaryDirectory(prefix="ftpeft-knowledge-") as workdir, ThreadPoolExecutor(args.workers) as pool:
        files = {"vader": None, "afinn": afinn_path(), "entities": Path(workdir) / "entities.txt"}
        files = {source: path for source, path in files.items() if path is not None}
        summary = write_entity_table(files["entities"])
        todo = [
            (mode, source, size, seed)
            for size in args.sizes
            for seed in args.seeds
            for mode, source in arms(args.sources)
            if mode in args.modes and (mode, source, size, seed) not in done
        ]
        jobs = [pool.submit(run_arm, *job, files, Path(workdir), env) for job in todo]
        for job in jobs:
            row = job.result()
            print(json.dumps(row), flush=True)
            rows.append(row)
            with jsonl.open("a") as stream:
                stream.write(json.dumps(row) + "\n")
            write_table(rows, summary, command, markdown)
    write_table(rows, summary, command, markdown)
    print(markdown.read_text())
    return markdown


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
