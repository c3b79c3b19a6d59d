"""The transfer probe: pooled features from every layer in ONE frozen forward pass, a logistic regression per
layer scored on validation. It shows which depth transfers (the write-up's "earlier-layer features" case).

Text: mean and [CLS] pooling of every hidden state (embeddings = layer 0, then each encoder layer).
Images: the spatial mean of every timm stage (``feature_info``), then the pre-logits features.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROBE_DIR = "probe"
CURVE_FILE = "transfer_curve.png"
TABLE_FILE = "transfer_curve.md"
PROBE_C = 1.0  # the regressions' inverse L2 strength (the probe_head command asks train_head.py for the same)
NEWTON_MAX_UNKNOWNS = 2048  # coefficients up to which the probe solves by Newton's method
MAX_PROBE_TRAIN = 20_000  # rows the per-layer regressions fit on; the pass itself reads every split whole


@dataclasses.dataclass
class ProbeLayer:
    name: str  # "layer 3 (mean)", "stage 2", "pre_logits"
    depth: int  # 0 = embeddings/stem ... num_layers = top
    pooling: str
    val_accuracy: float | None  # one class per row (None for label sets and numbers: see val_scores)
    val_macro_f1: float | None
    test_accuracy: float | None
    fit_seconds: float
    val_scores: dict[str, float] = dataclasses.field(default_factory=dict)  # every metric of the problem type
    test_scores: dict[str, float] = dataclasses.field(default_factory=dict)
    val_standard_error: float | None = None  # label sets and numbers: the choosing metric's bootstrap SE

    def score(self, metric: str) -> float:
        """Validation ``metric``, signed so that larger is better (the metric registry gives the direction)."""
        from ftpeft.core.metrics import metric_spec

        value = self.val_scores.get(metric, getattr(self, f"val_{metric}", None))
        if value is None:
            raise KeyError(metric)
        return value if metric_spec(metric, "--metric").greater_is_better else -value


@dataclasses.dataclass
class ProbeResult:
    layers: list[ProbeLayer]
    num_layers: int  # encoder layers / stages above the embeddings or stem
    forward_seconds: float  # the one frozen pass over every split
    rows: int  # rows that pass read
    feature_dims: dict[str, Any]  # "hidden" (text) or per-stage "widths" and "stage_modules" (images)

    @property
    def seconds_per_row(self) -> float:
        return self.forward_seconds / max(self.rows, 1)

    def best(self, metric: str) -> ProbeLayer:
        # ties go to the deeper layer: it needs no extra cut of the network
        return max(self.layers, key=lambda layer: (layer.score(metric), layer.depth))


def _batches(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


@torch.no_grad()
def text_layer_features(
    model, tokenized_split, collator, batch_size: int, on_batch: Callable[[int, tuple], None] | None = None
) -> dict[str, np.ndarray]:
    """{'mean': [N, L+1, D], 'cls': [N, L+1, D]} from one forward pass with every hidden state.

    ``on_batch(first row, hidden states)`` sees each batch's hidden states too (the ladder caches some of them).
    """
    from ftpeft.features.extract import pool

    model.eval()
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in tokenized_split.column_names]
    rows = tokenized_split.select_columns(columns)
    means, firsts = [], []
    for part in _batches(len(rows), batch_size):
        batch = collator([rows[i] for i in range(part.start, part.stop)])
        hidden = model(**batch, output_hidden_states=True).hidden_states
        if on_batch is not None:
            on_batch(part.start, hidden)
        mask = batch.get("attention_mask")
        means.append(torch.stack([pool(h, "mean", mask) for h in hidden], 1).float().numpy())
        firsts.append(torch.stack([pool(h, "cls") for h in hidden], 1).float().numpy())
    return {"mean": np.concatenate(means), "cls": np.concatenate(firsts)}


@torch.no_grad()
def image_stage_features(model, images, batch_size: int) -> dict[str, np.ndarray]:
    """{'mean': [N, S+1, ...]} per stage (spatial mean, zero-padded to the widest stage) + pre-logits."""
    from ftpeft.features.extract import pool

    model.eval()
    stages = [info["module"] for info in model.feature_info]
    per_stage: list[list[np.ndarray]] = [[] for _ in range(len(stages) + 1)]
    for part in _batches(len(images), batch_size):
        pixels = torch.stack([images[i]["pixel_values"] for i in range(part.start, part.stop)])
        boxes = []
        with _captures(model, stages, boxes):
            features = model.forward_features(pixels)
        for index, box in enumerate(boxes):
            per_stage[index].append(pool(box["output"], "mean").float().numpy())
        per_stage[-1].append(model.forward_head(features, pre_logits=True).flatten(1).float().numpy())
    arrays = [np.concatenate(parts) for parts in per_stage]
    width = max(a.shape[1] for a in arrays)
    padded = np.zeros((arrays[0].shape[0], len(arrays), width), dtype=np.float32)
    for index, array in enumerate(arrays):
        padded[:, index, : array.shape[1]] = array
    return {"mean": padded, "widths": np.array([a.shape[1] for a in arrays])}


class _captures:
    """Forward hooks on several modules at once (``capture`` for one, stacked)."""

    def __init__(self, model, names: list[str], boxes: list):
        from contextlib import ExitStack

        from ftpeft.features.extract import capture

        self.stack, self.model, self.names, self.boxes, self.capture = ExitStack(), model, names, boxes, capture

    def __enter__(self):
        for name in self.names:
            self.boxes.append(self.stack.enter_context(self.capture(self.model, name)))
        return self.boxes

    def __exit__(self, *exc):
        return self.stack.__exit__(*exc)


def probe_solver(features: int, classes: int) -> str:
    """The same L2-regularised logistic loss either way: Newton's method converges in a few steps while its
    Hessian ([features x classes]^2) is small (12x faster than lbfgs on MiniLM's 384-d layers), lbfgs beyond."""
    return "newton-cholesky" if features * (1 if classes <= 2 else classes) <= NEWTON_MAX_UNKNOWNS else "lbfgs"


def fit_target_layer(train, val, test, seed: int, target, metric: str) -> tuple[dict, dict, float, float]:
    """Label sets: one-vs-rest logistic regression; numbers: ridge (standardised targets); on standardised features.
    Returns (validation metrics, test metrics, fit seconds, the bootstrap standard error of validation ``metric``);
    thresholds stay at 0.5 (the probe ranks layers by the threshold-free mAP, or by RMSE)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ftpeft.labels.scores import bootstrap_standard_error, target_scores

    start = time.perf_counter()
    x, y = train
    if len(y) > MAX_PROBE_TRAIN:
        keep = np.random.default_rng(seed).choice(len(y), MAX_PROBE_TRAIN, replace=False)
        x, y = x[keep], y[keep]
    if target.is_multi_label:
        head = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=PROBE_C, max_iter=1000)))
        head.fit(x, y.astype(int))

        def outputs(features):  # logits, as a trained model's raw outputs
            p = np.clip(head.predict_proba(features), 1e-7, 1 - 1e-7)
            return np.log(p / (1 - p))
    else:
        head = make_pipeline(StandardScaler(), Ridge(alpha=PROBE_C)).fit(x, y)
        outputs = head.predict
    seconds = time.perf_counter() - start
    val_outputs = outputs(val[0])
    val_scores = target_scores(val_outputs, val[1], target)
    test_scores = target_scores(outputs(test[0]), test[1], target) if test is not None else {}
    return val_scores, test_scores, seconds, bootstrap_standard_error(val_outputs, val[1], target, metric, 100, seed)


def fit_layer(train: tuple[np.ndarray, np.ndarray], val, test, seed: int) -> tuple[float, float, float | None, float]:
    """Standardised logistic regression on one layer: (val accuracy, val macro-F1, test accuracy, fit seconds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    x, y = train
    if len(y) > MAX_PROBE_TRAIN:
        keep = np.random.default_rng(seed).choice(len(y), MAX_PROBE_TRAIN, replace=False)
        x, y = x[keep], y[keep]
    solver = probe_solver(x.shape[1], len(np.unique(y)))
    regression = LogisticRegression(C=PROBE_C, solver=solver, max_iter=1000, random_state=seed)
    classifier = make_pipeline(StandardScaler(), regression)
    classifier.fit(x, y)
    seconds = time.perf_counter() - start
    predicted = classifier.predict(val[0])
    test_accuracy = float(accuracy_score(test[1], classifier.predict(test[0]))) if test is not None else None
    return (
        float(accuracy_score(val[1], predicted)),
        float(f1_score(val[1], predicted, average="macro")),
        test_accuracy,
        seconds,
    )


def probe_layers(
    features: dict[str, dict[str, np.ndarray]],
    labels: dict[str, np.ndarray],
    seed: int,
    target=None,
    metric: str = "accuracy",
) -> list:
    """One regression per (pooling, depth); ``features[split][pooling]`` is [N, depths, D]. ``target`` (a Target):
    label sets and numbers get their own heads and metrics (``fit_target_layer``), and the bootstrap standard error
    of the choosing ``metric``."""
    layers = []
    poolings = [p for p in features["train"] if p != "widths"]
    widths = features["train"].get("widths")
    for pooling in poolings:
        depths = features["train"][pooling].shape[1]
        for depth in range(depths):
            width = int(widths[depth]) if widths is not None else None

            def take(split, depth=depth, width=width, pooling=pooling):
                if split not in features:
                    return None
                return features[split][pooling][:, depth, :width], labels[split]

            if target is not None and not target.is_single_label:
                val_scores, test_scores, seconds, se = fit_target_layer(
                    take("train"), take("validation"), take("test"), seed, target, metric
                )
                layers.append(ProbeLayer("", depth, pooling, None, None, None, seconds, val_scores, test_scores, se))
                continue
            val_acc, val_f1, test_acc, seconds = fit_layer(take("train"), take("validation"), take("test"), seed)
            layers.append(ProbeLayer("", depth, pooling, val_acc, val_f1, test_acc, seconds))
    return layers


def save_transfer_curve(output_dir: Path, result: ProbeResult, modality: str, metric: str) -> None:
    """transfer_curve.png (validation score per depth, one line per pooling) and transfer_curve.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ftpeft.core.outputs import atomic_write_text

    def value(layer: ProbeLayer) -> float:
        return layer.val_scores.get(metric, getattr(layer, f"val_{metric}", None))

    fig, ax = plt.subplots(figsize=(6, 4))
    for pooling in sorted({layer.pooling for layer in result.layers}):
        rows = [layer for layer in result.layers if layer.pooling == pooling]
        ax.plot([r.depth for r in rows], [value(r) for r in rows], "o-", label=f"{pooling} pooling")
    best = result.best(metric)
    ax.axvline(best.depth, color="grey", linestyle=":", label=f"best: {best.name}")
    unit = "stage" if modality == "image" else "layer"
    ax.set(xlabel=f"{unit} (0 = {'stem' if modality == 'image' else 'embeddings'})", ylabel=f"validation {metric}")
    ax.set_title("transfer probe: a linear head on frozen features")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output_dir / CURVE_FILE, dpi=110)
    plt.close(fig)
    lines = [
        "# Transfer probe",
        "",
        f"Logistic regression (standardised features) on each {unit}'s pooled output of the frozen model, from one",
        f"forward pass over every split ({result.rows:,} rows, {result.forward_seconds:.1f} s). Chosen on validation;",
        "test is shown, never used to choose.",
        "",
    ]
    if result.layers and result.layers[0].val_scores:  # label sets (one-vs-rest logistic) or numbers (ridge)
        lines += [f"| depth | features | val {metric} | test {metric} | fit s |", "|---|---|---|---|---|"]
        for layer in sorted(result.layers, key=lambda r: (r.pooling, r.depth)):
            test = layer.test_scores.get(metric)
            mark = " **best**" if layer is best else ""
            test_text = f"{test:.4f}" if test is not None else "-"
            lines.append(
                f"| {layer.depth} | {layer.name}{mark} | {value(layer):.4f} | {test_text} | {layer.fit_seconds:.1f} |"
            )
        atomic_write_text(output_dir / TABLE_FILE, "\n".join(lines) + "\n")
        return
    lines += ["| depth | features | val accuracy | val macro-F1 | test accuracy | fit s |", "|---|---|---|---|---|---|"]
    for layer in sorted(result.layers, key=lambda r: (r.pooling, r.depth)):
        test = f"{layer.test_accuracy:.4f}" if layer.test_accuracy is not None else "-"
        mark = " **best**" if layer is best else ""
        lines.append(
            f"| {layer.depth} | {layer.name}{mark} | {layer.val_accuracy:.4f} | {layer.val_macro_f1:.4f} | {test} | "
            f"{layer.fit_seconds:.1f} |"
        )
    atomic_write_text(output_dir / TABLE_FILE, "\n".join(lines) + "\n")


def name_layers(layers: list[ProbeLayer], num_layers: int, modality: str) -> None:
    for layer in layers:
        if modality == "image":
            layer.name = "pre_logits" if layer.depth == num_layers else f"stage {layer.depth}"
        else:
            where = "embeddings" if layer.depth == 0 else f"layer {layer.depth}"
            layer.name = f"{where} ({layer.pooling})"
