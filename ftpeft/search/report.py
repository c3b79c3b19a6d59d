"""What a search leaves in the output dir: hp_search.md (the trials table), hp_search.png, best.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ftpeft.core.errors import redact
from ftpeft.core.outputs import atomic_write_text
from ftpeft.search.space import SearchSpace

REPORT_FILE = "hp_search.md"
PLOT_FILE = "hp_search.png"
BEST_FILE = "best.yaml"
# a rerun of best.yaml trains once, in the dir it is given (a resumed search's own resume is not the settings)
SEARCH_KEYS = ("hp_search", "hp_search_fields", "hp_search_metric", "resume_from_checkpoint")


def best_config(config: dict[str, Any], best_values: dict[str, Any]) -> dict[str, Any]:
    """The run's arguments as given, the search flags dropped, the best trial's values in: ``--config`` reruns it."""
    kept = {key: value for key, value in config.items() if key not in SEARCH_KEYS}
    return {**kept, **best_values}


def write_best_yaml(path: str | Path, config: dict[str, Any], recipe: str, header: str) -> None:
    """best.yaml, opening with the command that reruns it."""
    text = f"# {header}\n# rerun: python recipes/{recipe}.py --config {BEST_FILE} --output_dir OTHER_DIR\n"
    atomic_write_text(path, redact(text + yaml.safe_dump(config, sort_keys=True)))


def _seconds(trial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _last_reported(trial) -> float | None:
    if trial.value is not None:
        return trial.value
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else None


def search_summary(study, space: SearchSpace, metric: str) -> dict[str, Any]:
    """Best trial, its value, the given settings' value (trial 0) and the gain over them."""
    best = study.best_trial
    given = study.trials[0]
    gain = None if given.value is None else best.value - given.value
    return {
        "best_trial": best.number,
        "best_value": best.value,
        "best_values": dict(best.params),
        "given_value": given.value,
        "gain": gain,
        "metric": f"eval_{metric}",
        "trials": len(study.trials),
        "pruned": sum(trial.state.name == "PRUNED" for trial in study.trials),
    }


def write_search_report(output_dir: str | Path, study, space: SearchSpace, metric: str, wall_s: float) -> None:
    """hp_search.md: the space, every trial (state, values, validation metric, steps, seconds), and the plot."""
    output_dir = Path(output_dir)
    summary = search_summary(study, space, metric)
    name = summary["metric"]
    given = "n/a" if summary["given_value"] is None else f"{summary['given_value']:.4f}"
    gain = "n/a (trial 0 was pruned)" if summary["gain"] is None else f"{summary['gain']:+.4f}"
    lines = [
        "# Hyper-parameter search",
        "",
        (
            f"{summary['trials']} Optuna trials ({summary['pruned']} pruned by the median pruner) in {wall_s:.0f} s, "
            f"chosen on the validation split by {name}; the test split is not used."
        ),
        (
            f"Trial 0 is the given settings ({name} {given}); the best is trial {summary['best_trial']} "
            f"({name} {summary['best_value']:.4f}, gain {gain}). Its settings are in {BEST_FILE}; the model in this "
            "folder is a fresh run of them."
        ),
        "",
        "Searched:",
        *(f"- {line}" for line in space.describe()),
        "",
        "| trial | state | " + " | ".join(space.names) + f" | {name} | last step | seconds |",
        "|" + "---|" * (len(space.names) + 5),
    ]
    for trial in study.trials:
        steps = trial.intermediate_values
        cells = [
            str(trial.number) + (" (best)" if trial.number == summary["best_trial"] else ""),
            trial.state.name.lower(),
            *(_shown(trial.params.get(field)) for field in space.names),
            _shown(_last_reported(trial)),
            str(max(steps)) if steps else "",
            "" if _seconds(trial) is None else f"{_seconds(trial):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![trials]({PLOT_FILE})", ""]
    save_search_plot(output_dir / PLOT_FILE, study, name)
    atomic_write_text(output_dir / REPORT_FILE, "\n".join(lines))


def save_search_plot(path: Path, study, metric_name: str) -> None:
    """Left: each trial's validation metric (pruned trials at their last report, the best circled).
    Right: the metric at every evaluation of every trial, where the pruner judged them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_trial, by_step) = plt.subplots(1, 2, figsize=(10, 4))
    best = study.best_trial.number
    for trial in study.trials:
        value = _last_reported(trial)
        if value is None:
            continue
        pruned = trial.state.name == "PRUNED"
        by_trial.scatter(trial.number, value, marker="x" if pruned else "o", color="grey" if pruned else "C0")
        if trial.number == best:
            by_trial.scatter(trial.number, value, s=200, facecolors="none", edgecolors="C3", label="best")
        if trial.intermediate_values:
            steps = sorted(trial.intermediate_values)
            by_step.plot(
                steps, [trial.intermediate_values[s] for s in steps], marker=".", label=f"trial {trial.number}"
            )
    by_trial.set(xlabel="trial (0 = the given settings; x = pruned)", ylabel=metric_name, title="validation, per trial")
    by_step.set(xlabel="step", ylabel=metric_name, title="validation at each evaluation")
    by_trial.legend(loc="best")
    if by_step.lines:
        by_step.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
