"""Synthetic image data for the image/feature tests: JPEGs in the Kaggle CSV layout and as class folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
TINY_MODEL = "test_resnet"  # timm's own test model: 0.37 M parameters, 4 stages, BatchNorm
TINY_ARGS = ["--model_name_or_path", TINY_MODEL, "--image_size", "32"]
CLASSES = ("beagle", "collie", "pug")


def _jpeg(path: Path, class_index: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 60, size=(40, 48, 3)).astype("uint8")
    pixels[..., class_index] += 180  # each class a different dominant colour: learnable in a few steps
    Image.fromarray(pixels).save(path, format="JPEG")


def write_kaggle_layout(root: Path, per_class: int = 6, corrupt: bool = True) -> tuple[Path, Path]:
    """ROOT/labels.csv (id,breed) + ROOT/train/<id>.jpg; one extra listed file is corrupt. Returns (csv, dir)."""
    images = root / "train"
    images.mkdir(parents=True)
    rows = ["id,breed"]
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            image_id = f"{name[:2]}{i:03d}"
            _jpeg(images / f"{image_id}.jpg", c, seed=100 * c + i)
            rows.append(f"{image_id},{name}")
    if corrupt:
        (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
        rows.append("broken,pug")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv", images


def write_class_folders(root: Path, per_class: int = 6, classes=CLASSES) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _jpeg(root / name / f"{i}.jpg", c, seed=1000 + 100 * c + i)
    return root


def subprocess_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


def load_recipe(name: str):
    """Import recipes/<name>.py as a module (recipes are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
