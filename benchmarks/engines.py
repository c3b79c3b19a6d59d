"""DDP, FSDP2 and DeepSpeed ZeRO-2/3 on 2 CPU ranks against 1 process, in one run: accuracy, memory, speed, save.

    python benchmarks/engines.py              # ~10 min on 2 CPU cores; run it on an otherwise idle machine
    python benchmarks/engines.py --quick      # smoke run: a tiny model, a few steps

Every case is recipes/bert_cls.py --unfreeze-last 2 on 2,000 demo tweets (10% validation, the 1,000 fixed test
tweets), 1 epoch, at the same global batch of 32 (1 process x 32 or 2 ranks x 16) and the recipe's LRs, so only
the engine differs. The 1-process case uses both cores (2 torch threads); each rank uses one. It runs first and
last, bracketing the engines, so drift of the machine shows. Peak RSS is per process (each rank logs its own).
"What the save loads into" is checked after each run: AutoModelForSequenceClassification and pipeline() on the
output dir. Writes RESULTS/engines.md and .json.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_benchmarks import ROOT, parse_benchmark_args, write_sweep_results

CONFIGS = ROOT / "accelerate_configs"
ENGINES = {  # name -> accelerate launch flags (None: one plain process)
    "1 process (baseline)": None,
    "DDP, 2 ranks": ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no"],
    "FSDP2, 2 ranks": ["--config_file", str(CONFIGS / "fsdp_cpu.yaml")],
    "ZeRO-2, 2 ranks": ["--config_file", str(CONFIGS / "deepspeed_zero2_cpu.yaml")],
    "ZeRO-3, 2 ranks": ["--config_file", str(CONFIGS / "deepspeed_zero3_cpu.yaml")],
}  # fmt: skip
RANK_RSS = re.compile(r"rank (\d): peak RSS (\d+) MiB")
HELD = re.compile(r"rank (\d): model wrapped by (\w+); holds ([\d,]+) of ([\d,]+) parameter bytes")


def accelerate_bin() -> str:
    return str(Path(sys.executable).with_name("accelerate"))


def run_engine(name: str, launch: list[str] | None, workdir: Path, args, env: dict) -> dict:
    output_dir = workdir / re.sub(r"\W+", "_", name)
    ranks = 1 if launch is None else 2
    data = ["--demo_train_samples", "64", "--demo_test_samples", "32", "--max_steps", "2"] if args.quick else [
        "--demo_train_samples", "2000"]  # fmt: skip
    model = ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
    argv = ["--unfreeze_last", "2", "--num_train_epochs", "1", "--per_device_train_batch_size", str(32 // ranks),
            *data, *model,
            "--output_dir", str(output_dir), "--overwrite_output_dir", "--eval_strategy", "no",
            "--save_strategy", "no", "--disable_tqdm", "true"]  # fmt: skip
    script = str(ROOT / "recipes/bert_cls.py")
    command = (
        [sys.executable, script, *argv] if launch is None else [accelerate_bin(), "launch", *launch, script, *argv]
    )
    run_env = dict(env, OMP_NUM_THREADS="2" if launch is None else "1")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=run_env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    log = result.stdout + result.stderr
    metrics = json.loads((output_dir / "metrics.json").read_text())
    rss = {int(rank): int(mb) for rank, mb in RANK_RSS.findall(log)} or {0: round(metrics["train_peak_rss_mb"])}
    held = {int(rank): (wrapper, int(mine.replace(",", "")) / int(full.replace(",", ""))) for rank, wrapper, mine, full
            in HELD.findall(log)}  # fmt: skip
    return {
        "engine": name,
        "ranks": ranks,
        "test_accuracy": metrics["test_accuracy"],
        "val_accuracy": metrics["eval_accuracy"],
        "train_samples_per_second": metrics["train_samples_per_second"],
        "train_runtime_s": metrics["train_runtime"],
        "process_wall_s": round(wall, 1),
        "peak_rss_mb_per_rank": [rss[rank] for rank in sorted(rss)],
        "wrapper": held.get(0, ("-", 1.0))[0],
        "parameter_share_rank0": round(held.get(0, ("-", 1.0))[1], 3),
        "loads_into": loads_into(output_dir),
        "command": shown_command(launch, argv[: argv.index("--output_dir")]),
    }


def shown_command(launch: list[str] | None, argv: list[str]) -> str:
    words = ["python" if launch is None else "accelerate launch", *(launch or []), "recipes/bert_cls.py", *argv]
    return " ".join(words).replace(str(ROOT) + "/", "")


def loads_into(output_dir: Path) -> str:
    """What the final save loads into, checked: the transformers class and a pipeline() prediction."""
    from transformers import AutoModelForSequenceClassification, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    label = pipeline("text-classification", model=str(output_dir))("great film")[0]
    return f"{type(model).__name__} (from_pretrained); pipeline('great film') -> {label['label']} {label['score']:.2f}"


def write_table(rows: list[dict], command: str, path: Path) -> None:
    base = rows[0]
    lines = [
        "# Engines on 2 CPU ranks against 1 process (bert_cls --unfreeze-last 2, demo tweets)",
        "",
        f"Command: `{command}`. " + __doc__.split("\n\n", 2)[2].split(" Writes")[0].replace("\n", " "),
        "",
        (
            "| engine | wrapper (rank 0) | rank 0 holds | test acc | val acc | train samples/s | vs 1 process | "
            "peak RSS MiB per rank | train s | what the save loads into |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['engine']} | {row['wrapper']} | {row['parameter_share_rank0']:.0%} | {row['test_accuracy']:.3f} | "
            f"{row['val_accuracy']:.3f} | {row['train_samples_per_second']:.1f} | "
            f"{row['train_samples_per_second'] / base['train_samples_per_second']:.2f}x | "
            f"{', '.join(map(str, row['peak_rss_mb_per_rank']))} | {row['train_runtime_s']:.0f} | {row['loads_into']} |"
        )
    lines += ["", "Commands (seed 42):", ""] + [f"- {row['engine']}: `{row['command']}`" for row in rows[:-1]]
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f}.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv)
    cases = [*ENGINES.items(), ("1 process (again, last)", None)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftpeft-engines-") as workdir:
        for name, launch in cases:
            rows.append(run_engine(name, launch, Path(workdir), args, env))
            print(json.dumps(rows[-1]), flush=True)
    return write_sweep_results(args, "engines", rows, write_table)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
