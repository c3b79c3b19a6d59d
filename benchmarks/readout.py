"""Head-only text: the [CLS] + pooler readout against mean pooling, and the frozen-feature route, over seeds.

    python benchmarks/readout.py              # 3 seeds x 3 cases on the demo
    python benchmarks/readout.py --quick      # smoke run: a tiny model, a few steps (the test uses it)

Same setting as partial_tuning.py (packaged MiniLM-L6, 2,000 demo tweets of which 10% are validation, 1 epoch,
batch 8, the recipe's defaults, 1,000 fixed test tweets). Cases: `--unfreeze-last 0 --pooling cls` (the stock
[CLS] + pooler readout, pooler and head trained), `--unfreeze-last 0` (the default `--pooling auto`, which reads
this sentence-transformers checkpoint by mean pooling), and mean-pooled features exported once by
extract_features.py then a logistic regression from train_head.py (its wall time covers both processes,
start-up included). Every run is appended to RESULTS/readout_runs.jsonl and skipped on a rerun.
Writes RESULTS/readout.md and .json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_benchmarks import ROOT, Case, case_argv, parse_benchmark_args

SEEDS = (42, 43, 44)
CASES = {
    "head only, [CLS] + pooler (--pooling cls)": ["--unfreeze_last", "0", "--pooling", "cls"],
    "head only, mean pooling (--pooling auto, the default)": ["--unfreeze_last", "0"],
    "mean-pooled features + logistic regression": [],
}
FEATURES = "mean-pooled features + logistic regression"


def feature_commands(output_dir: Path, seed: int, quick: bool, model: str | None) -> list[list[str]]:
    features = output_dir.with_name(output_dir.name + "_features")
    extract = ["recipes/extract_features.py", "--modality", "text", "--pooling", "mean", "--max_seq_length", "64",
               "--feature_dir", str(features), "--seed", str(seed),
               "--demo_train_samples", "64" if quick else "2000", "--demo_test_samples", "32" if quick else "1000"]  # fmt: skip
    if model:
        extract += ["--model_name_or_path", model]
    head = ["recipes/train_head.py", "--features_dir", str(features), "--head", "logreg", "--output_dir",
            str(output_dir), "--seed", str(seed)]  # fmt: skip
    return [extract, head]


def run_one(name: str, seed: int, workdir: Path, quick: bool, model: str | None, env: dict) -> dict:
    output_dir = workdir / f"run_{abs(hash((name, seed)))}"
    if name == FEATURES:
        commands = feature_commands(output_dir, seed, quick, model)
    else:
        argv = case_argv(Case(name, "recipes/bert_cls.py", CASES[name]), output_dir, workdir / "cache", quick, model)
        commands = [["recipes/bert_cls.py", *argv, "--seed", str(seed), *(["--max_steps", "2"] if quick else [])]]
    start = time.perf_counter()
    for command in commands:
        result = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(f"case '{name}' seed {seed} failed:\n{result.stderr[-3000:]}")
    wall = time.perf_counter() - start
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {
        "case": name,
        "seed": seed,
        "val_accuracy": metrics.get("eval_accuracy", metrics.get("validation_accuracy")),
        "test_accuracy": metrics["test_accuracy"],
        "wall_s": wall,
        "load_average": round(os.getloadavg()[0], 1),
        "command": " && ".join(f"python {' '.join(c)}" for c in commands).replace(str(workdir) + "/", ""),
    }


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def write_table(runs: list[dict], command: str, path: Path) -> None:
    lines = [
        "# Head-only text readouts and the frozen-feature route",
        "",
        f"Command: `{command}`. Same setting {__doc__.split('Same setting', 1)[1].split('Every run')[0].strip()}",
        "",
        "| case | seeds | val acc | test acc | wall s per run (process start to metrics) |",
        "|---|---|---|---|---|",
    ]
    for name in CASES:
        seeded = [r for r in runs if r["case"] == name]
        if not seeded:
            continue
        val = [r["val_accuracy"] for r in seeded if r["val_accuracy"] is not None]
        lines.append(
            f"| {name} | {', '.join(str(r['seed']) for r in seeded)} | {mean_sd(val) if val else '-'} | "
            f"{mean_sd([r['test_accuracy'] for r in seeded])} | {statistics.mean(r['wall_s'] for r in seeded):.0f} |"
        )
    loads = sorted({r["load_average"] for r in runs})
    lines += ["", f"Load average on 2 cores during the runs: {loads[0]}-{loads[-1]} (wall times inflate with it).", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv)
    env["OMP_NUM_THREADS"] = "1"
    stem = "readout_quick" if args.quick else "readout"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    log = args.results_dir / f"{stem}_runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    command = "python benchmarks/readout.py" + (" --quick" if args.quick else "")
    with tempfile.TemporaryDirectory(prefix="ftpeft-readout-") as workdir:
        for seed in SEEDS[:1] if args.quick else SEEDS:
            for name in CASES:
                if any(r["case"] == name and r["seed"] == seed for r in runs):
                    continue
                run = run_one(name, seed, Path(workdir), args.quick, args.model_name_or_path, env)
                runs.append(run)
                with log.open("a") as handle:
                    handle.write(json.dumps(run) + "\n")
                print(json.dumps({k: run[k] for k in ("case", "seed", "val_accuracy", "test_accuracy")}), flush=True)
    path = args.results_dir / f"{stem}.md"
    write_table(runs, command, path)
    (args.results_dir / f"{stem}.json").write_text(json.dumps({"command": command, "runs": runs}, indent=2))
    print(path.read_text())
    return path


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
