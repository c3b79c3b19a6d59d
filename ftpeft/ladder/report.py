"""Choosing on validation and writing the ladder: ladder.json, ladder.md, ladder.png and the recommendation."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftpeft.core.metrics import metric_spec
from ftpeft.core.outputs import atomic_write_text, write_json

MIN_TOLERANCE = 0.005  # half a point
SMALL_DATA_PER_CLASS = 1000  # below this many training rows per class the write-up's "small data" cases apply


@dataclasses.dataclass
class RungRow:
    """One rung over its seeds: what it scored on validation (chooses) and test (shown), and what it cost."""

    name: str
    what: str
    command: str
    status: str  # done | skipped | failed
    reason: str = ""
    val_accuracy: list[float] = dataclasses.field(default_factory=list)
    val_macro_f1: list[float] = dataclasses.field(default_factory=list)
    test_accuracy: list[float] = dataclasses.field(default_factory=list)
    train_seconds: list[float] = dataclasses.field(default_factory=list)
    trainable_params: int | None = None
    peak_rss_mb: float | None = None
    estimated_seconds: float | None = None
    # --num_train_epochs auto: per seed, whether validation stopped improving (None: a fixed epoch count), the epoch
    # of the best evaluation (what the saved model is) and the epoch it stopped at
    converged: list[bool | None] = dataclasses.field(default_factory=list)
    best_epoch: list[float] = dataclasses.field(default_factory=list)
    stopped_epoch: list[float] = dataclasses.field(default_factory=list)
    stop_note: str = ""  # why a seed stopped before converging (the ladder's budget, or the epoch cap)
    # label sets and numbers: every validation/test metric of the problem type, one value per seed
    val_scores: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    test_scores: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def comparable(self) -> bool:
        """Finished, and trained to its own stopping point (or to the epoch count asked for): its score is that
        strategy's. A rung cut by the budget or the cap before it converged is shown, never compared."""
        return self.status == "done" and all(flag is not False for flag in self.converged)

    def mean(self, key: str) -> float | None:
        values = getattr(self, key)
        return statistics.mean(values) if values else None

    def sd(self, key: str) -> float | None:
        values = getattr(self, key)
        return statistics.stdev(values) if len(values) > 1 else None

    def score(self, metric: str) -> float | None:
        """The mean validation ``metric`` over seeds."""
        values = self.val_scores.get(metric) or getattr(self, f"val_{metric}", None) or []
        return statistics.mean(values) if values else None

    def test_score(self, metric: str) -> tuple[float | None, float | None]:
        """The mean test ``metric`` over seeds and its sd (None with one seed)."""
        values = self.test_scores.get(metric) or getattr(self, f"test_{metric}", None) or []
        return (statistics.mean(values) if values else None), (statistics.stdev(values) if len(values) > 1 else None)

    def add_scores(self, scores: dict[str, float], prefix: str) -> None:
        """One seed's metrics (``eval_*`` or ``test_*`` keys of a run) into val_scores or test_scores."""
        kept = self.val_scores if prefix == "eval" else self.test_scores
        for key, value in scores.items():
            if key.startswith(f"{prefix}_") and isinstance(value, (int, float)):
                kept.setdefault(key.removeprefix(f"{prefix}_"), []).append(float(value))

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "what": self.what,
            "status": self.status,
            "reason": self.reason,
            "val_accuracy": self.mean("val_accuracy"),
            "val_accuracy_sd": self.sd("val_accuracy"),
            "val_macro_f1": self.mean("val_macro_f1"),
            "test_accuracy": self.mean("test_accuracy"),
            "test_accuracy_sd": self.sd("test_accuracy"),
            "train_seconds": self.mean("train_seconds"),
            "trainable_params": self.trainable_params,
            "peak_rss_mb": self.peak_rss_mb,
            "estimated_seconds": self.estimated_seconds,
            "seeds": max(len(self.val_accuracy), *(len(v) for v in self.val_scores.values()), 0),
            "val_scores": {k: statistics.mean(v) for k, v in self.val_scores.items()},
            "test_scores": {k: statistics.mean(v) for k, v in self.test_scores.items()},
            "converged": self.converged,
            "comparable": self.comparable,
            "best_epoch": self.mean("best_epoch"),
            "stopped_epoch": self.mean("stopped_epoch"),
            "stop_note": self.stop_note,
            "command": self.command,
        }


