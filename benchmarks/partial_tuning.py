"""Does partial tuning pay with ftpeft's defaults? --unfreeze-last 2 vs full fine-tuning, over seeds.

    python benchmarks/partial_tuning.py                 # 3 seeds x 5 cases, ~15 min on 2 CPU cores
    python benchmarks/partial_tuning.py --quick         # smoke run: a tiny model, a few steps (the test uses it)

Same setting as run_benchmarks.py (packaged MiniLM-L6, 2,000 demo tweets, 1 epoch, batch 8, 1,000 fixed
test tweets), but every case runs once per seed, so the table shows mean and spread rather than one draw.
The cases ablate the LR defaults: one LR for everything (what a hand-written run does), a separate head
LR (ftpeft's old default), and the current defaults (top-layer LR + layer-wise decay). Train time is
Trainer's train_runtime, as a ratio to the plain Trainer's in the same seed. Writes
benchmarks/results/partial_tuning.md and .json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from run_benchmarks import Case, parse_benchmark_args, run_case, write_sweep_results

SEEDS = (42, 43, 44)


def cases() -> list[Case]:
    bert = "recipes/bert_cls.py"
    return [
        Case("plain Trainer, full FT, one LR 5e-5 (baseline)", "benchmarks/plain_trainer.py", []),
        Case("ftpeft --unfreeze-last all (defaults)", bert, ["--unfreeze_last", "all"]),
        Case("ftpeft --unfreeze-last 2 (defaults)", bert, ["--unfreeze_last", "2"]),
        Case(
            "--unfreeze-last 2, lr 5e-5, head 1e-3, no decay (old defaults)",
            bert,
            ["--unfreeze_last", "2", "--learning_rate", "5e-5", "--head_lr", "1e-3", "--layer_decay", "1"],
        ),
        Case(
            "--unfreeze-last 2, one LR 5e-5",
            bert,
            ["--unfreeze_last", "2", "--learning_rate", "5e-5", "--head_lr", "5e-5", "--layer_decay", "1"],
        ),
    ]


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    """Mean/sd of test accuracy and train time per case; time as a ratio to the baseline of the same seed."""
    baseline = next(iter(runs.values()))
    rows = []
    for name, seeded in runs.items():
        accuracy = [run["test_accuracy"] for run in seeded]
        ratios = [run["train_runtime_s"] / base["train_runtime_s"] for run, base in zip(seeded, baseline)]
        rows.append(
            {
                "case": name,
                "seeds": [run["seed"] for run in seeded],
                "test_accuracy": accuracy,
                "accuracy_mean": statistics.mean(accuracy),
                "accuracy_sd": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                "train_runtime_s": [run["train_runtime_s"] for run in seeded],
                "time_ratio_mean": statistics.mean(ratios),
                "trainable_params": seeded[0]["trainable_params"],
            }
        )
    return rows


def write_table(rows: list[dict], command: str, path: Path) -> None:
    base = rows[0]
    lines = [
        "# Partial tuning with ftpeft's defaults, over seeds",
        "",
        (
            f"Command: `{command}`. Packaged MiniLM-L6, 2,000 demo tweets (10% held out), 1 epoch, batch 8, "
            f"1,000 fixed test tweets; seeds {', '.join(map(str, rows[0]['seeds']))}. Train time is Trainer's "
            "train_runtime as a ratio to the baseline's in the same seed."
        ),
        "",
        "| case | test acc per seed | mean ± sd | vs baseline (points) | train time vs baseline | trainable params |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        per_seed = ", ".join(f"{a:.3f}" for a in row["test_accuracy"])
        gap = 100 * (row["accuracy_mean"] - base["accuracy_mean"])
        params = f"{row['trainable_params']:,}" if row["trainable_params"] is not None else "-"
        lines.append(
            f"| {row['case']} | {per_seed} | {row['accuracy_mean']:.3f} ± {row['accuracy_sd']:.3f} "
            f"| {gap:+.1f} | {row['time_ratio_mean']:.2f}x | {params} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv)
    seeds = SEEDS[:2] if args.quick else SEEDS
    runs: dict[str, list[dict]] = {case.name: [] for case in cases()}
    with tempfile.TemporaryDirectory(prefix="ftpeft-partial-") as workdir:
        for seed in seeds:
            for case in cases():
                seeded = Case(f"{case.name} seed {seed}", case.script, [*case.args, "--seed", str(seed)])
                row = run_case(seeded, Path(workdir), args.quick, args.model_name_or_path, env)
                runs[case.name].append({**row, "seed": seed})
                print(
                    json.dumps(
                        {
                            "case": case.name,
                            "seed": seed,
                            "test_accuracy": row["test_accuracy"],
                            "train_runtime_s": row["train_runtime_s"],
                        }
                    ),
                    flush=True,
                )
    return write_sweep_results(args, "partial_tuning", summarise(runs), write_table)


if __name__ == "__main__":
    main()
