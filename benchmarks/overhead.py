"""ftpeft's per-step overhead: full fine-tuning through bert_cls.py against a plain Trainer, alternated in pairs.

    python benchmarks/overhead.py                 # 4 pairs x 100 steps, ~10 min on 2 CPU cores
    python benchmarks/overhead.py --quick         # smoke run: a tiny model, a few steps (the test uses it)

Both sides run the same work: the packaged MiniLM-L6 on the demo tweets, full fine-tuning, one LR (5e-5, no
layer decay, head at the same LR), batch 8, max_seq_length 64, the same number of optimizer steps, no
evaluation or saving during training. The two alternate (plain, ftpeft, plain, ftpeft, ...), each in its own
process with one torch thread, so a slow spell of the machine hits both alike. The figure is Trainer's own train samples/s; the
ratio is taken pair by pair, and the table gives the median ratio with its min and max.
Writes benchmarks/results/overhead.md and .json.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from run_benchmarks import PLAIN_TRAINER_LRS, Case, parse_benchmark_args, run_case, write_sweep_results

PAIRS, STEPS = 4, 100


def cases(steps: int) -> tuple[Case, Case]:
    limit = ["--max_steps", str(steps)]
    return (
        Case("plain Trainer", "benchmarks/plain_trainer.py", limit),
        Case("ftpeft bert_cls.py", "recipes/bert_cls.py", ["--unfreeze_last", "all", *PLAIN_TRAINER_LRS, *limit]),
    )


def write_table(rows: list[dict], command: str, path: Path) -> None:
    ratios = [row["ratio"] for row in rows]
    lines = [
        "# ftpeft overhead: full fine-tuning, ftpeft against a plain Trainer",
        "",
        (
            f"Command: `{command}`. Packaged MiniLM-L6, demo tweets, full FT at one LR (5e-5), batch 8, "
            f"{rows[0]['steps']} optimizer steps per run; the two alternate, each in its own process. Ratio = ftpeft "
            "train samples/s / plain Trainer train samples/s, pair by pair."
        ),
        "",
        "| pair | plain samples/s | ftpeft samples/s | ratio | load average |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['pair']} | {row['plain']:.2f} | {row['ftpeft']:.2f} | {row['ratio']:.3f}x | {row['load_average']} |"
        )
    lines += [
        "",
        (
            f"**Median ratio {statistics.median(ratios):.3f}x** (min {min(ratios):.3f}x, max {max(ratios):.3f}x, "
            f"{len(ratios)} pairs; target >= 0.97x)."
        ),
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv)
    # one thread per run: two OpenMP threads on a core that another job also wants spin at their barriers, and a
    # run slows down several-fold depending on the neighbour, which is what a per-step ratio must not measure
    env["OMP_NUM_THREADS"] = "1"
    pairs, steps = (2, 2) if args.quick else (PAIRS, STEPS)
    plain, ftpeft = cases(steps)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftpeft-overhead-") as workdir:
        for pair in range(1, pairs + 1):
            speeds = {}
            for case in (plain, ftpeft):
                row = run_case(case, Path(workdir), args.quick, args.model_name_or_path, env)
                speeds[case.name] = row["train_samples_per_second"]
            rows.append(
                {
                    "pair": pair,
                    "steps": steps,
                    "plain": speeds[plain.name],
                    "ftpeft": speeds[ftpeft.name],
                    "ratio": speeds[ftpeft.name] / speeds[plain.name],
                    "load_average": round(os.getloadavg()[0], 1),
                }
            )
            print(f"pair {pair}: ratio {rows[-1]['ratio']:.3f}", flush=True)
    return write_sweep_results(args, "overhead", rows, write_table)


if __name__ == "__main__":
    main()