def default_tolerance(best: float, n_val: int, metric: str = "accuracy", bootstrap_se: float | None = None) -> float:
    """A share (accuracy, macro-F1 of one class per row): the larger of half a point and one binomial standard error
    of the best score on the validation size. Any other metric (mAP, RMSE, ...): one bootstrap standard error of the
    best rung's score over its validation rows (``bootstrap_se``; 0 where unknown: the best rung alone)."""
    if not metric_spec(metric, "--metric").share or bootstrap_se is not None:
        return bootstrap_se or 0.0
    return max(MIN_TOLERANCE, math.sqrt(max(best * (1 - best), 0.0) / max(n_val, 1)))


def goodness(row: RungRow, metric: str) -> float:
    """The row's validation score, signed so that larger is better (the metric registry gives the direction)."""
    return row.score(metric) if metric_spec(metric, "--metric").greater_is_better else -row.score(metric)


def choose(
    rows: list[RungRow],
    metric: str,
    n_val: int,
    tolerance: float | None,
    bootstrap_se: Callable[[RungRow], float | None] | None = None,
) -> tuple[RungRow | None, float]:
    """The cheapest comparable rung within ``tolerance`` of the best VALIDATION score (test is never read here);
    a rung that stopped before it converged is not a candidate. ``bootstrap_se(best row)`` gives the noise of a
    metric that is not a share (``default_tolerance``)."""
    done = [row for row in rows if row.comparable and row.score(metric) is not None]
    if not done:
        return None, tolerance or MIN_TOLERANCE
    best = max(done, key=lambda row: goodness(row, metric))
    if tolerance is None:
        se = bootstrap_se(best) if bootstrap_se is not None else None
        tolerance = default_tolerance(best.score(metric), n_val, metric, se)
    near = [row for row in done if goodness(row, metric) >= goodness(best, metric) - tolerance - 1e-12]
    return min(near, key=lambda row: (row.mean("train_seconds"), -goodness(row, metric))), tolerance


def pareto(rows: list[RungRow], metric: str) -> list[RungRow]:
    """Comparable rungs that no other rung beats on both validation score and train time."""
    done = [r for r in rows if r.comparable]

    def beats(o: RungRow, r: RungRow) -> bool:
        better, cheaper = goodness(o, metric) - goodness(r, metric), r.mean("train_seconds") - o.mean("train_seconds")
        return better >= 0 and cheaper >= 0 and (better > 0 or cheaper > 0)

    return [r for r in done if not any(beats(o, r) for o in done)]


def scenario(
    recommended: RungRow, rows: list[RungRow], metric: str, per_class: float, probe_from_top: int, tolerance: float
) -> str:
    """The write-up's scenario that the figures point to, with the figures."""
    size = "small" if per_class < SMALL_DATA_PER_CLASS else "large"
    done = {r.name: r for r in rows if r.comparable}  # the scenario is read from converged rungs only
    head = done.get("head_only") or done.get("probe_head")
    best = max(done.values(), key=lambda r: goodness(r, metric))
    gap = (goodness(best, metric) - goodness(head, metric)) * 100 if head else None
    if recommended.name in ("probe_head", "head_only"):
        case = (
            "earlier-layer features (different domain)"
            if probe_from_top > 0 and recommended.name == "probe_head"
            else "a head on frozen features (similar domain)"
        )
    elif recommended.name.startswith("last_k"):
        case = "fine-tune the top layers (similar domain, enough data)"
    else:
        case = "fine-tune everything (different domain, enough data)"
    facts = [
        (
            f"{per_class:,.0f} training rows per class ({size} data by the write-up's rule of thumb, < "
            f"{SMALL_DATA_PER_CLASS:,} = small)"
        ),
        f"the best probe layer sits {probe_from_top} below the top",
    ]
    if gap is not None and metric_spec(metric, "--metric").share:
        facts.append(f"{head.name} trails the best rung by {gap:.1f} points (tolerance {tolerance * 100:.1f})")
    elif gap is not None:
        facts.append(f"{head.name} trails the best rung by {gap / 100:.4f} {metric} (tolerance {tolerance:.4f})")
    return f"scenario: {case}; " + "; ".join(facts) + "."


def write_outputs(
    output_dir: Path, rows: list[RungRow], recommended: RungRow | None, tolerance: float, metric: str, extra: dict
) -> None:
    """ladder.json, ladder.md and ladder.png in ``output_dir``."""
    payload = {
        "rungs": [row.as_json() for row in rows],
        "recommended": recommended.name if recommended else None,
        "tolerance": tolerance,
        "metric": metric,
        **extra,
    }
    write_json(output_dir / "ladder.json", payload)
    atomic_write_text(output_dir / "ladder.md", render_markdown(rows, recommended, tolerance, metric, extra))
    save_ladder_plot(output_dir / "ladder.png", rows, recommended, metric)


