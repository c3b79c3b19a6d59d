"""Learning curves: train loss per logging step, validation metrics per evaluation, LR of every group.

``GroupLearningRates`` records each optimizer group's LR whenever Trainer logs (Trainer's own log has only
the first group's); ``save_learning_curve`` draws the run's log history as ``learning_curve.png``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

CURVE_FILE = "learning_curve.png"


class GroupLearningRates(TrainerCallback):
    """(step, [LR of each optimizer group]) at every logging step."""

    def __init__(self):
        self.history: list[tuple[int, list[float]]] = []

    def on_log(self, args, state, control, optimizer=None, logs=None, **kwargs):
        if optimizer is not None and logs is not None and "loss" in logs:
            self.history.append((state.global_step, [float(group["lr"]) for group in optimizer.param_groups]))


def save_learning_curve(path: str | Path, log_history: list[dict], group_lrs: list[tuple[int, list[float]]]) -> bool:
    """Draw train loss and validation metrics against steps, group LRs on a second axis; False if nothing logged."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    evals = [entry for entry in log_history if "eval_loss" in entry and "step" in entry]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        loss_ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        loss_ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="validation loss")
        for key in ("eval_accuracy", "eval_macro_f1"):
            if key in evals[0]:
                metric_ax.plot([e["step"] for e in evals], [e[key] for e in evals], "o-", label=key[5:])
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    metric_ax.set(xlabel="step", ylabel="score", title="validation")
    if group_lrs:
        lr_ax = loss_ax.twinx()
        steps = [step for step, _ in group_lrs]
        for index in range(len(group_lrs[0][1])):
            lr_ax.plot(steps, [lrs[index] for _, lrs in group_lrs], ":", linewidth=1, label=f"lr group {index}")
        lr_ax.set_ylabel("learning rate (dotted, per group)")
    for ax in (loss_ax, metric_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
