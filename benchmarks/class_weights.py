"""Does a class-weighted loss help on the skewed demo? --class_weights balanced vs none, over seeds.

    python benchmarks/class_weights.py              # 3 seeds x 2 cases, ~10 min on 2 CPU cores
    python benchmarks/class_weights.py --quick      # smoke run: a tiny model, a few steps (the test uses it)

The demo as the bare command runs it (packaged MiniLM-L6, 4,000 tweets of which 10% validation, 71% negative;
1 epoch, batch 32, the recipe's LR defaults; 1,000 fixed test tweets) with --unfreeze-last 2, once with
--class_weights none and once with balanced per seed, alternating, so a slow spell of the machine hits
both alike. Reports accuracy and macro-F1 on validation and test (mean ± sd) and the minority class's F1.
Writes benchmarks/results/class_weights.md and .json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run_benchmarks import ROOT, parse_benchmark_args, text_lr_defaults_phrase, write_sweep_results

SEEDS = (42, 43, 44)
CASES = {"none": ["--class_weights", "none"], "balanced": ["--class_weights", "balanced"]}
METRICS = ("eval_accuracy", "eval_macro_f1", "test_accuracy", "test_macro_f1", "test_f1_positive")
COMMON = ["--unfreeze_last", "2", "--save_strategy", "no", "--num_train_epochs", "1"]  # what was measured


def run_once(case_args: list[str], seed: int, output_dir: Path, quick: bool, model: str | None, env: dict) -> dict:
    argv = [sys.executable, str(ROOT / "recipes/bert_cls.py"), *COMMON, *case_args, "--seed", str(seed),
            "--output_dir", str(output_dir), "--overwrite_output_dir"]  # fmt: skip
    if quick:
        argv += ["--demo_train_samples", "64", "--demo_test_samples", "32", "--max_steps", "2"]
    if model:
        argv += ["--model_name_or_path", model]
    result = subprocess.run(check=False, args=argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"class_weights benchmark run failed ({' '.join(argv[1:])}):\n{result.stderr[-3000:]}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    settings = json.loads((output_dir / "resolved_settings.json").read_text())
    return {
        "seed": seed,
        **{name: metrics.get(name) for name in METRICS},
        "train_runtime_s": metrics["train_runtime"],
        "load_average": round(os.getloadavg()[0], 1),  # train times only compare on an otherwise idle machine
        "weights": settings.get("class_weights", {}).get("used"),
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for case, seeded in runs.items():
        row = {"case": case, "seeds": [run["seed"] for run in seeded], "runs": seeded}
        for name in METRICS:
            values = [run[name] for run in seeded if run[name] is not None]
            if values:
                row[f"{name}_mean"], row[f"{name}_sd"] = _mean_sd(values)
        row["train_runtime_mean_s"] = statistics.mean(run["train_runtime_s"] for run in seeded)
        row["weights"] = seeded[0]["weights"]
        rows.append(row)
    return rows


def write_table(rows: list[dict], command: str, path: Path) -> None:
    def cell(row, name):
        return f"{row[f'{name}_mean']:.3f} ± {row[f'{name}_sd']:.3f}" if f"{name}_mean" in row else "-"

    lines = [
        "# Class weights on the demo: --class_weights balanced vs none",
        "",
        (
            f"Command: `{command}`. Packaged MiniLM-L6, 4,000 demo tweets (10% held out for validation; 71% "
            "negative), `--unfreeze-last 2`, the recipe's defaults otherwise (1 epoch, batch 32, "
            f"{text_lr_defaults_phrase()}), 1,000 fixed test tweets; seeds {', '.join(map(str, rows[0]['seeds']))}, "
            "the two cases alternating. Mean ± sd over seeds. Train time is Trainer's train_runtime: it compares "
            "only on an otherwise idle machine (the load average after each run is in the JSON)."
        ),
        "",
        (
            "| --class_weights | weights | val accuracy | val macro-F1 | test accuracy | test macro-F1 "
            "| test F1 positive (minority) | train time (s) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        weights = ", ".join(f"{k} {v:.3f}" for k, v in row["weights"].items()) if row["weights"] else "-"
        cells = " | ".join(cell(row, name) for name in METRICS)
        lines.append(f"| {row['case']} | {weights} | {cells} | {row['train_runtime_mean_s']:.0f} |")
    lines += ["", "Per seed (test accuracy / test macro-F1):", ""]
    for row in rows:
        per_seed = ", ".join(
            f"{run['seed']}: {run['test_accuracy']:.3f} / {run['test_macro_f1']:.3f}" for run in row["runs"]
        )
        lines.append(f"- {row['case']}: {per_seed}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv)
    seeds = SEEDS[:2] if args.quick else SEEDS
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="ftpeft-class-weights-") as workdir:
        for seed in seeds:
            for case, case_args in CASES.items():  # alternating: none, balanced, none, balanced, ...
                row = run_once(
                    case_args, seed, Path(workdir) / f"{case}_{seed}", args.quick, args.model_name_or_path, env
                )
                runs[case].append(row)
                print(json.dumps({"case": case, **row}), flush=True)
    return write_sweep_results(args, "class_weights", summarise(runs), write_table)


if __name__ == "__main__":
    main()
