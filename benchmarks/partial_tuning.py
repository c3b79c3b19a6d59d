"""The recipes' LR defaults, chosen on validation; test is read once, for the chosen settings only.

    python benchmarks/partial_tuning.py                      # bert_cls.py (~25 min on 2 CPU cores)
    python benchmarks/partial_tuning.py --recipe knowledge   # knowledge_cls.py (--inject add), same grid
    python benchmarks/partial_tuning.py --recipe image       # image_cls.py (EfficientNet-Lite0 on MNIST)
    python benchmarks/partial_tuning.py --epochs auto        # the text LRs revalidated under --num_train_epochs auto
    python benchmarks/partial_tuning.py --quick              # smoke run: a tiny model, a few steps (the test uses it)

``--epochs auto``: every run stops on validation (the recipes' default since the convergence issue) instead of one
epoch; the text grid is the one-epoch winner and its neighbours at --unfreeze-last 2 (from the frozen-prefix cache),
seeds 42 and 43, and test is read for the chosen setting's runs only. Results: RESULTS/partial_tuning_auto.md.

Protocol. Each stage runs a small grid on seeds 42 and 43 and keeps the setting with the best mean validation
accuracy; a later stage starts from the earlier stage's choice. Choosing reads ``eval_*`` only. The defaults are
every stage's choices together (a later stage's value wins); they run at each depth a stage tuned, on seeds 42,
43 and 44 (reusing a sweep run where the setting is the same), and only those rows show test accuracy: test is
scored once, after choosing. Text: the packaged MiniLM-L6, 2,000 demo tweets of which 20% are
validation (400 tweets: one standard error is about 1.7 points), batch 32, 1 epoch, 1,000 fixed test tweets.
Image: EfficientNet-Lite0 (ImageNet weights) on 2,000 MNIST digits (20% validation), 2 epochs, image_cls's
batch and image size. Runs go two at a time, one torch thread each. Every run is appended to
RESULTS/partial_tuning[_RECIPE]_runs.jsonl and skipped on a rerun, so an interrupted sweep resumes.
Writes RESULTS/partial_tuning[_RECIPE].md and .json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from run_benchmarks import ROOT, parse_benchmark_args, run_recipe

SWEEP_SEEDS, FINAL_SEEDS = (42, 43), (42, 43, 44)
SCRIPTS = {"text": "recipes/bert_cls.py", "knowledge": "recipes/knowledge_cls.py", "image": "recipes/image_cls.py"}
DATA = {
    "text": ["--demo_train_samples", "2000", "--validation_split_percentage", "20", "--demo_test_samples", "1000",
             "--num_train_epochs", "1"],
    "image": ["--demo_train_samples", "2000", "--validation_split_percentage", "20", "--demo_test_samples", "1000",
              "--num_train_epochs", "2"],
}  # fmt: skip
DATA["knowledge"] = DATA["text"]
QUICK_DATA = {
    "text": ["--demo_train_samples", "64", "--demo_test_samples", "32", "--max_steps", "2"],
    "image": ["--demo_train_samples", "64", "--demo_test_samples", "32", "--max_steps", "2", "--image_size", "32"],
}
QUICK_DATA["knowledge"] = QUICK_DATA["text"]


@dataclasses.dataclass
class Stage:
    """One grid: ``configs(chosen)`` maps a setting's name to its flags, given the flags chosen so far."""

    name: str
    configs: Callable[[list[str]], dict[str, list[str]]]


def _setting(unfreeze: str, lr: str, head: str, decay: str) -> tuple[str, list[str]]:
    """(name, flags) of one LR setting; the name is the run log's key, so equal settings share their runs."""
    flags = ["--unfreeze_last", unfreeze, "--learning_rate", lr, "--head_lr", head, "--layer_decay", decay]
    return f"--unfreeze_last {unfreeze}, lr {lr}, head_lr {head}, layer_decay {decay}", flags


def _lr_grid(unfreeze: str, lrs: tuple[str, ...], head_lrs: tuple[str, ...], decay: str) -> dict[str, list[str]]:
    return dict(_setting(unfreeze, lr, head, decay) for lr in lrs for head in head_lrs)


def _values(flags: list[str]) -> dict[str, str]:
    return dict(zip(flags[::2], flags[1::2]))


def _with_decay(chosen: list[str], decays: tuple[str, ...]) -> dict[str, list[str]]:
    """Full fine-tuning at the chosen LRs, over layer-wise decay (which only matters when many layers train)."""
    lrs = _values(chosen)
    return dict(_setting("all", lrs["--learning_rate"], lrs["--head_lr"], d) for d in decays)


def final_settings(chosen: list[list[str]]) -> dict[str, list[str]]:
    """The defaults every stage chose together (a later stage's value wins), at each depth a stage tuned."""
    merged = {key: value for flags in chosen for key, value in _values(flags).items()}
    depths = dict.fromkeys(_values(flags)["--unfreeze_last"] for flags in chosen)
    lr, head, decay = merged["--learning_rate"], merged["--head_lr"], merged["--layer_decay"]
    return dict(_setting(depth, lr, head, decay) for depth in depths)


