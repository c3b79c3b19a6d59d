"""Cheap classifiers on cached features: scikit-learn heads (saved with skops) and torch linear/MLP heads.

    from ftpeft import load_sklearn_head, attach_head
    clf = load_sklearn_head("outputs/train_head/head.skops")     # trusted types checked: sklearn/numpy only
    model = attach_head("outputs/train_head")                      # timm backbone + trained torch head

A torch head trained on a single timm backbone's pre-logit features drops into that backbone's
classifier slot, so backbone + head is a complete timm model whose logits equal head(features).
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ftpeft.core.errors import FtpeftError
from ftpeft.core.outputs import atomic_write_text
from ftpeft.labels.target import MULTI_LABEL, REGRESSION, SINGLE_LABEL, Target

SKLEARN_HEADS = ("logreg", "linear_svm", "random_forest", "hist_gb", "ridge")
TORCH_HEADS = ("linear", "mlp")
CLASSIFIERS = ("logreg", "linear_svm", "random_forest", "hist_gb")
HEADS_BY_PROBLEM_TYPE = {
    SINGLE_LABEL: (*CLASSIFIERS, *TORCH_HEADS),
    MULTI_LABEL: (*CLASSIFIERS, *TORCH_HEADS),  # scikit-learn ones one-vs-rest: one binary classifier per label
    REGRESSION: ("ridge", *TORCH_HEADS),
}
SKOPS_FILE = "head.skops"
TORCH_FILE = "head.safetensors"
HEAD_CONFIG_FILE = "head_config.json"
TRUSTED_PREFIXES = ("sklearn.", "numpy.")
# the values tried on the validation split when the flag is not given: C (logreg, linear_svm), alpha (ridge)
REGULARIZATION_GRID = {
    "logreg": (0.01, 0.03, 0.1, 0.3, 1.0),
    "linear_svm": (0.001, 0.003, 0.01, 0.03, 0.1),
    "ridge": (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0),
}
# what the choice on validation maximises (rmse: minimises), by problem type: threshold-free for label sets
VALIDATION_METRIC = {SINGLE_LABEL: "accuracy", MULTI_LABEL: "map", REGRESSION: "rmse"}


def check_head_fits(head: str, target: Target) -> None:
    """Refuse, before any fitting, a head the problem type has none of (e.g. a tree head for numbers)."""
    fitting = HEADS_BY_PROBLEM_TYPE[target.problem_type]
    if head not in fitting:
        raise FtpeftError(f"--head {head} does not fit {target.short_name} features; use one of {', '.join(fitting)}.")


def build_sklearn_head(head: str, args, target: Target | None = None):
    """An unfitted scikit-learn head; linear ones standardise the features first. For label sets the classifier is
    wrapped one-vs-rest (one binary classifier per label, ``predict_proba`` per label)."""
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = _sklearn_estimator(head, args)
    if target is not None and target.is_multi_label:
        estimator = OneVsRestClassifier(estimator)
    return make_pipeline(StandardScaler(), estimator) if head in REGULARIZATION_GRID else estimator


def _sklearn_estimator(head: str, args):
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.svm import LinearSVC

    if head == "logreg":
        return LogisticRegression(C=args.regularization_c or 1.0, max_iter=args.max_iter)
    if head == "linear_svm":  # small C + dual solver: seconds, not minutes, on 1,280-d features
        return LinearSVC(C=args.regularization_c or 0.01, dual=True, max_iter=args.max_iter)
    if head == "ridge":
        return Ridge(alpha=args.regularization_alpha or 1.0)
    if head == "random_forest":
        return RandomForestClassifier(n_estimators=args.n_estimators, random_state=args.seed, n_jobs=1)
    if head == "hist_gb":
        return HistGradientBoostingClassifier(
            max_iter=args.max_iter if args.max_iter < 1000 else 200, random_state=args.seed
        )
    raise FtpeftError(f"--head {head}: not a scikit-learn head ({', '.join(SKLEARN_HEADS)}).")


def fit_sklearn_head(
    head: str, args, train: tuple, validation: tuple | None, target: Target | None = None
) -> tuple[object, dict]:
    """Fit a scikit-learn head. For logreg / linear_svm without --regularization_c (ridge without
    --regularization_alpha), the value is chosen on validation from REGULARIZATION_GRID by the problem type's
    VALIDATION_METRIC: accuracy, mAP (label sets: threshold-free, so thresholds are chosen afterwards, for the chosen
    head) or RMSE (numbers). A tie goes to the stronger regularisation. The returned dict says what was chosen and
    each value's score ({} when nothing was chosen)."""
    target = target or Target(SINGLE_LABEL)
    flag, name = ("regularization_alpha", "alpha") if head == "ridge" else ("regularization_c", "c")
    if head not in REGULARIZATION_GRID or getattr(args, flag) is not None or validation is None:
        return build_sklearn_head(head, args, target).fit(*train), {}
    metric = VALIDATION_METRIC[target.problem_type]
    sign = -1.0 if metric == "rmse" else 1.0
    stronger = 1.0 if head == "ridge" else -1.0  # a larger alpha, a smaller C
    fitted, scores = {}, {}
    for value in REGULARIZATION_GRID[head]:
        fitted[value] = build_sklearn_head(head, dataclasses.replace(args, **{flag: value}), target).fit(*train)
        scores[value] = validation_score(fitted[value], validation, target)
    best = max(scores, key=lambda v: (np.nan_to_num(sign * scores[v], nan=-np.inf), stronger * v))
    return fitted[best], {flag: best, f"validation_{metric}_by_{name}": scores}


