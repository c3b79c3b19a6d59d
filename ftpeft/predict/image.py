"""Predictor over images: a saved timm model with its own evaluation transform (from its pretrained_cfg)."""

from __future__ import annotations

import numpy as np
import torch

from ftpeft.predict.inputs import ImageInput, read_image
from ftpeft.predict.runs import SavedRun
from ftpeft.predict.text import model_scores, run_target


class ImagePredictor:
    """A timm classifier + its eval transform (resize, centre crop, the model's normalisation)."""

    modality = "image"

    def __init__(self, model, transform, label_names: list[str], device, target=None):
        self.model, self.transform, self.device = model.to(device).eval(), transform, device
        self.label_names, self.target = label_names, target
        self.files: list[str] = []

    def prepare(self, inputs: ImageInput, text_columns: list[str] | None) -> None:
        self.files = inputs.files

    @torch.inference_mode()  # as pipeline() runs: no autograd version counters per op
    def probabilities(self, indices: list[int]) -> np.ndarray:
        from ftpeft.vision.data import pixel_batch

        pixels = pixel_batch(self.transform, [read_image(self.files[i]) for i in indices]).to(self.device)
        return model_scores(self.model(pixels), self.target)


def load_image_predictor(run: SavedRun, device) -> ImagePredictor:
    """``timm.create_model("local-dir:RUN", pretrained=True)``; the transform is the one the run evaluated with."""
    from timm.data import create_transform, resolve_data_config

    from ftpeft.core.artifacts import read_json_file
    from ftpeft.vision.models import create_timm_model

    config = read_json_file(run.model_dir / "config.json", "a timm model")
    model = create_timm_model(f"local-dir:{run.model_dir}", None, pretrained=True)
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    names = config.get("label_names") or model.pretrained_cfg.get("label_names")
    label_names = [str(n) for n in names] if names else [str(i) for i in range(model.num_classes)]
    return ImagePredictor(model, transform, label_names, device, run_target(run, label_names))
