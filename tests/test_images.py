"""Image data loading, freezing invariants per mode, the image_cls recipe end to end (tiny timm model, 32 px)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from helpers import (
    CLASSES,
    RECIPES,
    TIMM_ARGS,
    TIMM_MODEL,
    load_recipe,
    snapshot,
    subprocess_env,
    write_class_folders,
    write_kaggle_layout,
)

from ftpeft.core.errors import run_cli
from ftpeft.core.freezing import keep_frozen_norms_in_eval, unfreeze_last
from ftpeft.core.param_groups import build_param_groups
from ftpeft.vision.args import ImageDataArguments
from ftpeft.vision.data import SKIPPED_FILE, load_image_classification_data

image_cls = load_recipe("image_cls")


@pytest.fixture
def kaggle(tmp_path):
    return write_kaggle_layout(tmp_path / "kaggle")


# --- data ---------------------------------------------------------------------------------------------------


def test_kaggle_csv_skips_and_lists_corrupt_images(kaggle):
    csv, images = kaggle
    data = load_image_classification_data(ImageDataArguments(labels_csv=str(csv), image_dir=str(images)), seed=0)
    assert data.label_names == list(CLASSES)  # label column guessed: the CSV's only non-id column
    assert len(data.skipped) == 1 and "broken.jpg" in data.skipped[0]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 16, "validation": 2}
    again = load_image_classification_data(ImageDataArguments(labels_csv=str(csv), image_dir=str(images)), seed=0)
    assert again.splits["validation"].items == data.splits["validation"].items  # seeded


def test_class_folders_with_stratified_split(tmp_path):
    root = write_class_folders(tmp_path / "folders", per_class=10)
    data = load_image_classification_data(
        ImageDataArguments(image_dir=str(root), validation_split_percentage=30), seed=1
    )
    assert data.label_names == list(CLASSES) and not data.skipped
    assert sorted(data.splits["validation"].labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    image = data.splits["train"].image(0)
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image_dir", "/no/such/dir"], "--image_dir /no/such/dir: no such directory"),
        (
            ["--labels_csv", "{csv}", "--image_dir", "{images}", "--label_column", "dog"],
            r"--label_column 'dog'.*\['id', 'breed'\]",
        ),
        (
            ["--labels_csv", "{csv}", "--image_dir", "{images}", "--strict_images"],
            "--strict_images: 1 unreadable.*broken.jpg",
        ),
        (
            ["--labels_csv", "{csv}", "--image_dir", "{images}", "--model_name_or_path", "resnet_fifty"],
            "resnet_fifty: unknown timm model",
        ),
        (
            [
                "--labels_csv",
                "{csv}",
                "--image_dir",
                "{images}",
                "--model_name_or_path",
                TIMM_MODEL,
                "--unfreeze_last",
                "9",
            ],
            "--unfreeze_last 9 is larger than the model's 4 layers",
        ),
        (["--image_dir", "{images}", "--labels_csv", "{images}/nope.csv"], "--labels_csv .*nope.csv: no such file"),
    ],
)
def test_bad_input_is_one_clear_error(kaggle, tmp_path, flags, message, capsys):
    csv, images = kaggle
    argv = [f.format(csv=csv, images=images) for f in flags] + [
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "1",
    ]
    before = snapshot(images.parent), snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(image_cls.main)(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.startswith("error: ") and err.strip().count("\n") == 0
    for old, new in zip(before, (snapshot(images.parent), snapshot(tmp_path))):
        assert {path: new.get(path) for path in old} == old  # every file that was there is byte-identical


# --- freezing invariants --------------------------------------------------------------------------------------


def _bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


@pytest.mark.parametrize(
    "k, trained_prefixes",
    [(0, ("fc.",)), (1, ("fc.", "layer4.")), (2, ("fc.", "layer3.", "layer4.")), (None, ("",))],
)
def test_only_intended_parameters_change(k, trained_prefixes):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TIMM_MODEL, num_classes=3)
    unfreeze_last(model, k)
    pinned = keep_frozen_norms_in_eval(model)
    before, stats_before = {n: p.detach().clone() for n, p in model.named_parameters()}, _bn_stats(model)
    optimizer = torch.optim.AdamW(build_param_groups(model, 1e-2, head_lr=1e-2, weight_decay=0.01))
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, param in model.named_parameters():
        should_train = name.startswith(trained_prefixes)
        assert param.requires_grad == should_train, name
        assert (not torch.equal(param, before[name])) == should_train, name
    stats_after = _bn_stats(model)
    for name, value in stats_before.items():
        module = name.rsplit(".", 1)[0]
        assert torch.equal(stats_after[name], value) == (module in pinned), name  # frozen BN: stats untouched
    assert (len(pinned) == 0) == (k is None)


# --- the recipe -------------------------------------------------------------------------------------------------

EXPECTED_FILES = {
    "model.safetensors",
    "config.json",
    "run_args.yaml",
    "resolved_settings.json",
    "data_report.json",
    "learning_curve.png",
    "freeze_report.json",
    "metrics.json",
    "confusion_matrix.png",
    "classification_report.md",
    "README.md",
    SKIPPED_FILE,
}


@pytest.mark.parametrize("unfreeze", ["0", "2", "all"])
def test_recipe_writes_a_reloadable_timm_model(kaggle, tmp_path, unfreeze):
    import timm

    csv, images = kaggle
    out = tmp_path / "run"
    metrics = image_cls.main(
        [
            "--labels_csv",
            str(csv),
            "--image_dir",
            str(images),
            *TIMM_ARGS,
            "--unfreeze-last",
            unfreeze,
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--save_strategy",
            "no",
        ]
    )
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    train_report = json.loads((out / "data_report.json").read_text())["splits"]["train"]
    assert (train_report["rows_read"], train_report["dropped"]) == (19, {"unreadable_image": 1})  # broken.jpg
    assert "| train | labels.csv | 19 | unreadable image: 1 |" in (out / "README.md").read_text()
    assert (
        "eval_accuracy" in metrics
        and json.loads((out / "metrics.json").read_text())["eval_accuracy"] == metrics["eval_accuracy"]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == TIMM_MODEL and config["label_names"] == list(CLASSES)
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    frozen = json.loads((out / "freeze_report.json").read_text())
    assert frozen["trainable_layers"] == {"0": [], "2": [3, 4], "all": [1, 2, 3, 4]}[unfreeze]
    x = torch.randn(2, 3, 32, 32)
    by_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    by_file = timm.create_model(
        TIMM_MODEL,
        pretrained=True,
        num_classes=3,
        pretrained_cfg_overlay={"file": str(out / "model.safetensors"), "num_classes": 3},  # keeps the head
    ).eval()
    with torch.no_grad():
        assert torch.equal(by_dir(x), by_file(x))
    assert by_dir.pretrained_cfg["label_names"] == list(CLASSES)


def test_shipped_configs_parse():
    configs = sorted((RECIPES / "configs" / "image_cls").glob("*.yaml"))
    assert {c.name for c in configs} >= {"mnist_demo.yaml", "dog_breed.yaml"}
    for config in configs:
        assert config.read_text().startswith("#"), f"{config} must open with the command that runs it"
        image_cls.parse(["--config", str(config)])


@pytest.mark.slow
def test_two_rank_accelerate_launch(tmp_path):
    root = write_class_folders(tmp_path / "folders", per_class=8)
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(RECIPES / "image_cls.py"),
        "--image_dir",
        str(root),
        *TIMM_ARGS,
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--save_strategy",
        "no",
        "--use_cpu",
    ]
    result = subprocess.run(
        check=False, args=command, env=subprocess_env(), capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    # 2 steps x 2 ranks x 4 images: both ranks fed the optimizer
    assert metrics["train_samples_per_second"] * metrics["train_runtime"] == pytest.approx(16, rel=0.05)
    # 3 of the 24 images held out (10 %, stratified), each scored once: the sampler's padding duplicate is dropped
    assert "(eval split, 3 examples)" in (out / "classification_report.md").read_text()
    assert round(metrics["eval_accuracy"] * 3) == pytest.approx(metrics["eval_accuracy"] * 3)