def validation_score(head, validation: tuple, target: Target) -> float:
    """The problem type's VALIDATION_METRIC of a fitted head on the validation rows."""
    from ftpeft.labels.scores import multi_label_scores, regression_scores

    features, references = validation
    if target.is_single_label:
        return float(np.mean(head.predict(features) == references))
    outputs = head_outputs(head, features, target)
    if target.is_multi_label:
        return multi_label_scores(outputs, references, target.decision_thresholds())["map"]
    return regression_scores(outputs, references, target.names)["rmse"]


def head_outputs(head, features: np.ndarray, target: Target) -> np.ndarray:
    """What a head says of each row under a label-set or numeric target, as ``ftpeft predict`` writes it: per-label
    probabilities (``predict_proba`` per label; the sigmoid of a linear SVM's ``decision_function`` or of a torch
    head's logits: 0.5 is their own cut) or numbers in the target's units (rows x targets)."""
    from ftpeft.labels.scores import sigmoid

    if isinstance(head, nn.Module):
        outputs = torch_head_scores(head, features).astype(np.float64)
        return sigmoid(outputs) if target.is_multi_label else outputs
    if target.is_regression:
        return np.asarray(head.predict(features), dtype=np.float64).reshape(len(features), -1)
    if hasattr(head, "predict_proba"):
        return np.asarray(head.predict_proba(features), dtype=np.float64)
    return sigmoid(head.decision_function(features)).reshape(len(features), -1)


@torch.no_grad()
def head_scores(head, features: np.ndarray, target: Target, num_classes: int) -> np.ndarray:
    """What ``ftpeft predict`` writes for each row (float64): for one class per row the class probabilities --
    ``predict_proba``, or the softmax of a decision function (a binary one's single score s as [0, s]) or of a torch
    head's logits; a class absent from training gets 0 -- else ``head_outputs`` (label probabilities or numbers)."""
    if not target.is_single_label:
        return head_outputs(head, features, target)
    if isinstance(head, nn.Module):
        return softmax(head(torch.from_numpy(features).float()))
    if hasattr(head, "predict_proba"):
        scores = np.asarray(head.predict_proba(features), dtype=np.float64)
    else:
        scores = softmax(torch.from_numpy(two_columns(head.decision_function(features))))
    probabilities = np.zeros((len(features), num_classes))
    probabilities[:, np.asarray(head.classes_, dtype=int)] = scores
    return probabilities


@torch.no_grad()
def softmax(logits: torch.Tensor) -> np.ndarray:
    """Class probabilities in float64 (the CSV keeps every digit)."""
    return torch.softmax(logits.detach().double(), dim=-1).cpu().numpy()


