"""Predictor of a cheap head (recipes/train_head.py): the recorded backbones rerun on raw inputs, then the head.

The head's head_config.json keeps the feature metadata: each backbone's model, weights (checked by hash),
layer, pooling and transform. Features are computed as ``ftpeft.features.extract`` computed the cached ones,
concatenated in the same order, and the head scores them by the target saved with it (target.json): for one class
per row ``predict_proba`` of a scikit-learn head (softmax of ``decision_function`` for one without, e.g. linear_svm)
or softmax of a torch head's logits; for label sets one probability per label, for numbers the target's units
(``ftpeft.features.heads.head_scores``: what train_head scored, and what an exported complete model reproduces).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ftpeft.core.errors import FtpeftError
from ftpeft.predict.runs import SavedRun


def recreate_backbones(features: dict, device) -> list:
    """The backbones the features came from, with the weights they had (a changed checkpoint is refused)."""
    from ftpeft.features.extract import DEFAULT_IMAGE_LAYER, Backbone, state_dict_hash

    infos = features["request"]["backbones"]
    weights_files = features.get("weights_files") or [None] * len(infos)
    seed = features.get("seed")
    torch.manual_seed(42 if seed is None else seed)  # randomly initialised backbones come back as extracted
    backbones = []
    for info, weights_file in zip(infos, weights_files):
        if features.get("modality") == "image":
            from timm.data import create_transform

            from ftpeft.vision.models import create_timm_model

            model = create_timm_model(info["model"], None, info.get("pretrained", False), weights_file)
            config = {k: tuple(v) if isinstance(v, list) else v for k, v in info["transform"].items()}
            transform = create_transform(**config, is_training=False)
            layer = None if info["layer"] == DEFAULT_IMAGE_LAYER else info["layer"]
        else:
            model, transform = _text_encoder(info["model"])
            layer = info["layer"]
        if state_dict_hash(model) != info["checkpoint_sha256"]:
            raise FtpeftError(
                f"backbone {info['model']}: its weights differ from those the head's features came from "
                f"(checkpoint hash {info['checkpoint_sha256']}); re-extract the features and retrain the head."
            )
        settings = {k: v for k, v in info.items() if k in ("max_seq_length", "doc_stride")}
        backbones.append(Backbone(info["model"], model.to(device).eval(), layer, info["pooling"], transform, settings))
    return backbones


def _text_encoder(name: str):
    """(AutoModel, tokenizer) of a recorded text backbone; the packaged demo MiniLM is found offline."""
    import importlib.util

    from transformers import AutoModel

    from ftpeft.predict.text import load_tokenizer
    from ftpeft.text.modeling import DEMO_TEXT_MODEL_HUB_ID, DEMO_TEXT_MODEL_PACKAGE, default_text_model_path

    path = name
    if name == DEMO_TEXT_MODEL_HUB_ID and importlib.util.find_spec(DEMO_TEXT_MODEL_PACKAGE) is not None:
        path = default_text_model_path()
    try:
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise FtpeftError(f"backbone {name}: could not load it ({str(error).splitlines()[0]}).") from None
    return model, load_tokenizer(path)


def head_config(run: SavedRun) -> dict:
    """head_config.json; a scikit-learn head saved before it existed: its run's features dir, if still there."""
    from ftpeft.core.artifacts import read_json_file
    from ftpeft.features.extract import METADATA_FILE, resolve_feature_dir
    from ftpeft.features.heads import HEAD_CONFIG_FILE, SKOPS_FILE, TORCH_FILE

    path = run.run_dir / HEAD_CONFIG_FILE
    if path.is_file() or (run.run_dir / TORCH_FILE).is_file():
        config = read_json_file(path, "a saved head", advice="train the head again (recipes/train_head.py)")
        if not isinstance(config.get("features"), dict) or "label_names" not in config:
            raise FtpeftError(f"{path}: no feature metadata or label_names; train the head again.")
        return config
    features_dir = Path(run.setting("features_dir", "outputs/features"))
    try:
        metadata = read_json_file(resolve_feature_dir(features_dir) / METADATA_FILE, "the head's features")
    except FtpeftError:
        raise FtpeftError(
            f"{run.run_dir}: {SKOPS_FILE} without {HEAD_CONFIG_FILE}, and its features dir {features_dir} is gone; "
            "train the head again (recipes/train_head.py), which records the backbones."
        ) from None
    features = {k: metadata.get(k) for k in ("request", "modality", "weights_files", "key", "seed")}
    return {"label_names": metadata["label_names"], "features": features}


class HeadPredictor:
    """Backbones -> concatenated features -> a scikit-learn or torch head; ``target`` says what its outputs are."""

    def __init__(self, backbones: list, head, label_names: list[str], modality: str, device, target=None):
        from ftpeft.labels.target import single_label

        self.backbones, self.head, self.label_names, self.device = backbones, head, label_names, device
        self.modality = modality  # image or text, as extracted
        self.target = target or single_label(label_names)
        self.inputs = None

    def prepare(self, inputs, text_columns: list[str] | None) -> None:
        self.inputs = inputs
        if self.modality == "text":
            from transformers import DataCollatorWithPadding

            from ftpeft.predict.text import choose_text_columns, encode_rows

            columns = choose_text_columns(inputs, None, text_columns)
            self.encoded = [
                (*encode_rows(inputs.rows, b.transform, columns, b.settings["max_seq_length"], b.settings.get("doc_stride")),
                 DataCollatorWithPadding(b.transform))
                for b in self.backbones
            ]  # fmt: skip

    def features(self, indices: list[int]) -> np.ndarray:
        from ftpeft.features.extract import image_features, text_features
        from ftpeft.predict.inputs import read_image
        from ftpeft.vision.data import pixel_batch

        columns = []
        if self.modality == "image":
            images = [read_image(self.inputs.files[i]) for i in indices]
            for backbone in self.backbones:
                pixels = pixel_batch(backbone.transform, images).to(self.device)
                columns.append(image_features(backbone, pixels).float().cpu().numpy())
        else:
            from ftpeft.predict.text import row_logits

            for backbone, (encoded, windows_of, collate) in zip(self.backbones, self.encoded):

                def encoder_features(rows, backbone=backbone, encoded=encoded, collate=collate) -> np.ndarray:
                    batch = collate([encoded[i] for i in rows])
                    batch = {name: value.to(self.device) for name, value in batch.items()}
                    return text_features(backbone, batch).float().cpu().numpy()

                # a text read as windows: the mean of its windows' features, as it was extracted
                columns.append(row_logits(encoder_features, indices, windows_of))
        return np.concatenate(columns, axis=1)

    @torch.inference_mode()  # as pipeline() runs: no autograd version counters per op
    def probabilities(self, indices: list[int]) -> np.ndarray:
        from ftpeft.features.heads import head_scores

        return head_scores(self.head, self.features(indices), self.target, len(self.label_names))


def load_head_predictor(run: SavedRun, device) -> HeadPredictor:
    from ftpeft.features.heads import SKOPS_FILE, load_sklearn_head, load_torch_head

    config = head_config(run)
    if (run.run_dir / SKOPS_FILE).is_file():
        head = load_sklearn_head(run.run_dir / SKOPS_FILE)
    else:
        head, _ = load_torch_head(run.run_dir)
    from ftpeft.predict.text import run_target

    backbones = recreate_backbones(config["features"], device)
    modality = config["features"].get("modality") or "image"
    label_names = [str(n) for n in config["label_names"]]
    target = run_target(run, label_names, run.run_dir)  # target.json; heads saved before it: one class per row
    return HeadPredictor(backbones, head, label_names, modality, device, target)
