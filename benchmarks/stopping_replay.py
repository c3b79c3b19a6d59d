"""On paper: the optimizer steps other patience and cadence settings of ``--num_train_epochs auto`` would have run,
replayed from the stops that ``epochs.py`` measured on the small sets (an epoch of fewer than 50 steps) under the
rule before 2026-12-07: one evaluation per epoch, a patience of 3 (epochs.py's ``auto_p3_epoch`` runs). The replay
chose today's rule for such epochs (2 evaluations per epoch, a patience of 2); its ``auto`` runs are the check.

    python benchmarks/stopping_replay.py      # ~10 s (importing ftpeft), reads results/epochs_runs.jsonl; prints tables

Each measured ``auto_p3_epoch`` run stopped at ``p + cooldown``: ``p`` is the evaluation at which the patience ran out (the last
improvement ``b`` plus ``patience`` evaluations) and the cooldown is ``--auto_cooldown`` (0.2) of ``p``, rounded up
to whole evaluation intervals (``ftpeft.core.stopping.cooldown_length``, which the callback uses). That equation gives each run's ``b``
back from its stop (one ``b`` per stop). The replay keeps ``b`` and applies another patience and interval: it assumes
that the last improvement comes at the same epoch whatever the cadence, which a finer cadence on a noisy validation
set would not keep (more evaluations, more chances of a noisy "improvement"), and it counts steps, not the extra
evaluations' time. It cannot say what test accuracy the shorter runs would reach: only a rerun can.
The reference is the summed steps of each run's fixed epoch count chosen on validation, as in ``epochs.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

from epochs import AUTO_VARIANTS, FIXED_EPOCHS, chosen_fixed

from ftpeft.core.config import RunArguments
from ftpeft.core.stopping import SHORT_EPOCH_STEPS, cooldown_length

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULTS = {field.name: field.default for field in dataclasses.fields(RunArguments)}
COOLDOWN = DEFAULTS["auto_cooldown"]
BASE = "auto_p3_epoch"  # the runs replayed: one evaluation per epoch, the patience its flags give
PATIENCE = int(AUTO_VARIANTS[BASE][AUTO_VARIANTS[BASE].index("--early_stopping_patience") + 1])
FIXED = tuple(str(epochs) for epochs in FIXED_EPOCHS)  # as the runs file spells them
VARIANTS = ((3, 1), (2, 1), (1, 1), (3, 2), (2, 2))  # (patience in evaluations, evaluations per epoch)
MEASURED_VARIANTS = {"auto": (2, 2)}  # epochs.py's settings that ran one of them on these sets: the replay, checked


def stop_step(last_improvement: int, patience: int, eval_steps: int, cap_steps: int) -> int:
    """The step an auto run stops at: patience runs out at ``last_improvement + patience`` evaluations, then the
    cooldown of COOLDOWN of the steps so far, rounded up to whole evaluation intervals."""
    plateau = last_improvement + patience * eval_steps
    return min(plateau + cooldown_length(COOLDOWN, plateau, eval_steps), cap_steps)


def last_improvement_from(stopped: int, epoch_steps: int, cap_steps: int) -> int | None:
    """The step of the last improvement that makes a run evaluated once per epoch stop at ``stopped``; None when no
    improvement step does (a run that reached the cap, or one evaluated at another cadence)."""
    for evaluation in range(1, cap_steps // epoch_steps + 1):
        step = evaluation * epoch_steps
        if stop_step(step, PATIENCE, epoch_steps, cap_steps) == stopped and stopped < cap_steps:
            return step
    return None


def replay(runs: list[dict], data: str, max_epochs: int = 20) -> dict:
    """For one set: the summed steps of each variant against the chosen fixed counts'."""
    ok = [run for run in runs if run["data"] == data and "error" not in run]
    chosen_steps, replayed, unmatched = 0, dict.fromkeys(VARIANTS, 0), []
    for auto in (run for run in ok if run["epochs"] == BASE):
        fixed = [r for r in ok if (r["rung"], r["seed"]) == (auto["rung"], auto["seed"]) and r["epochs"] in FIXED]
        if not fixed:
            continue
        epoch_steps, cap_steps = auto["epoch_steps"], auto["epoch_steps"] * max_epochs
        improvement = last_improvement_from(auto["steps"], epoch_steps, cap_steps)
        if improvement is None:
            unmatched.append(auto["key"])
            continue
        chosen_steps += chosen_fixed(fixed)["steps"]
        for patience, per_epoch in VARIANTS:
            eval_steps = math.ceil(epoch_steps / per_epoch)
            replayed[(patience, per_epoch)] += stop_step(improvement, patience, eval_steps, cap_steps)
    return {
        "set": data,
        "runs": sum(1 for run in ok if run["epochs"] == BASE) - len(unmatched),
        "unmatched": unmatched,
        "ratios": {variant: steps / chosen_steps for variant, steps in replayed.items()} if chosen_steps else {},
    }