def two_columns(scores: np.ndarray) -> np.ndarray:
    """A binary decision_function gives one score (for the second class): make it [0, score]."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.stack([np.zeros_like(scores), scores], axis=1) if scores.ndim == 1 else scores


def save_sklearn_head(classifier, output_dir: str | Path) -> Path:
    """skops format: no pickle; loading lists every type and refuses any it was not told to trust."""
    import skops.io

    path = Path(output_dir) / SKOPS_FILE
    skops.io.dump(classifier, path)
    return path


def load_sklearn_head(path: str | Path):
    """Load a head.skops, trusting only the sklearn/numpy types it contains (anything else is an error)."""
    import skops.io

    path = Path(path)
    if path.is_dir():
        path = path / SKOPS_FILE
    untrusted = skops.io.get_untrusted_types(file=path)
    foreign = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if foreign:
        raise FtpeftError(f"{path}: refuses to load non-sklearn/numpy types {foreign}.")
    return skops.io.load(path, trusted=untrusted)


def torch_head(head: str, in_features: int, num_classes: int, hidden_size: int = 512) -> nn.Module:
    if head == "linear":
        return nn.Linear(in_features, num_classes)
    if head == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden_size), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden_size, num_classes)
        )
    raise FtpeftError(f"--head {head}: not a torch head ({', '.join(TORCH_HEADS)}).")


def train_torch_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    args,
    target: Target | None = None,
    pos_weight: list[float] | None = None,
) -> nn.Module:
    """AdamW over mini-batches of the cached features (CPU, seconds), with the problem type's loss: cross-entropy
    (classes), BCE with logits (label sets; ``pos_weight`` per label) or MSE on targets standardised by the target's
    training mean and sd (numbers; the scaling is then folded into the output layer: the head gives target units)."""
    torch.manual_seed(args.seed)
    module = torch_head(args.head, features.shape[1], num_classes, args.hidden_size)
    optimizer = torch.optim.AdamW(module.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    steps = args.epochs * -(-len(labels) // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    x = torch.from_numpy(features).float()
    if target is None or target.is_single_label:
        y, loss_function = torch.from_numpy(labels).long(), nn.functional.cross_entropy
    elif target.is_multi_label:
        weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32)
        y = torch.from_numpy(labels).float()
        loss_function = partial(nn.functional.binary_cross_entropy_with_logits, pos_weight=weight)
    else:
        standardised = (labels - np.asarray(target.mean)) / np.asarray(target.std)
        y, loss_function = torch.from_numpy(standardised).float(), nn.functional.mse_loss
    module.train()
    for _ in range(args.epochs):
        for batch in torch.randperm(len(y)).split(args.batch_size):
            loss = loss_function(module(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    module.eval()
    if target is not None and target.is_regression:
        fold_target_scaling(module, target)
    return module


def fold_target_scaling(module: nn.Module, target: Target) -> None:
    """From now on the head's output layer gives the target's units (W' = sd * W, b' = sd * b + mean), as the
    Trainer recipes' saved regression models do (``ftpeft.labels.scaling``)."""
    from ftpeft.labels.scaling import folded_scaling

    with folded_scaling(module, target):
        folded = {name: value.clone() for name, value in module.state_dict().items()}
    module.load_state_dict(folded)


@torch.no_grad()
def torch_head_scores(module: nn.Module, features: np.ndarray) -> np.ndarray:
    return module(torch.from_numpy(features).float()).numpy()


def save_torch_head(module: nn.Module, output_dir: str | Path, config: dict) -> None:
    """head.safetensors + head_config.json (type, sizes, labels and the feature metadata it was trained on)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(Path(output_dir) / TORCH_FILE))
    save_head_config(output_dir, config)


def save_head_config(output_dir: str | Path, config: dict) -> None:
    """head_config.json: the head's type, sizes, labels and the feature metadata (backbones, layer) it was trained on."""
    atomic_write_text(Path(output_dir) / HEAD_CONFIG_FILE, json.dumps(config, indent=2, default=str) + "\n")


def load_torch_head(head_dir: str | Path) -> tuple[nn.Module, dict]:
    from safetensors.torch import load_file

    from ftpeft.core.artifacts import check_safetensors, read_json_file

    again = "train the head again (recipes/train_head.py)"
    config = read_json_file(Path(head_dir) / HEAD_CONFIG_FILE, "a saved head", advice=again)
    check_safetensors(Path(head_dir) / TORCH_FILE, advice=again)
    module = torch_head(config["head"], config["in_features"], config["num_classes"], config.get("hidden_size", 512))
    module.load_state_dict(load_file(str(Path(head_dir) / TORCH_FILE)))
    return module.eval(), config


def attach_head(head_dir: str | Path, backbone: nn.Module | None = None) -> nn.Module:
    """The timm backbone the features came from, with the trained torch head as its classifier.

    ``backbone`` defaults to the one named in the feature metadata (same weights: the checkpoint hash is
    checked). Only for features from one image backbone at its default pre-logits layer.
    """
    module, config = load_torch_head(head_dir)
    if backbone is None:
        backbone = feature_timm_backbone(config, head_dir)
    else:
        check_timm_features(config, head_dir)
    return with_classifier(backbone, module, config["label_names"])