TEXT_LRS = ("1e-4", "3e-4", "1e-3", "3e-3")  # 3e-3 added when 1e-3 won at the edge of the first grid
STAGES: dict[str, list[Stage]] = {
    "text": [
        Stage("LRs at --unfreeze-last 2", lambda _: _lr_grid("2", TEXT_LRS, ("1e-3", "3e-3"), "0.8")),
        Stage("layer decay at full fine-tuning", lambda chosen: _with_decay(chosen, ("0.5", "0.65", "0.8", "1"))),
    ],
    # the old defaults and the text sweep's winner, with their neighbours (the 2 cores allowed no more)
    # --epochs auto: the one-epoch winner (1e-3 / 3e-3 / 0.65) and its neighbours; last-2 trains from the cache
    "text_auto": [
        Stage(
            "LRs at --unfreeze-last 2 (cached), auto",
            lambda _: {
                name + ", cached": [*flags, "--cache_frozen"]
                for name, flags in _lr_grid("2", ("3e-4", "1e-3"), ("1e-3", "3e-3"), "0.65").items()
            },
        ),
        # the decay under full fine-tuning is not revalidated under auto: on 2 CPU cores each full run to its stopping
        # point costs ~15 minutes; benchmarks/epochs.py has full fine-tuning at the defaults against 1-8 epochs
    ],
    "knowledge": [
        Stage("LRs at --unfreeze-last 2", lambda _: _lr_grid("2", ("3e-4", "1e-3"), ("1e-3", "3e-3"), "0.65"))
    ],
    "image": [
        Stage(
            "LRs at full fine-tuning (image_cls's default)",
            lambda _: _lr_grid(
                "all", ("3e-4", "1e-3", "3e-3", "1e-2"), ("3e-3", "1e-2"), "1"
            ),  # 1e-2: 3e-3 won at the edge
        )
    ],
}


def run_one(recipe: str, config: str, flags: list[str], seed: int, workdir: Path, args, env: dict) -> dict:
    quick = ["--model_name_or_path", args.model_name_or_path] if args.quick and args.model_name_or_path else []
    if args.quick and recipe == "image":
        quick = ["--model_name_or_path", "test_resnet"]
    data = (QUICK_DATA if args.quick else DATA)[recipe]
    if getattr(args, "epochs", "1") == "auto":  # stop on validation: evaluations stay on, the epoch count goes
        data = [t for i, t in enumerate(data) if "--num_train_epochs" not in (t, data[i - 1] if i else None)]
        argv = [*flags, *data, *quick, "--seed", str(seed), "--num_train_epochs", "auto"]
    else:
        argv = [*flags, *data, *quick, "--seed", str(seed), "--eval_strategy", "no", "--save_strategy", "no"]
    output_dir = workdir / f"run_{abs(hash((recipe, config, seed)))}"
    metrics, trainable = run_recipe(SCRIPTS[recipe], argv, output_dir, env)
    return {
        "recipe": recipe,
        "config": config,
        "seed": seed,
        "val_accuracy": metrics["eval_accuracy"],
        "val_macro_f1": metrics.get("eval_macro_f1"),
        # recorded with the run, shown only for the chosen settings (choose() never reads it)
        "test_accuracy": metrics["test_accuracy"],
        "train_runtime_s": metrics["train_runtime"],
        "trainable_params": trainable,
        "load_average": round(os.getloadavg()[0], 1),
        "command": f"python {SCRIPTS[recipe]} {' '.join(argv[:-4])}",
    }


def choose(runs: list[dict], configs: list[str], seeds: tuple[int, ...]) -> str:
    """The setting with the best mean validation accuracy over ``seeds`` (ties: the first listed)."""
    scores = {
        name: statistics.mean(r["val_accuracy"] for r in runs if r["config"] == name and r["seed"] in seeds)
        for name in configs
    }
    return max(scores, key=scores.get)


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def per_seed(runs: list[dict], key: str) -> str:
    return ", ".join(f"{run[key]:.3f}" for run in runs)


