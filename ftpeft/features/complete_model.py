"""A linear head on frozen features, saved with its backbone as one complete model that loads without ftpeft.

    text:  OUTPUT_DIR/transformers_model/   pipeline("text-classification", model=DIR, trust_remote_code=True)
    image: OUTPUT_DIR/timm_model/           timm.create_model("local-dir:DIR", pretrained=True)

Exported: a linear head -- logreg, linear_svm, ridge (their StandardScaler folded into the weights: W' = W / scale,
b' = b - W' @ mean) or the torch linear head -- on the features of ONE backbone: a text encoder read at a hidden state
by index, [CLS] or mean (ftpeft's standalone readout class, ``ftpeft.hub_code.mean_pooling``, with head 'linear'), or
a timm model at its pre-logits (the head in its classifier slot). The model's logits are the head's decision values,
so the stock loader's softmax (one class per row), sigmoid (label sets) or nothing (numbers) gives the scores
``ftpeft predict`` writes for the head; a binary logreg or linear SVM, which has one score z, gives the logits [0, z].

Not exported (ftpeft only: ``ftpeft predict``; the card says which and why): tree heads and MLP heads (not one linear
layer), concatenated backbones (no single model holds them), a non-final timm stage (the classifier slot reads only
the pre-logits) and a text module read by a hook (the readout class reads hidden states by index).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ftpeft.core.errors import FtpeftError
from ftpeft.core.outputs import write_json
from ftpeft.core.settings import SETTINGS_FILE
from ftpeft.features import heads
from ftpeft.features.extract import DEFAULT_IMAGE_LAYER
from ftpeft.labels.target import Target, save_target

TEXT_MODEL_DIR = "transformers_model"
TIMM_MODEL_DIR = "timm_model"
LINEAR_HEADS = ("logreg", "linear_svm", "ridge", "linear")
ABSENT_CLASS_LOGIT = -1e4  # softmax gives a class absent from training exactly 0, as `ftpeft predict` does
FTPEFT_PART = "# the head alone, with ftpeft"  # the card's snippet: the stock loader above this line, ftpeft below
CHECK_TOLERANCE = 1e-4  # the folded layer against the head, on training rows (float32 against float64)


@dataclasses.dataclass
class CompleteModel:
    """What was exported: the folder (None: nothing), the card's one-line note, the stock loading code."""

    folder: Path | None
    note: str
    snippet: str = ""
    library: str | None = None  # the library that loads it (the card's library_name)


def why_not_exported(head: str, features: dict) -> str | None:
    """Why this head on these features (head_config.json's ``features``) has no complete model; None when it has."""
    backbones = features["request"]["backbones"]
    if head not in LINEAR_HEADS:
        return f"--head {head} is {'an MLP' if head == 'mlp' else 'a tree ensemble'}, not one linear layer"
    if len(backbones) != 1:
        return f"the features concatenate {len(backbones)} backbones; no one model holds them"
    layer = str(backbones[0]["layer"])
    if (features.get("modality") or "image") == "image":
        if layer != DEFAULT_IMAGE_LAYER:
            return f"the features come from --layer {layer}, not the pre-logits its classifier slot reads"
    elif not layer.lstrip("-").isdigit():
        return f"the features come from the module --layer {layer} (a hook), not a hidden state by index"
    return None


def linear_layer(head, target: Target, num_classes: int) -> nn.Linear:
    """The head as one linear layer on the raw features: its outputs are the logits the stock loaders turn into
    ``ftpeft predict``'s scores. A head that is not one (a label constant in training) is refused in one line."""
    if isinstance(head, nn.Linear):
        weight, bias = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    else:
        weight, bias = _decision_rows(head, target, num_classes)
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    return layer.eval()


def _decision_rows(head, target: Target, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight [outputs, D], bias [outputs]) in float64 of a scikit-learn linear head, its scaler folded in."""
    steps = [step for _, step in head.steps] if hasattr(head, "steps") else [head]
    scaler, estimator = (steps[0], steps[-1]) if len(steps) > 1 else (None, steps[0])
    if target.is_multi_label:  # one-vs-rest: each label's binary classifier gives that label's score
        rows = []
        for name, one in zip(target.names, estimator.estimators_):
            if not hasattr(one, "coef_"):
                raise FtpeftError(f"label {name!r} was constant in training: its head is a constant, not a layer")
            rows.append((np.ravel(one.coef_), np.ravel(one.intercept_)[0]))
        weight, bias = np.stack([w for w, _ in rows]), np.array([b for _, b in rows])
    elif target.is_regression:
        weight = np.atleast_2d(estimator.coef_)
        bias = np.broadcast_to(np.atleast_1d(estimator.intercept_), weight.shape[:1]).copy()
    else:
        coef, intercept = np.atleast_2d(estimator.coef_), np.atleast_1d(estimator.intercept_)
        if coef.shape[0] == 1:  # binary: one score z for the second class; softmax([0, z]) = [1 - s(z), s(z)]
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
        classes = np.asarray(estimator.classes_, dtype=int)
        weight = np.zeros((num_classes, coef.shape[1]))
        bias = np.full(num_classes, ABSENT_CLASS_LOGIT)
        weight[classes], bias[classes] = coef, intercept
    weight, bias = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    if scaler is not None:  # head(x) = W @ ((x - mean) / scale) + b = (W / scale) @ x + (b - (W / scale) @ mean)
        scale = np.ones(weight.shape[1]) if scaler.scale_ is None else np.asarray(scaler.scale_, dtype=np.float64)
        mean = np.zeros(weight.shape[1]) if scaler.mean_ is None else np.asarray(scaler.mean_, dtype=np.float64)
        weight = weight / scale
        bias = bias - weight @ mean
    return weight, bias


def scores_from_logits(logits: torch.Tensor, target: Target) -> np.ndarray:
    """What a stock loader makes of the logits (float64): softmax, sigmoid (label sets), or the numbers themselves."""
    logits = logits.detach().double()
    if target.is_single_label:
        return torch.softmax(logits, dim=-1).numpy()
    return torch.sigmoid(logits).numpy() if target.is_multi_label else logits.numpy()


@torch.no_grad()
def check_layer(layer: nn.Linear, head, target: Target, num_classes: int, features: np.ndarray) -> None:
    """Refuse a layer whose scores on ``features`` differ from the head's (what ``ftpeft predict`` writes)."""
    expected = heads.head_scores(head, features, target, num_classes)
    got = scores_from_logits(layer(torch.from_numpy(features).float()), target)
    gap = float(np.abs(got - expected).max()) if len(features) else 0.0
    if gap > CHECK_TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0))):
        raise FtpeftError(f"the folded linear layer differs from the head by {gap:.2g} on training rows")