def measured(runs: list[dict], data: str, variant: str) -> dict | None:
    """For one set: a setting that epochs.py ran, against BASE and the chosen fixed counts of the same rungs and
    seeds: summed steps and train time, mean test gap, and what the replay predicted for them."""
    ok = [run for run in runs if run["data"] == data and "error" not in run]
    pairs = sorted({(run["rung"], run["seed"]) for run in ok if run["epochs"] == variant})
    rows = []
    for pair in pairs:
        same = {run["epochs"]: run for run in ok if (run["rung"], run["seed"]) == pair}
        fixed = [same[e] for e in FIXED if e in same]
        if fixed and BASE in same:
            rows.append((chosen_fixed(fixed), same[BASE], same[variant]))
    if not rows:
        return None

    def ratio(which: int, field: str) -> float:
        return sum(row[which][field] for row in rows) / sum(row[0][field] for row in rows)

    def test_gap(which: int) -> float:
        return statistics.mean((row[which]["test_accuracy"] - row[0]["test_accuracy"]) * 100 for row in rows)

    kept = {(row[0]["rung"], row[0]["seed"]) for row in rows}
    replayed = replay([run for run in ok if (run["rung"], run["seed"]) in kept], data)
    return {
        "set": data,
        "variant": variant,
        "runs": len(rows),
        "predicted_steps": replayed["ratios"].get(MEASURED_VARIANTS[variant]),
        "steps": (ratio(1, "steps"), ratio(2, "steps")),
        "time": (ratio(1, "train_runtime_s"), ratio(2, "train_runtime_s")),
        "test_gap": (test_gap(1), test_gap(2)),
    }


def render_measured(results: list[dict]) -> str:
    lines = [
        (
            f"| set | setting | runs | replayed steps | steps: {BASE}, setting | train time: {BASE}, setting | "
            f"test gap (points): {BASE}, setting |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        predicted = f"{r['predicted_steps']:.2f}x" if r["predicted_steps"] else "-"
        lines.append(
            f"| {r['set']} | {r['variant']} | {r['runs']} | {predicted} | {r['steps'][0]:.2f}x, {r['steps'][1]:.2f}x | "
            f"{r['time'][0]:.2f}x, {r['time'][1]:.2f}x | {r['test_gap'][0]:+.2f}, {r['test_gap'][1]:+.2f} |"
        )
    return "\n".join(lines)


def render(results: list[dict]) -> str:
    header = " | ".join(f"patience {p}, {k} per epoch" + {(3, 1): " (as measured)", (2, 2): " (today's default)"}.get(
        (p, k), "") for p, k in VARIANTS)  # fmt: skip
    lines = [f"| set | runs | {header} |", "|---|---|" + "---|" * len(VARIANTS)]
    for result in results:
        ratios = " | ".join(f"{result['ratios'][variant]:.2f}x" for variant in VARIANTS)
        lines.append(f"| {result['set']} | {result['runs']} | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    runs_file = Path(argv[0]) if argv else RESULTS / "epochs_runs.jsonl"
    runs = [json.loads(line) for line in runs_file.read_text().splitlines() if line.strip()]
    short = [run for run in runs if run.get("epoch_steps", SHORT_EPOCH_STEPS) < SHORT_EPOCH_STEPS]
    small = sorted({run["data"] for run in short if run["epochs"] == BASE})
    results = [replay(runs, data) for data in small]
    table = render([result for result in results if result["ratios"]])
    print(f"{BASE}'s optimizer steps against the chosen fixed counts', summed per set, replayed:\n\n" + table)
    checked = [m for data in small for v in MEASURED_VARIANTS if (m := measured(runs, data, v))]
    if checked:
        print("\nMeasured (epochs.py --only <setting>), against the chosen fixed counts of the same runs:\n")
        print(render_measured(checked))
    for result in results:
        if result["unmatched"]:
            print(f"{result['set']}: left out (no last improvement gives their stop): {', '.join(result['unmatched'])}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