def write_table(
    recipe: str,
    command: str,
    stages: list[dict],
    finals: list[str],
    runs: list[dict],
    path: Path,
    final_seeds: tuple[int, ...] = FINAL_SEEDS,
) -> None:
    def of(config: str, seeds: tuple[int, ...]) -> list[dict]:
        return sorted((r for r in runs if r["config"] == config and r["seed"] in seeds), key=lambda r: r["seed"])

    lines = [
        f"# {SCRIPTS[recipe]}: LR defaults chosen on validation, test scored once",
        "",
        f"Command: `{command}`. " + __doc__.split("Protocol. ", 1)[1].split(" Runs go")[0],
        "",
    ]
    for stage in stages:
        lines += [
            f"## {stage['name']} (seeds {', '.join(map(str, SWEEP_SEEDS))}); chosen: **{stage['chosen']}**",
            "",
            "| setting | val acc per seed | val acc mean ± sd | val macro-F1 | train s | trainable params |",
            "|---|---|---|---|---|---|",
        ]
        for config in stage["configs"]:
            seeded = of(config, SWEEP_SEEDS)
            lines.append(
                f"| {config} | {per_seed(seeded, 'val_accuracy')} | "
                f"{mean_sd([r['val_accuracy'] for r in seeded])} | "
                f"{mean_sd([r['val_macro_f1'] for r in seeded])} | "
                f"{statistics.mean(r['train_runtime_s'] for r in seeded):.0f} | {seeded[0]['trainable_params']:,} |"
            )
        lines.append("")
    lines += [
        f"## The chosen settings, seeds {', '.join(map(str, final_seeds))}: test scored once",
        "",
        "| setting | val acc | test acc per seed | test acc mean ± sd | command (seed 42) |",
        "|---|---|---|---|---|",
    ]
    for config in finals:
        seeded = of(config, final_seeds)
        lines.append(
            f"| {config} | {mean_sd([r['val_accuracy'] for r in seeded])} | "
            f"{per_seed(seeded, 'test_accuracy')} | "
            f"{mean_sd([r['test_accuracy'] for r in seeded])} | `{seeded[0]['command']}` |"
        )
    loads = [r["load_average"] for r in runs]
    lines += [
        "",
        f"Load average during the runs: {min(loads)} to {max(loads)} (train seconds are comparable only within this table).",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> Path:
    def own_flags(parser) -> None:
        parser.add_argument("--recipe", choices=list(SCRIPTS), default="text", help="Whose defaults to choose.")
        parser.add_argument("--workers", type=int, default=2, help="Runs at a time (one torch thread each).")
        parser.add_argument("--epochs", choices=("1", "auto"), default="1", help="Text: one epoch, or auto.")

    args, env = parse_benchmark_args(__doc__, argv, own_flags)
    recipe = args.recipe
    stages_key = "text_auto" if recipe == "text" and args.epochs == "auto" else recipe
    env["OMP_NUM_THREADS"] = "1"  # two runs share the 2 cores; one thread each keeps them steady
    stem = "partial_tuning" + ("" if recipe == "text" else f"_{recipe}") + ("_auto" if args.epochs == "auto" else "")
    stem += "_quick" if args.quick else ""
    args.results_dir.mkdir(parents=True, exist_ok=True)
    log = args.results_dir / f"{stem}_runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    command = "python benchmarks/partial_tuning.py" + ("" if recipe == "text" else f" --recipe {recipe}")
    command += (" --epochs auto" if args.epochs == "auto" else "") + (" --quick" if args.quick else "")

    with tempfile.TemporaryDirectory(prefix="ftpeft-sweep-") as workdir, ThreadPoolExecutor(args.workers) as pool:

        def ensure(configs: dict[str, list[str]], seeds: tuple[int, ...]) -> None:
            todo = [
                (name, flags, seed)
                for seed in seeds
                for name, flags in configs.items()
                if not any(r["config"] == name and r["seed"] == seed for r in runs)
            ]
            jobs = [pool.submit(run_one, recipe, n, f, s, Path(workdir), args, env) for n, f, s in todo]
            for job in jobs:
                run = job.result()
                runs.append(run)
                with log.open("a") as handle:
                    handle.write(json.dumps(run) + "\n")
                print(
                    json.dumps({k: run[k] for k in ("config", "seed", "val_accuracy", "train_runtime_s")}), flush=True
                )

        chosen_flags: list[str] = []
        stages = []
        for stage in STAGES[stages_key]:
            configs = stage.configs(chosen_flags)
            if args.quick:  # the smoke run checks the protocol, not the grid
                configs = dict(list(configs.items())[:2])
            ensure(configs, SWEEP_SEEDS)
            chosen = choose(runs, list(configs), SWEEP_SEEDS)
            chosen_flags = configs[chosen]
            stages.append({"name": stage.name, "configs": list(configs), "chosen": chosen, "flags": chosen_flags})
        if stages_key == "text_auto":  # one stage: the chosen runs are the final ones (test read for them only)
            finals = {stages[-1]["chosen"]: stages[-1]["flags"]}
            ensure(finals, SWEEP_SEEDS)
        else:
            finals = final_settings([stage["flags"] for stage in stages])
            ensure(finals, FINAL_SEEDS)
    path = args.results_dir / f"{stem}.md"
    final_seeds = SWEEP_SEEDS if stages_key == "text_auto" else FINAL_SEEDS
    write_table(recipe, command, stages, list(finals), runs, path, final_seeds)
    (args.results_dir / f"{stem}.json").write_text(
        json.dumps({"command": command, "stages": stages, "finals": list(finals), "runs": runs}, indent=2)
    )
    print(path.read_text())
    return path


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