def check_timm_features(config: dict, head_dir: str | Path) -> None:
    """Refuse features that are not one image backbone's pre-logits: no timm classifier slot reads anything else."""
    from ftpeft.features.extract import DEFAULT_IMAGE_LAYER

    meta = config["features"]
    backbones = meta["request"]["backbones"]
    if meta.get("modality") != "image" or len(backbones) != 1 or backbones[0]["layer"] != DEFAULT_IMAGE_LAYER:
        raise FtpeftError(
            f"{head_dir}: a head attaches only to features of one image backbone at its pre-logits layer "
            f"(these come from {[b['model'] for b in backbones]} at {[b['layer'] for b in backbones]})."
        )


def feature_timm_backbone(config: dict, head_dir: str | Path) -> nn.Module:
    """The one timm backbone a head's features came from (head_config.json's ``features``), with the weights they
    had: a changed checkpoint is refused."""
    from ftpeft.features.extract import state_dict_hash
    from ftpeft.vision.models import create_timm_model

    check_timm_features(config, head_dir)
    meta = config["features"]
    info = meta["request"]["backbones"][0]
    if not (info.get("pretrained") or meta["weights_files"][0]):
        torch.manual_seed(meta.get("seed", 42))  # a randomly initialised backbone: re-created as extracted
    backbone = create_timm_model(info["model"], None, info.get("pretrained", False), meta["weights_files"][0])
    if state_dict_hash(backbone) != info["checkpoint_sha256"]:
        raise FtpeftError(f"{head_dir}: the backbone {info['model']} now has other weights than the features used.")
    return backbone


def with_classifier(backbone: nn.Module, module: nn.Module, label_names: list[str]) -> nn.Module:
    """``backbone`` with ``module`` (an nn.Linear, or an MLP) in its classifier slot: its logits are then
    ``module(pre-logits)``; ``pretrained_cfg['label_names']`` names its outputs."""
    backbone.reset_classifier(len(label_names))
    classifier_name = backbone.pretrained_cfg.get("classifier", "fc")
    if isinstance(module, nn.Linear):
        backbone.get_submodule(classifier_name).load_state_dict(module.state_dict())
    else:
        backbone.set_submodule(classifier_name, module)
    backbone.pretrained_cfg = {**backbone.pretrained_cfg, "label_names": list(label_names)}
    return backbone.eval()


def sklearn_parameter_count(classifier) -> int:
    """Fitted numbers in a scikit-learn head (coefficients, or tree nodes), for the card."""
    from sklearn.multiclass import OneVsRestClassifier

    estimator = classifier.steps[-1][1] if hasattr(classifier, "steps") else classifier
    if isinstance(estimator, OneVsRestClassifier):  # label sets: one fitted classifier per label
        return sum(sklearn_parameter_count(one) for one in estimator.estimators_)
    if hasattr(estimator, "coef_"):
        return int(estimator.coef_.size + np.size(estimator.intercept_))
    if hasattr(estimator, "estimators_"):
        return int(sum(tree.tree_.node_count for tree in np.ravel(estimator.estimators_) if hasattr(tree, "tree_")))
    return int(sum(p.get_n_leaf_nodes() for row in getattr(estimator, "_predictors", []) for p in row))


def report_predictions(
    output_dir: str | Path, predictions: dict, label_names: list[str], extra: dict | None = None
) -> dict:
    """{split: (predicted ids, true ids)} -> metrics.json, confusion_matrix.png, classification_report.md.

    The same files as ftpeft.core.lifecycle.evaluate_and_report writes for Trainer runs; figures use test if present.
    """
    from ftpeft.core.lifecycle import write_classification_reports
    from ftpeft.core.metrics import make_compute_metrics

    compute = make_compute_metrics(label_names)
    metrics = dict(extra or {})
    for split, (predicted, references) in predictions.items():
        one_hot = np.eye(len(label_names))[np.asarray(predicted)]  # compute_metrics takes scores
        prefix = "eval" if split == "validation" else split
        scores = compute(type("Prediction", (), {"predictions": one_hot, "label_ids": np.asarray(references)}))
        metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
    split = "test" if "test" in predictions else "validation"
    predicted, references = predictions[split]
    prefix = "eval" if split == "validation" else split
    write_classification_reports(output_dir, metrics, references, predicted, label_names, prefix)
    return metrics
