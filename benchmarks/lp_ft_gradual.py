"""LP-FT and gradual unfreezing against plain --unfreeze-last 2 and full fine-tuning, over seeds.

    python benchmarks/lp_ft_gradual.py                  # 3 seeds x 5 cases on the demo (MiniLM-L6, 2,000 tweets)
    python benchmarks/lp_ft_gradual.py --quick          # smoke run: a tiny model, a few steps (the test uses it)

Same setting as partial_tuning.py (packaged MiniLM-L6, 2,000 demo tweets of which 10% are validation, batch 8,
1,000 fixed test tweets, the recipe's LR defaults). Pairs that are compared share everything but the method:
LP-FT against plain --unfreeze-last 2 at 1 epoch, gradual unfreezing against plain --unfreeze-last 2 at 2 epochs
(it needs an epoch per stage, or the run split into stages). The --unfreeze-last 2 cases train from the
--cache_frozen activation cache (the frozen bottom 4 layers run once per seed, without dropout), which keeps the
sweep affordable on 2 CPU cores; full fine-tuning cannot be cached. Every run is appended to
RESULTS/lp_ft_gradual_runs.jsonl as it finishes, and a rerun skips the (case, seed) pairs already there, so an
interrupted sweep resumes. Validation decides; test is reported, never used to choose. Writes
RESULTS/lp_ft_gradual.md and .json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_benchmarks import ROOT, Case, case_argv, parse_benchmark_args, text_lr_defaults_phrase

SEEDS = (42, 43, 44)
BERT = "recipes/bert_cls.py"
CACHED_K2 = ["--unfreeze_last", "2", "--cache_frozen"]
TWO_EPOCHS = ["--num_train_epochs", "2"]


@dataclasses.dataclass(frozen=True)
class Comparison:
    method: str
    baseline: str


def cases() -> list[Case]:
    """Cheap first within a seed, so that an interrupted sweep still has the pairs that matter."""
    return [
        Case("--unfreeze-last 2, 1 epoch", BERT, CACHED_K2),
        Case("--unfreeze-last 2 --lp_ft, 1 epoch", BERT, [*CACHED_K2, "--lp_ft"]),
        Case("--unfreeze-last 2, 2 epochs", BERT, [*CACHED_K2, *TWO_EPOCHS], epochs=2),
        Case(
            "--unfreeze-last 2 --gradual_unfreeze, 2 epochs", BERT, [*CACHED_K2, "--gradual_unfreeze", *TWO_EPOCHS], 2
        ),
        Case("--unfreeze-last all (full FT), 1 epoch", BERT, ["--unfreeze_last", "all"]),
    ]


COMPARISONS = (
    Comparison("--unfreeze-last 2 --lp_ft, 1 epoch", "--unfreeze-last 2, 1 epoch"),
    Comparison("--unfreeze-last 2 --gradual_unfreeze, 2 epochs", "--unfreeze-last 2, 2 epochs"),
    Comparison("--unfreeze-last 2 --lp_ft, 1 epoch", "--unfreeze-last all (full FT), 1 epoch"),
)


def run_one(case: Case, seed: int, workdir: Path, quick: bool, model: str | None, env: dict) -> dict:
    """One recipe run in its own process; its validation/test accuracy, train time and staged-unfreezing record."""
    output_dir = workdir / f"{''.join(c if c.isalnum() else '_' for c in case.name)}_{seed}"
    argv = [*case_argv(case, output_dir, workdir / "cache", quick, model), "--seed", str(seed)]
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / case.script), *argv], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"case '{case.name}' seed {seed} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    schedule_file = output_dir / "unfreeze_schedule.json"
    stages = json.loads(schedule_file.read_text())["stages"] if schedule_file.is_file() else None
    tuning_line = next(line for line in (output_dir / "README.md").read_text().splitlines() if "Tuning:" in line)
    return {
        "case": case.name,
        "seed": seed,
        "val_accuracy": metrics["eval_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "train_runtime_s": metrics["train_runtime"],
        "process_wall_s": time.perf_counter() - start,
        "trainable_params": json.loads((output_dir / "freeze_report.json").read_text())["trainable_params"],
        "stages": stages,
        "card_tuning": tuning_line.split("Tuning:", 1)[1].strip(),
        "command": f"python {case.script} {' '.join(case.args)} --seed {seed} --demo_train_samples 2000",
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict]) -> dict:
    """Per case: validation and test mean ± sd; per comparison: paired (same seed) differences in points."""
    rows = []
    for case in cases():
        seeded = sorted((run for run in runs if run["case"] == case.name), key=lambda run: run["seed"])
        if not seeded:
            continue
        val, test = [r["val_accuracy"] for r in seeded], [r["test_accuracy"] for r in seeded]
        rows.append(
            {
                "case": case.name,
                "seeds": [r["seed"] for r in seeded],
                "val_accuracy": val,
                "test_accuracy": test,
                "val_mean_sd": mean_sd(val),
                "test_mean_sd": mean_sd(test),
                "train_runtime_s_mean": statistics.mean(r["train_runtime_s"] for r in seeded),
                "trainable_params": seeded[0]["trainable_params"],
                "card_tuning": seeded[0]["card_tuning"],
            }
        )
    by_case = {(run["case"], run["seed"]): run for run in runs}
    comparisons = []
    for comparison in COMPARISONS:
        seeds = sorted(s for (c, s) in by_case if c == comparison.method and (comparison.baseline, s) in by_case)
        if not seeds:
            continue
        diffs = {
            split: [
                100 * (by_case[(comparison.method, s)][split] - by_case[(comparison.baseline, s)][split]) for s in seeds
            ]
            for split in ("val_accuracy", "test_accuracy")
        }
        comparisons.append(
            {
                "method": comparison.method,
                "baseline": comparison.baseline,
                "seeds": seeds,
                "val_points": diffs["val_accuracy"],
                "test_points": diffs["test_accuracy"],
                "val_points_mean_sd": mean_sd(diffs["val_accuracy"]),
                "test_points_mean_sd": mean_sd(diffs["test_accuracy"]),
            }
        )
    return {"rows": rows, "comparisons": comparisons}


def validation_noise_points(validation_size: int, accuracy: float = 0.9) -> float:
    """One binomial standard error of an accuracy near ``accuracy`` on ``validation_size`` examples, in points."""
    return 100 * math.sqrt(accuracy * (1 - accuracy) / validation_size)


def verdict(comparison: dict, noise: float) -> str:
    gain, sd = comparison["val_points_mean_sd"]
    if gain > noise:
        return f"helps on validation (+{gain:.1f} points, more than the {noise:.1f}-point noise of one score)"
    if gain < -noise:
        return f"hurts on validation ({gain:+.1f} points)"
    return f"no difference beyond noise on validation ({gain:+.1f} ± {sd:.1f} points; one score's noise {noise:.1f})"


def write_table(summary: dict, command: str, validation_size: int, path: Path) -> None:
    noise = validation_noise_points(validation_size)
    lines = [
        "# LP-FT and gradual unfreezing against plain partial and full fine-tuning, over seeds",
        "",
        (
            f"Command: `{command}`. Packaged MiniLM-L6, 2,000 demo tweets ({validation_size} of them validation), "
            f"batch 8, 1,000 fixed test tweets, the recipe's defaults ({text_lr_defaults_phrase()}). The "
            "--unfreeze-last 2 rows train from the --cache_frozen activation cache; full FT is uncached. "
            "Validation decides; test is reported only."
        ),
        "",
        "| case | val acc per seed | val mean ± sd | test acc per seed | test mean ± sd | train s (mean) | trainable |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        (vm, vs), (tm, ts) = row["val_mean_sd"], row["test_mean_sd"]
        lines.append(
            f"| {row['case']} | {', '.join(f'{a:.3f}' for a in row['val_accuracy'])} | {vm:.3f} ± {vs:.3f} "
            f"| {', '.join(f'{a:.3f}' for a in row['test_accuracy'])} | {tm:.3f} ± {ts:.3f} "
            f"| {row['train_runtime_s_mean']:.0f} | {row['trainable_params']:,} |"
        )
    lines += ["", "Paired by seed, in accuracy points (method minus baseline):", ""]
    lines += ["| method | baseline | val points | test points | on validation |", "|---|---|---|---|---|"]
    for comparison in summary["comparisons"]:
        (vm, vs), (tm, ts) = comparison["val_points_mean_sd"], comparison["test_points_mean_sd"]
        lines.append(
            f"| {comparison['method']} | {comparison['baseline']} | {vm:+.1f} ± {vs:.1f} | {tm:+.1f} ± {ts:.1f} "
            f"| {verdict(comparison, noise)} |"
        )
    lines += ["", "What the runs' cards say about the schedule (first seed):", ""]
    lines += [f"- {row['case']}: {row['card_tuning']}" for row in summary["rows"] if "--lp_ft" in row["case"] or
              "gradual" in row["case"]]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv)
    env["OMP_NUM_THREADS"] = "1"  # the 2 cores are shared; one thread per run keeps runs steady and neighbours alive
    seeds = SEEDS[:1] if args.quick else SEEDS
    stem = "lp_ft_gradual_quick" if args.quick else "lp_ft_gradual"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    log = args.results_dir / f"{stem}_runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(run["case"], run["seed"]) for run in runs}
    command = "python benchmarks/lp_ft_gradual.py" + (" --quick" if args.quick else "")
    validation_size = 6 if args.quick else 200  # 10% of the demo's training tweets
    with tempfile.TemporaryDirectory(prefix="ftpeft-lpft-") as workdir:
        for seed in seeds:
            for case in cases():
                if (case.name, seed) in done:
                    continue
                run = run_one(case, seed, Path(workdir), args.quick, args.model_name_or_path, env)
                runs.append(run)
                with log.open("a") as handle:
                    handle.write(json.dumps(run) + "\n")
                print(json.dumps({k: run[k] for k in ("case", "seed", "val_accuracy", "test_accuracy",
                                                      "train_runtime_s")}), flush=True)  # fmt: skip
                summary = summarise(runs)  # tables after every run: an interrupted sweep still has them
                (args.results_dir / f"{stem}.json").write_text(json.dumps({"command": command, **summary}, indent=2))
                write_table(summary, command, validation_size, args.results_dir / f"{stem}.md")
    path = args.results_dir / f"{stem}.md"
    print(path.read_text())
    return path


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