def export_complete_model(
    classifier, head: str, output_dir: str | Path, head_config: dict, target: Target, sample: np.ndarray
) -> CompleteModel:
    """Write OUTPUT_DIR/transformers_model (text) or OUTPUT_DIR/timm_model (image) when the head is linear on one
    backbone's final features (see the module docstring); ``sample``: training rows the folded layer is checked on."""
    features = head_config["features"]
    reason = why_not_exported(head, features)
    if reason is not None:
        return CompleteModel(None, f"No complete model: {reason}; the head runs with ftpeft (`ftpeft predict`).")
    text = features.get("modality") == "text"
    folder = Path(output_dir) / (TEXT_MODEL_DIR if text else TIMM_MODEL_DIR)
    num_classes = len(head_config["label_names"])
    try:
        layer = linear_layer(classifier, target, num_classes)
        check_layer(layer, classifier, target, num_classes, sample)
        if text:
            save_text_model(layer, features, target, folder)
        else:
            save_timm_head_model(layer, head_config, target, folder, output_dir)
    except FtpeftError as error:  # e.g. the backbone's weights changed since extraction
        print(f"warning: no complete model written: {error}")
        return CompleteModel(None, f"No complete model: {error}; the head runs with ftpeft (`ftpeft predict`).")
    info = features["request"]["backbones"][0]
    if text:
        from ftpeft.core.card import text_loading_snippet

        readout = f"hidden state {info['layer']}, {'[CLS]' if info['pooling'] == 'cls' else 'mean'} pooling"
        note = (
            f"Complete model: {folder.name}/ = the encoder, its readout ({readout}) and the head as one linear "
            "layer; it loads without ftpeft (its code, mean_pooling.py, is saved with it)."
        )
        snippet = text_loading_snippet(str(folder), False, remote_code=True, problem_type=target.problem_type)
        return CompleteModel(folder, note, snippet, "transformers")
    note = f"Complete model: {folder.name}/ = {info['model']} with the head as its classifier; timm alone loads it."
    snippet = (
        "import timm\n"
        f'model = timm.create_model("local-dir:{folder}", pretrained=True).eval()  # backbone + head\n'
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))"
    )
    return CompleteModel(folder, note, snippet, "timm")


def save_text_model(layer: nn.Linear, features: dict, target: Target, folder: Path) -> None:
    """The encoder the features came from (weights checked by hash), read as they were read, with ``layer`` as its
    classifier: the readout class's weights, its code, the tokenizer (model_max_length = the extraction's length), the
    target (HF problem_type, thresholds) and resolved_settings.json (that length, for ``ftpeft predict DIR``)."""
    from ftpeft.predict.heads import recreate_backbones
    from ftpeft.text.pooling import wrap_encoder

    backbone = recreate_backbones(features, "cpu")[0]
    info = features["request"]["backbones"][0]
    readout = {"readout_layer": int(info["layer"]), "pooling": info["pooling"], "head": "linear"}
    model = wrap_encoder(backbone.model, info["model"], target.config_fields(), **readout)
    if model.classifier.weight.shape != layer.weight.shape:
        raise FtpeftError(f"the head has {tuple(layer.weight.shape)} weights; the readout takes {model.classifier}")
    model.classifier.load_state_dict(layer.state_dict())
    model.eval().save_pretrained(folder)  # writes mean_pooling.py and auto_map next to the weights
    tokenizer = backbone.transform
    tokenizer.model_max_length = int(info["max_seq_length"])  # pipeline(truncation=True) cuts where extraction did
    tokenizer.save_pretrained(folder)
    save_target(folder, target)
    # `ftpeft predict DIR` reads the length from here (a folder without it gets the length of runs before auto)
    why = "the length the features were extracted at (extract_features --max_seq_length)"
    write_json(
        folder / SETTINGS_FILE, {"max_seq_length": {"given": None, "used": tokenizer.model_max_length, "why": why}}
    )


def save_timm_head_model(layer: nn.Linear, head_config: dict, target: Target, folder: Path, output_dir) -> None:
    """The timm backbone the features came from with ``layer`` in its classifier slot (timm Hub format)."""
    from ftpeft.vision.models import save_timm_model

    backbone = heads.feature_timm_backbone(head_config, output_dir)
    model = heads.with_classifier(backbone, layer, head_config["label_names"])
    transform = head_config["features"]["request"]["backbones"][0]["transform"]
    save_timm_model(model, folder, head_config["label_names"], transform)
    save_target(folder, target)  # its config.json gets the problem type and thresholds
