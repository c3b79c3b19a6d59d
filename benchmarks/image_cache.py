"""Does --cache_frozen pay for images? Last-2 stages of EfficientNet-Lite0 on MNIST, cached against uncached.

    python benchmarks/image_cache.py              # 2 pairs x 2 epochs on the offline demo, ~10 min on 2 CPU cores
    python benchmarks/image_cache.py --pairs 3    # more pairs, for a steadier ratio
    python benchmarks/image_cache.py --threads 1  # one torch thread per run (a machine other jobs share)
    python benchmarks/image_cache.py --quick      # smoke run: timm's test_resnet at 32 px, a few steps

Each run is `python recipes/image_cls.py --unfreeze_last 2 --num_train_epochs 2` on the offline demo (4,000
MNIST digits at 64 px, 10% held out, 1,000 fixed test digits), in its own process, with the same seed;
uncached and cached runs alternate so drift on a shared machine hits both. Every cached run builds its
cache afresh (a new --activation_cache_dir). Epoch 2 is compared: epoch 1 of an uncached run pays one-off
start-up costs. The cached run trains on the evaluation transform (no augmentation), so accuracy is
reported beside the speed. Writes benchmarks/results/image_cache.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from run_benchmarks import Case, machine_description, parse_benchmark_args, run_case

EPOCHS = 2
SEED = "42"
TARGET_RATIO = 1.5  # issue 12: epoch 2 of last-2 stages >= 1.5x the uncached samples/s
ACCURACY_TOLERANCE = 0.01  # ... with test accuracy within 1 point


def case(cached: bool, cache_dir: Path) -> Case:
    args = ["--unfreeze_last", "2", "--num_train_epochs", str(EPOCHS), "--seed", SEED]
    if cached:
        args += ["--cache_frozen", "--activation_cache_dir", str(cache_dir)]
    name = "--unfreeze-last 2 --cache_frozen" if cached else "--unfreeze-last 2"
    return Case(name, "recipes/image_cls.py", args, epochs=EPOCHS, group="image")


def epoch_rate(row: dict) -> float:
    """Samples/s of the last epoch: the training images per epoch over that epoch's wall time."""
    images = row["train_samples_per_second"] * row["train_runtime_s"] / row["epochs"]
    return round(images) / row["last_epoch_seconds"]


def summarise(pairs: list[tuple[dict, dict]]) -> dict:
    ratios = [epoch_rate(cached) / epoch_rate(plain) for plain, cached in pairs]
    wall = [cached["process_wall_s"] / plain["process_wall_s"] for plain, cached in pairs]
    accuracy = {
        "uncached": statistics.mean(plain["test_accuracy"] for plain, _ in pairs),
        "cached": statistics.mean(cached["test_accuracy"] for _, cached in pairs),
    }
    return {
        "epoch2_ratios": ratios,
        "epoch2_ratio_mean": statistics.mean(ratios),
        "process_wall_ratios": wall,
        "test_accuracy_mean": accuracy,
        "accuracy_difference": accuracy["cached"] - accuracy["uncached"],
        "speed_goal_met": min(ratios) >= TARGET_RATIO,
        "accuracy_goal_met": round(abs(accuracy["cached"] - accuracy["uncached"]), 6) <= ACCURACY_TOLERANCE,
    }


def table(pairs: list[tuple[dict, dict]], summary: dict, command: str, machine: str) -> str:
    setting = (
        f"Command: `{command}` ({machine}). Each run: `python recipes/image_cls.py --unfreeze_last 2 "
        f"--num_train_epochs {EPOCHS} --seed {SEED}` on the offline demo (4,000 MNIST digits at 64 px, 10% held out, "
        "1,000 fixed test digits), own process, uncached and cached alternating; every cached run builds its cache "
        "afresh. Epoch-2 samples/s = training images / epoch-2 wall time. Process wall includes start-up, caching "
        "and the test evaluation."
    )
    if "--quick" in command:
        setting = f"Command: `{command}`: a smoke run (timm's test_resnet at 32 px, 2 steps); its timings mean nothing."
    lines = [
        "# --cache_frozen for images: last-2 stages of EfficientNet-Lite0 on MNIST",
        "",
        setting,
        "",
        "| pair | run | epoch 1 s | epoch 2 s | epoch-2 samples/s | epoch-2 ratio | process wall s | test acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, (plain, cached) in enumerate(pairs, start=1):
        for row in (plain, cached):
            lines.append(
                f"| {number} | {row['case']} | {row['first_epoch_seconds']:.1f} | {row['last_epoch_seconds']:.1f} | "
                f"{epoch_rate(row):.0f} | {epoch_rate(row) / epoch_rate(plain):.2f}x | {row['process_wall_s']:.0f} | "
                f"{row['test_accuracy']:.4f} |"
            )
    accuracy = summary["test_accuracy_mean"]
    ratios = ", ".join(f"{r:.2f}x" for r in summary["epoch2_ratios"])
    speed = f"goal >= {TARGET_RATIO}x in every pair: {'met' if summary['speed_goal_met'] else 'NOT met'}"
    points = f"{100 * summary['accuracy_difference']:+.1f} points"
    quality = f"goal within {100 * ACCURACY_TOLERANCE:.0f}: {'met' if summary['accuracy_goal_met'] else 'NOT met'}"
    walls = ", ".join(f"{r:.2f}x" for r in summary["process_wall_ratios"])
    lines += [
        "",
        f"- epoch 2, cached / uncached samples/s: {ratios} (mean {summary['epoch2_ratio_mean']:.2f}x; {speed}).",
        f"- test accuracy: uncached {accuracy['uncached']:.4f}, cached {accuracy['cached']:.4f} ({points}; {quality});"
        + " the cached runs train without augmentation (evaluation transform).",
        f"- whole process, cached / uncached wall time: {walls}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--pairs", type=int, default=2)
    own.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    known, rest = own.parse_known_args(argv)
    pairs = known.pairs
    args, env = parse_benchmark_args(__doc__, rest)
    if known.threads:
        env["OMP_NUM_THREADS"] = str(known.threads)
    threads = env.get("OMP_NUM_THREADS", "all")
    machine = machine_description(f"{threads} torch thread(s) per run")
    command = "python benchmarks/image_cache.py" + (" --quick" if args.quick else "") + f" --pairs {pairs}"
    command += f" --threads {known.threads}" if known.threads else ""
    results: list[tuple[dict, dict]] = []
    with tempfile.TemporaryDirectory(prefix="ftpeft-image-cache-") as workdir:
        for number in range(pairs):
            cache_dir = Path(workdir) / f"cache_{number}"
            plain, cached = (
                run_case(case(on, cache_dir), Path(workdir), args.quick, None, env) for on in (False, True)
            )
            results.append((plain, cached))
            print(f"pair {number + 1}: epoch-2 ratio {epoch_rate(cached) / epoch_rate(plain):.2f}x, "
                  f"test acc {plain['test_accuracy']:.4f} -> {cached['test_accuracy']:.4f}", flush=True)  # fmt: skip
    summary = summarise(results)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = "image_cache_quick" if args.quick else "image_cache"
    data = {"command": command, "machine": machine, "pairs": [{"uncached": p, "cached": c} for p, c in results]}
    data["summary"] = summary
    (args.results_dir / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    path = args.results_dir / f"{stem}.md"
    path.write_text(table(results, summary, command, machine))
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
