"""LoRA defaults chosen on validation, then LoRA (old and new defaults) against full fine-tuning over seeds.

    python benchmarks/lora_defaults.py              # sweep (6 configs, seed 42) + 3 seeds x 3 finalists
    python benchmarks/lora_defaults.py --quick      # smoke run: a tiny model, a few steps (the test uses it)

Same setting as partial_tuning.py (packaged MiniLM-L6, 2,000 demo tweets of which 10% are validation, 1 epoch,
batch 8, 1,000 fixed test tweets). Phase 1, the sweep: rank, alpha, adapter and head LRs, target modules
(query/value against every linear layer of the encoder) and whether the top layer also trains in full; each
config runs on seed 42 and is scored by its validation accuracy (200 tweets: one standard error is about 2
points, so the sweep separates only large differences; the 2 CPU cores allowed no more). Phase 2: the chosen config, the
old defaults and full fine-tuning (the recipe's defaults) on seeds 42, 43 and 44. Test accuracy is in the
table for every run but never chooses. Peak RSS is the Trainer process's, reported as a ratio to full FT.
Every run is appended to RESULTS/lora_defaults_runs.jsonl and skipped on a rerun (an interrupted sweep
resumes). Writes RESULTS/lora_defaults.md and .json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run_benchmarks import ROOT, Case, case_argv, parse_benchmark_args, text_lr_defaults_phrase

SWEEP_SEEDS, FINAL_SEEDS = (42,), (42, 43, 44)
BERT = "recipes/bert_cls.py"
ALL_LINEAR = ["--lora_target_modules", "query", "key", "value", "intermediate.dense", "output.dense"]
OLD = "r 8, alpha 16, query/value, adapter LR 2e-3, head 1e-3 (old defaults)"
FULL = "full fine-tuning (recipe defaults)"
# --use_peft with nothing else: the text recipe's LRs apply to the head and the pooler (trained in full), so when
# those defaults change (partial_tuning.py) this row says whether LoRA still does as well as the sweep's choice
BARE = "bare --use_peft (the text recipe's LRs for head and pooler)"


def lora(*flags: str) -> list[str]:
    # --learning_rate 3e-4: the pooler's LR when the sweep ran (the text recipe's default then)
    adapter = ["--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_lr", "2e-3"]
    return [*adapter, "--head_lr", "1e-3", "--learning_rate", "3e-4", *flags]


SWEEP = {
    OLD: lora(),
    "query/value, adapter LR 5e-3": lora("--lora_lr", "5e-3"),
    "all linear, adapter LR 2e-3": lora(*ALL_LINEAR),
    "all linear, adapter LR 5e-3": lora(*ALL_LINEAR, "--lora_lr", "5e-3"),
    "all linear, adapter LR 1e-3": lora(*ALL_LINEAR, "--lora_lr", "1e-3"),
    "all linear + top layer in full (LR 3e-4)": lora(*ALL_LINEAR, "--unfreeze_last", "1", "--learning_rate", "3e-4"),
}


def run_one(name: str, flags: list[str], seed: int, workdir: Path, quick: bool, model: str | None, env: dict) -> dict:
    case = Case(name, BERT, flags)
    output_dir = workdir / f"run_{abs(hash((name, seed)))}"
    argv = [*case_argv(case, output_dir, workdir / "cache", quick, model), "--seed", str(seed)]
    if quick:
        argv += ["--max_steps", "2"]
    result = subprocess.run(
        [sys.executable, str(ROOT / BERT), *argv], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"case '{name}' seed {seed} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {
        "case": name,
        "seed": seed,
        "val_accuracy": metrics["eval_accuracy"],
        "val_macro_f1": metrics.get("eval_macro_f1"),
        "test_accuracy": metrics["test_accuracy"],
        "train_runtime_s": metrics["train_runtime"],
        "peak_rss_mb": metrics.get("train_peak_rss_mb"),
        "trainable_params": json.loads((output_dir / "freeze_report.json").read_text())["trainable_params"],
        "load_average": round(os.getloadavg()[0], 1),
        "command": f"python {BERT} {' '.join(flags)} --seed {seed} --demo_train_samples 2000 "
        "--per_device_train_batch_size 8",
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def chosen_config(runs: list[dict], names: list[str]) -> str:
    """The sweep config with the best mean validation accuracy (test is not looked at)."""
    scores = {name: statistics.mean(r["val_accuracy"] for r in runs if r["case"] == name) for name in names}
    return max(scores, key=scores.get)


def summarise(runs: list[dict], seeds_of: dict[str, tuple[int, ...]]) -> list[dict]:
    rows = []
    for name in [name for name in [*SWEEP, BARE, FULL] if name in seeds_of]:
        seeded = sorted((r for r in runs if r["case"] == name and r["seed"] in seeds_of[name]), key=lambda r: r["seed"])
        if not seeded:
            continue
        rss = [r["peak_rss_mb"] for r in seeded if r["peak_rss_mb"]]
        rows.append(
            {
                "case": name,
                "seeds": [r["seed"] for r in seeded],
                "val_mean_sd": mean_sd([r["val_accuracy"] for r in seeded]),
                "test_mean_sd": mean_sd([r["test_accuracy"] for r in seeded]),
                "train_runtime_s_mean": statistics.mean(r["train_runtime_s"] for r in seeded),
                "peak_rss_mb": max(rss) if rss else None,
                "trainable_params": seeded[0]["trainable_params"],
                "command": seeded[0]["command"],
            }
        )
    return rows


def write_table(sweep: list[dict], final: list[dict], chosen: str, command: str, path: Path) -> None:
    def pm(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.3f} ± {pair[1]:.3f}"

    full = next((row for row in final if row["case"] == FULL), None)
    lines = [
        "# LoRA defaults, chosen on validation, against full fine-tuning",
        "",
        f"Command: `{command}`. Same setting {__doc__.split('Same setting', 1)[1].split('Every run')[0].strip()}",
        "",
        f"## Sweep (seeds {', '.join(map(str, sweep[0]['seeds']))}; chosen on validation: **{chosen}**)",
        "",
        "| config | val acc | test acc (not used to choose) | trainable params | train s |",
        "|---|---|---|---|---|",
    ]
    for row in sweep:
        lines.append(
            f"| {row['case']} | {pm(row['val_mean_sd'])} | {pm(row['test_mean_sd'])} | {row['trainable_params']:,} | "
            f"{row['train_runtime_s_mean']:.0f} |"
        )
    lines += [
        "",
        f"## Finalists (seeds {', '.join(map(str, final[0]['seeds']))})",
        "",
        "| case | val acc | test acc | test acc vs full FT (points) | peak RSS MB | RSS / full FT | command (seed 42) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in final:
        gap = f"{100 * (row['test_mean_sd'][0] - full['test_mean_sd'][0]):+.1f}" if full else "-"
        ratio = f"{row['peak_rss_mb'] / full['peak_rss_mb']:.2f}x" if full and row["peak_rss_mb"] else "-"
        rss = f"{row['peak_rss_mb']:.0f}" if row["peak_rss_mb"] else "-"
        lines.append(
            f"| {row['case']} | {pm(row['val_mean_sd'])} | {pm(row['test_mean_sd'])} | {gap} | {rss} | {ratio} | "
            f"`{row['command']}` |"
        )
    lines += [
        "",
        (
            "Peak RSS is the whole process's high-water mark (model, data, tokenizer, Python), so it understates the "
            "optimizer-state saving of LoRA. Train seconds came from a machine shared with other jobs (load average "
            "in the JSON); compare them only within a row's own run. The sweep and the full fine-tuning rows ran at "
            "the text recipe's LR defaults of their time (pooler 3e-4, decay 0.8, head 1e-3); the bare --use_peft row "
            f"at today's ({text_lr_defaults_phrase()}), so it says whether those still suit LoRA."
        ),
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv)
    env["OMP_NUM_THREADS"] = "1"  # the 2 cores are shared; one thread per run keeps runs steady
    stem = "lora_defaults_quick" if args.quick else "lora_defaults"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    log = args.results_dir / f"{stem}_runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    command = "python benchmarks/lora_defaults.py" + (" --quick" if args.quick else "")
    sweep_seeds, final_seeds = (SWEEP_SEEDS[:1], FINAL_SEEDS[:1]) if args.quick else (SWEEP_SEEDS, FINAL_SEEDS)
    configs = dict(list(SWEEP.items())[:2]) if args.quick else SWEEP
    with tempfile.TemporaryDirectory(prefix="ftpeft-lora-") as workdir:

        def ensure(name: str, flags: list[str], seeds: tuple[int, ...]) -> None:
            for seed in seeds:
                if any(r["case"] == name and r["seed"] == seed for r in runs):
                    continue
                run = run_one(name, flags, seed, Path(workdir), args.quick, args.model_name_or_path, env)
                runs.append(run)
                with log.open("a") as handle:
                    handle.write(json.dumps(run) + "\n")
                print(json.dumps({k: run[k] for k in ("case", "seed", "val_accuracy", "test_accuracy")}), flush=True)

        for seed in sweep_seeds:  # seed-major: an interrupted sweep has every config on the first seed
            for name, flags in configs.items():
                ensure(name, flags, (seed,))
        chosen = chosen_config([r for r in runs if r["seed"] in sweep_seeds], list(configs))
        finalists = {OLD: SWEEP[OLD], chosen: SWEEP[chosen], FULL: ["--unfreeze_last", "all"], BARE: ["--use_peft"]}
        for name, flags in finalists.items():
            ensure(name, flags, final_seeds)
    sweep = summarise(runs, dict.fromkeys(configs, sweep_seeds))
    final_names = [OLD, chosen, BARE, FULL] if chosen != OLD else [OLD, BARE, FULL]
    final = [
        row for row in summarise(runs, dict.fromkeys([*SWEEP, BARE, FULL], final_seeds)) if row["case"] in final_names
    ]
    path = args.results_dir / f"{stem}.md"
    write_table(sweep, final, chosen, command, path)
    (args.results_dir / f"{stem}.json").write_text(
        json.dumps({"command": command, "chosen": chosen, "sweep": sweep, "final": final, "runs": runs}, indent=2)
    )
    print(path.read_text())
    return path


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
