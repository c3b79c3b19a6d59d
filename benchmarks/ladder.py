"""What does the ladder cost, and does it choose well? The default ladder against one full fine-tuning run.

    python benchmarks/ladder.py                       # text demo (MiniLM, tweets) then image demo (Lite0, MNIST)
    python benchmarks/ladder.py --settings text       # one of them (the others keep their committed rows)
    python benchmarks/ladder.py --settings text_1epoch  # the text ladder at one epoch a rung, for comparison
    python benchmarks/ladder.py --pairs 3             # 3 alternated (ladder, full run) pairs per setting

For each setting, in the same run: the default ladder (1 seed) as one process, then one full fine-tuning run
of the same recipe on the same data as another, alternated for --pairs pairs (default 2), each run with a fresh
activation cache. It reports the ladder's mean wall time against the full run's (and every pair's walls),
the recommended rung's validation score against the best rung's (goal: within the tolerance), its train time
against full fine-tuning's (goal: at most 0.5x) and the transfer curve. Writes benchmarks/results/ladder.md,
ladder.json and ladder_transfer_<setting>.png (copies of the ladders' transfer curves).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = {
    # 2,000 tweets keep one ladder under half an hour on 2 CPU cores; the budget lets every default rung run, so
    # the ladder's wall time is the whole default ladder's
    "text": ["--demo_train_samples", "2000", "--per_device_train_batch_size", "16"],
    # *_1epoch: one epoch a rung, the ladder before --num_train_epochs auto became the default (for comparison)
    "text_1epoch": ["--demo_train_samples", "2000", "--per_device_train_batch_size", "16", "--num_train_epochs", "1"],
    "image": ["--max_train_samples", "2000"],
    "image_1epoch": ["--num_train_epochs", "1", "--max_train_samples", "2000"],
}
LADDER_ONLY = {
    "text": ["--time_budget", "60m"],
    "text_1epoch": ["--time_budget", "60m"],
    "image": ["--modality", "image", "--time_budget", "60m"],
    "image_1epoch": ["--modality", "image"],
}  # not flags of the recipes


def timed(argv: list[str], log: Path, cache: Path) -> float:
    # a fresh activation cache per run: a ladder never finds an earlier run's caches
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "FTPEFT_CACHE": str(cache)}  # fmt: skip
    start = time.perf_counter()
    with log.open("w") as stream:
        result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                check=False)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed; see {log}")
    shutil.rmtree(cache, ignore_errors=True)
    return time.perf_counter() - start


def run_setting(name: str, workdir: Path, pairs: int) -> dict:
    """``pairs`` x (the ladder, then one full run), alternated; the figures of the last pair's ladder."""
    flags = SETTINGS[name]
    recipe = "recipes/image_cls.py" if name.startswith("image") else "recipes/bert_cls.py"
    ladder_walls, full_walls = [], []
    for pair in range(pairs):
        ladder_dir, full_dir = workdir / f"ladder_{name}_{pair}", workdir / f"full_{name}_{pair}"
        ladder_argv = ["recipes/ladder.py", *flags, *LADDER_ONLY[name], "--output_dir", str(ladder_dir)]
        ladder_walls.append(timed(ladder_argv, workdir / f"ladder_{name}_{pair}.log", workdir / "cache"))
        full_walls.append(timed([recipe, *flags, "--unfreeze_last", "all", "--output_dir", str(full_dir)],
                                workdir / f"full_{name}_{pair}.log", workdir / "cache"))  # fmt: skip
        print(f"{name} pair {pair + 1}: ladder {ladder_walls[-1]:.0f} s, full {full_walls[-1]:.0f} s", flush=True)
    ladder_wall, full_wall = statistics.mean(ladder_walls), statistics.mean(full_walls)
    ladder = json.loads((ladder_dir / "ladder.json").read_text())
    full_metrics = json.loads((full_dir / "metrics.json").read_text())
    shutil.copy(ladder_dir / "transfer_curve.png", RESULTS / f"ladder_transfer_{name}.png")
    shutil.copy(ladder_dir / "ladder.png", RESULTS / f"ladder_{name}.png")
    shutil.copy(ladder_dir / "ladder.md", RESULTS / f"ladder_{name}.md")
    done = [r for r in ladder["rungs"] if r["status"] == "done"]
    best = max(done, key=lambda r: r["val_accuracy"])
    chosen = next(r for r in done if r["name"] == ladder["recommended"])
    return {
        "setting": name,
        "flags": [*flags, *LADDER_ONLY[name]],
        "ladder_wall_s": round(ladder_wall, 1),
        "full_run_wall_s": round(full_wall, 1),
        "ladder_vs_full_wall": round(ladder_wall / full_wall, 2),
        "pair_walls_s": [[round(a, 1), round(b, 1)] for a, b in zip(ladder_walls, full_walls, strict=True)],
        "recommended": chosen["name"],
        "recommended_val": chosen["val_accuracy"],
        "recommended_test": chosen["test_accuracy"],
        "best": best["name"],
        "best_val": best["val_accuracy"],
        "tolerance": ladder["tolerance"],
        "within_tolerance": best["val_accuracy"] - chosen["val_accuracy"] <= ladder["tolerance"] + 1e-12,
        "recommended_train_s": chosen["train_seconds"],
        "full_train_s": full_metrics["train_runtime"],
        "recommended_vs_full_train": round(chosen["train_seconds"] / full_metrics["train_runtime"], 3),
        "recommended_vs_best_train": round(chosen["train_seconds"] / best["train_seconds"], 3),
        "full_run_test": full_metrics.get("test_accuracy"),
        "best_probe_layer": ladder["best_probe_layer"]["name"],
        "load_average_after": round(os.getloadavg()[0], 1),  # the 1-minute load when the setting ended
        "rungs": ladder["rungs"],
    }