def _fmt(value: float | None, sd: float | None = None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def render_markdown(
    rows: list[RungRow], recommended: RungRow | None, tolerance: float, metric: str, extra: dict
) -> str:
    share = metric_spec(metric, "--metric").share
    within = f"{tolerance * 100:.2f} points" if share else f"{tolerance:.4f} (one bootstrap standard error)"
    lines = [
        "# Strategy ladder",
        "",
        (
            f"Chosen on validation {metric}: the cheapest rung within {within} of the best. Test is "
            "scored once per run for this table and never used to choose."
        ),
        "",
    ]
    if any(row.val_scores for row in rows):  # label sets or numbers: the choosing metric's columns
        return "\n".join(lines + _target_table(rows, recommended, metric, extra)) + "\n"
    lines += [
        (
            "| rung | what | val accuracy | val macro-F1 | test accuracy | train s | trainable params | process peak RSS MB "
            "| status | command |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        star = " **recommended**" if recommended is row else ""
        status = _status(row)
        params = f"{row.trainable_params:,}" if row.trainable_params is not None else "-"
        rss = f"{row.peak_rss_mb:,.0f}" if row.peak_rss_mb is not None else "-"
        lines.append(
            f"| {row.name}{star} | {row.what} | {_fmt(row.mean('val_accuracy'), row.sd('val_accuracy'))} | "
            f"{_fmt(row.mean('val_macro_f1'))} | {_fmt(row.mean('test_accuracy'), row.sd('test_accuracy'))} | "
            f"{_fmt(row.mean('train_seconds'), digits=1)} | {params} | {rss} | {status} | `{row.command}` |"
        )
    if extra.get("recommendation"):
        lines += ["", extra["recommendation"]]
    lines += ["", "![ladder](ladder.png) ![transfer curve](transfer_curve.png)"]
    return "\n".join(lines) + "\n"


def _status(row: RungRow) -> str:
    status = row.status + (f": {row.reason}" if row.reason else "")
    if row.status == "done" and not row.comparable:
        return f"**not converged** ({row.stop_note}): not compared"
    if row.best_epoch:
        status += f", best epoch {row.mean('best_epoch'):.2g} (stopped {row.mean('stopped_epoch'):.2g})"
    return status


def _target_table(rows: list[RungRow], recommended: RungRow | None, metric: str, extra: dict) -> list[str]:
    """The ladder's rows for label sets and numbers: the choosing metric on validation and test."""
    lines = [
        f"| rung | what | val {metric} | test {metric} | train s | trainable params | status | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        star = " **recommended**" if recommended is row else ""
        test, test_sd = row.test_score(metric)
        params = f"{row.trainable_params:,}" if row.trainable_params is not None else "-"
        lines.append(
            f"| {row.name}{star} | {row.what} | {_fmt(row.score(metric))} | {_fmt(test, test_sd)} | "
            f"{_fmt(row.mean('train_seconds'), digits=1)} | {params} | {_status(row)} | `{row.command}` |"
        )
    if extra.get("recommendation"):
        lines += ["", extra["recommendation"]]
    lines += ["", "![ladder](ladder.png) ![transfer curve](transfer_curve.png)"]
    return lines


def save_ladder_plot(path: Path, rows: list[RungRow], recommended: RungRow | None, metric: str) -> None:
    """Validation score against train time (log x), the Pareto front joined, the recommendation starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.status == "done"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for row in done:
        x, y = max(row.mean("train_seconds"), 1e-2), row.score(metric)
        if not row.comparable:  # hollow, and said so: its score is not that strategy's
            ax.scatter([x], [y], s=40, facecolors="none", edgecolors="grey")
            ax.annotate(f"{row.name} (not converged)", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8,
                        color="grey")  # fmt: skip
            continue
        ax.scatter([x], [y], s=120 if row is recommended else 40, marker="*" if row is recommended else "o")
        ax.annotate(row.name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted(pareto(rows, metric), key=lambda r: r.mean("train_seconds"))
    if len(front) > 1:
        ax.plot([max(r.mean("train_seconds"), 1e-2) for r in front], [r.score(metric) for r in front], "--",
                color="grey", label="Pareto front")  # fmt: skip
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="train seconds (log)", ylabel=f"validation {metric}", title="strategy ladder")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
