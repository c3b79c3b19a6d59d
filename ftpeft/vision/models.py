"""timm models for the recipes: creation with clear errors, a Trainer for them, and save/reload as stock timm.

A run's artefact is a plain timm model: ``model.safetensors`` + ``config.json`` in timm's Hub format
(architecture, num_classes, label_names, pretrained_cfg; HF's problem_type and label_thresholds for label sets and
numbers, added by ``ftpeft.labels.target.save_target``), reloadable with
``timm.create_model("local-dir:OUTPUT_DIR", pretrained=True)``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from ftpeft.core.artifacts import check_model_folder, check_safetensors
from ftpeft.core.errors import FtpeftError
from ftpeft.core.trainer import FtpeftTrainer
from ftpeft.vision.convert import DEMO_IMAGE_MODEL, converted_efficientnet_lite0

DEFAULT_IMAGE_MODEL = "resnet50"


def resolve_image_model(model_name: str | None, pretrained_file: str | None, demo: bool) -> tuple[str, str | None]:
    """(timm model name, local weights file). With no model and no data: the packaged EfficientNet-Lite0."""
    if model_name is None and demo:
        return DEMO_IMAGE_MODEL, pretrained_file or str(converted_efficientnet_lite0())
    return model_name or DEFAULT_IMAGE_MODEL, pretrained_file


def create_timm_model(
    name: str,
    num_classes: int | None,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    cache_dir: str | None = None,
    **kwargs,
) -> nn.Module:
    """``timm.create_model`` with a new head of ``num_classes`` (None: keep the pretrained head).

    timm's errors (unknown name, Hub offline, weights that do not fit) become one FtpeftError line.
    """
    import timm

    source, _, _bare = name.rpartition(":")
    if not source and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See timm.list_models()."
        raise FtpeftError(f"--model_name_or_path {name}: unknown timm model.{hint}")
    if source == "local-dir" and Path(name.split(":", 1)[1]).is_dir():  # timm's format: config.json + weights
        check_model_folder(name.split(":", 1)[1])
    overlay = None
    if pretrained_file:
        if not Path(pretrained_file).is_file():
            raise FtpeftError(f"--pretrained_file {pretrained_file}: no such file.")
        if Path(pretrained_file).suffix == ".safetensors":
            check_safetensors(pretrained_file)
        overlay = {"file": str(pretrained_file)}
    try:
        return timm.create_model(
            name,
            pretrained=pretrained or overlay is not None,
            pretrained_cfg_overlay=overlay,
            cache_dir=cache_dir,
            **({} if num_classes is None else {"num_classes": num_classes}),
            **kwargs,
        )
    except Exception as error:  # Hub offline, bad file, wrong architecture for the weights, ...  # noqa: BLE001
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FtpeftError(f"could not create timm model {name} ({type(error).__name__}: {message[:300]})") from None


class ImageClassificationTrainer(FtpeftTrainer):
    """FtpeftTrainer for a plain timm model: batches are {"pixel_values", "labels"}; the loss of the problem type
    (cross-entropy, BCE for label sets, MSE for numbers: ``FtpeftTrainer.classification_loss``).

    ``input_name`` is the batch key fed to the model (``boundary_states`` when training from the cache).
    """

    def __init__(self, *args, input_name: str = "pixel_values", **kwargs):
        super().__init__(*args, keep_all_columns=True, **kwargs)  # forward(x)'s signature would drop pixel_values
        self.label_names = ["labels"]  # timm's forward(x) has no 'labels' argument to detect
        self.input_name = input_name

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(inputs[self.input_name])
        loss = self.classification_loss(logits, inputs["labels"])  # --class_weights, --pos_weight
        return (loss, {"logits": logits}) if return_outputs else loss


def save_timm_model(
    model: nn.Module, output_dir: str | Path, label_names: list[str], data_config: dict, state_dict: dict | None = None
) -> None:
    """model.safetensors + config.json (timm Hub format, with label_names and the input size used).

    ``state_dict`` (default ``model.state_dict()``): the full weights, e.g. gathered from FSDP's DTensor shards,
    which safetensors cannot write.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf  # what timm's save_for_hf writes next to the weights

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict() if state_dict is None else state_dict, str(output_dir / "model.safetensors"))
    data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    save_config_for_hf(
        model, output_dir / "config.json", model_config={"label_names": list(label_names)}, data_config=data_config
    )


def image_loading_snippet(output_dir: str, target=None) -> str:
    """The card's loading code: class probabilities (softmax), the label set at the run's thresholds (sigmoid; the
    thresholds are in config.json), or the numbers themselves (the saved head outputs the targets' units)."""
    multi_label = target is not None and target.is_multi_label
    lines = [
        "import json, timm, torch" if multi_label else "import timm, torch",
        "from PIL import Image",
        f'model = timm.create_model("local-dir:{output_dir}", pretrained=True).eval()',
        "config = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**config)",
        "with torch.no_grad():",
        '    logits = model(transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0))[0]',
        'names = model.pretrained_cfg["label_names"]',
    ]
    if multi_label:
        lines += [
            f'thresholds = json.load(open("{output_dir}/config.json"))["label_thresholds"]  # chosen on validation',
            "probabilities = dict(zip(names, logits.sigmoid().tolist()))",
            "print([name for name, p in probabilities.items() if p >= thresholds[name]], probabilities)",
        ]
    elif target is not None and target.is_regression:
        lines += ["values = dict(zip(names, logits.tolist()))  # in the targets' own units", "print(values)"]
    else:
        lines += ["probabilities = dict(zip(names, logits.softmax(-1).tolist()))", "print(probabilities)"]
    return "\n".join(lines)


def zero_init_head(model: nn.Module) -> str:
    """Zero the new classifier so the first steps do not push large random-logit gradients into pretrained
    features (timm's default init gives logits of ~10 on EfficientNet features). Returns its module name."""
    classifier = model.get_classifier()
    with torch.no_grad():
        for param in classifier.parameters():
            param.zero_()
    return next(name for name, module in model.named_modules() if module is classifier)
