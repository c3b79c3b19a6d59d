"""The goal cells of several runs of benchmarks/inference.py pooled: per run, the median per-round ratio to the stock
loader (as inference.md gives it), and the median over every round of every run. Pool only runs of the same code for
the backend read (the commits are in each run's inference.md).

    python benchmarks/inference_pool.py --dataset tweets benchmarks/results/inference_2026-12-06_run{1,2,3}.json

Prints markdown rows: | data | threads | batch | backend | per-run median x stock | pooled median (range) | goal | met |
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from inference import BATCHES, GOAL_FTPEFT, GOAL_INT8, round_ratios

CELLS = [("ftpeft", batch, GOAL_FTPEFT) for batch in BATCHES] + [("onnx_int8", 32, GOAL_INT8)]


def pooled_rows(runs: dict[str, list[dict]], dataset: str, backends: list[str]) -> list[str]:
    """One markdown row per goal cell: the per-run medians, the pooled median over all rounds, its range, met."""
    threads = sorted({p["threads"] for passes in runs.values() for p in passes if p["dataset"] == dataset})
    rows = []
    for thread_count in threads:
        for backend, batch, goal in [cell for cell in CELLS if cell[0] in backends]:
            per_run = {
                name: round_ratios(passes, dataset, thread_count, batch, backend) for name, passes in runs.items()
            }
            pooled = [ratio for ratios in per_run.values() for ratio in ratios]
            medians = " / ".join(f"{statistics.median(r):.2f}x" for r in per_run.values())
            rows.append(
                f"| {dataset} | {thread_count} | {batch} | {backend} | {medians} | {statistics.median(pooled):.2f}x "
                f"({len(pooled)} rounds, {min(pooled):.2f}-{max(pooled):.2f}) | >= {goal}x | "
                f"{'met' if statistics.median(pooled) >= goal else 'not met'} |"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="inference.json files of runs of the same code.")
    parser.add_argument("--dataset", required=True, choices=("tweets", "mnist"))
    parser.add_argument("--backends", nargs="+", default=["ftpeft", "onnx_int8"], choices=("ftpeft", "onnx_int8"))
    args = parser.parse_args(argv)
    runs = {str(path): json.loads(path.read_text())["passes"] for path in args.runs}
    print("\n".join(pooled_rows(runs, args.dataset, args.backends)))


if __name__ == "__main__":
    main()