def write(rows: list[dict]) -> None:
    sources = [f"- {r['setting']}: `{r.get('command', 'python benchmarks/ladder.py')}`, {r.get('date', 'an earlier run')}"
               for r in rows]  # fmt: skip
    lines = [
        "# The strategy ladder against one full fine-tuning run",
        "",
        "Command: `python benchmarks/ladder.py` (1 seed; each setting's ladder and its full fine-tuning run in the same",
        "benchmark run, one after the other, on 2 CPU cores). Choice on validation accuracy; test is shown, never used",
        "to choose. Each row's own command and date:",
        "",
        *sources,
        "",
        (
            "| setting | ladder wall (mean) | full FT wall (mean) | ratio | each pair (ladder / full s) | recommended "
            "(val / test) | best rung (val) | tolerance | within | rec. train s vs full FT | vs best rung | best probe "
            "layer | load after |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['ladder_wall_s']:.0f} s | {r['full_run_wall_s']:.0f} s | {r['ladder_vs_full_wall']:.2f}x "
            f"| {', '.join(f'{a:.0f} / {b:.0f}' for a, b in r.get('pair_walls_s', [])) or '-'} | {r['recommended']} ({r['recommended_val']:.4f} / {r['recommended_test']:.4f}) | {r['best']} "
            f"({r['best_val']:.4f}) | {r['tolerance'] * 100:.2f} pt | {'yes' if r['within_tolerance'] else 'no'} | "
            f"{r['recommended_vs_full_train']:.2f}x | {r['recommended_vs_best_train']:.2f}x | {r['best_probe_layer']} | "
            f"{r.get('load_average_after', '-')} |"
        )
    for r in rows:
        lines += ["", f"## {r['setting']}: rungs", "", (f"![transfer curve](ladder_transfer_{r['setting']}.png) "
                  f"![ladder](ladder_{r['setting']}.png)"), "", "| rung | status | val acc | test acc | train s |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for rung in r["rungs"]:
            val = f"{rung['val_accuracy']:.4f}" if rung["val_accuracy"] is not None else "-"
            test = f"{rung['test_accuracy']:.4f}" if rung["test_accuracy"] is not None else "-"
            seconds = f"{rung['train_seconds']:.1f}" if rung["train_seconds"] is not None else "-"
            status = f"{rung['status']}: {rung['reason']}" if rung["reason"] else rung["status"]
            lines.append(f"| {rung['name']} | {status} | {val} | {test} | {seconds} |")
    (RESULTS / "ladder.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "ladder.json").write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the *_1epoch settings run only when named: their committed rows are the record of the one-epoch defaults
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["text", "image"])
    parser.add_argument("--pairs", type=int, default=2, help="(ladder, full run) pairs per setting, alternated")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    # a setting not rerun keeps its committed row (each row records the run it came from)
    saved = RESULTS / "ladder.json"
    kept = [r for r in json.loads(saved.read_text()) if r["setting"] not in args.settings] if saved.is_file() else []
    command = " ".join(["python benchmarks/ladder.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as workdir:
        rows = []
        for name in args.settings:
            rows.append(
                {**run_setting(name, Path(workdir), args.pairs), "command": command, "date": time.strftime("%Y-%m-%d")}
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "rungs"}), flush=True)
            write(sorted([*kept, *rows], key=lambda r: list(SETTINGS).index(r["setting"])))


if __name__ == "__main__":
    main()
