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
    "target.json",  # one class per row: the label names and the problem type, as every run saves them
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


# --- image settings: the model's pretrained_cfg unless a flag (or the demo config) sets them --------------------

FROM_TEST_RESNET = "model pretrained_cfg (test_resnet)"  # 160 px, crop 0.95, bilinear, mean/std 0.5
DEMO_MODEL = "tf_efficientnet_lite0"  # the demo's model, here with random weights
EVERY_IMAGE_FLAG = ["--image_dir", "imgs", "--image_size", "48", "--crop_pct", "0.8", "--interpolation", "bicubic",
                    "--mean", "0.4", "0.45", "0.5", "--std", "0.2", "--hflip", "0.25", "--color_jitter", "0"]  # fmt: skip


def _image_settings(argv: list[str], model_name: str = TIMM_MODEL):
    """resolve_image_settings for the recipe's parsed arguments (recipe defaults, --config, flags)."""
    import timm

    from ftpeft.vision.data import resolve_image_settings

    _, data_args, *_ = image_cls.parse(argv)
    return resolve_image_settings(timm.create_model(model_name, num_classes=3), data_args)


def _train_steps(settings) -> list[str]:
    return [type(step).__name__ for step in settings.train_transform.transforms]


@pytest.mark.parametrize(
    "argv, expected, train_steps",
    [
        (  # user data, no image flag: everything from the model, timm's standard augmentation (with flip)
            ["--image_dir", "imgs"],
            {
                "input_size": ([3, 160, 160], FROM_TEST_RESNET),
                "crop_pct": (0.95, FROM_TEST_RESNET),
                "interpolation": ("bilinear", FROM_TEST_RESNET),
                "mean": ([0.5, 0.5, 0.5], FROM_TEST_RESNET),
                "std": ([0.5, 0.5, 0.5], FROM_TEST_RESNET),
                "hflip": (0.5, "timm default (create_transform)"),
            },
            ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "ColorJitter", "MaybeToTensor", "Normalize"],
        ),
        (  # every flag wins over the model
            EVERY_IMAGE_FLAG,
            {
                "input_size": ([3, 48, 48], "flag"),
                "crop_pct": (0.8, "flag"),
                "interpolation": ("bicubic", "flag"),
                "mean": ([0.4, 0.45, 0.5], "flag"),
                "std": ([0.2, 0.2, 0.2], "flag"),
                "hflip": (0.25, "flag"),
            },
            ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"],
        ),
        (  # the demo (no data flag): the demo config; what it does not set is the model's
            [],
            {
                "input_size": ([3, 64, 64], "demo config"),
                "crop_pct": (1.0, "demo config"),
                "interpolation": ("bilinear", FROM_TEST_RESNET),
                "mean": ([0.5, 0.5, 0.5], FROM_TEST_RESNET),
                "hflip": (0.0, "demo config"),
            },
            ["RandomResizedCropAndInterpolation", "RandomRotation", "ColorJitter", "MaybeToTensor", "Normalize"],
        ),
        (  # the demo with flags: the flags win over the demo config
            ["--image_size", "32", "--hflip", "0.5", "--rotation_degrees", "0"],
            {"input_size": ([3, 32, 32], "flag"), "crop_pct": (1.0, "demo config"), "hflip": (0.5, "flag")},
            ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "ColorJitter", "MaybeToTensor", "Normalize"],
        ),
    ],
)
def test_image_settings_come_from_flags_then_demo_then_model(argv, expected, train_steps):
    settings = _image_settings(argv)
    for name, (used, why) in expected.items():
        assert (settings.sources[name]["used"], settings.sources[name]["why"]) == (used, why), name
        assert settings.sources[name]["used"] == settings.data_config.get(name, used)  # recorded = what is used
    assert _train_steps(settings) == train_steps
    assert settings.sources["augmentation"]["used"] == [repr(step) for step in settings.train_transform.transforms]
    eval_steps = [type(step).__name__ for step in settings.eval_transform.transforms]
    assert eval_steps == ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]  # no random step


def test_a_config_value_counts_as_given(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("image_dir: imgs\nimage_size: 40\ncrop_scale_min: 0.5\n")
    settings = _image_settings(["--config", str(config)])
    assert settings.sources["input_size"] == {"given": 40, "used": [3, 40, 40], "why": "flag"}
    augmentation = settings.sources["augmentation"]
    assert augmentation["given"] == {"crop_scale_min": 0.5} and "crop_scale_min 0.5: flag" in augmentation["why"]
    assert "scale=(0.5, 1.0)" in augmentation["used"][0]


def test_the_bare_command_trains_the_demo_as_before():
    """The demo's transforms are those it had when 64 px / crop 1.0 / no flip / crop scale 0.8 were recipe
    defaults for every run (built here as that code built them)."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms

    args = image_cls.parse([])  # the bare command
    assert not {"image_size", "crop_pct", "hflip", "crop_scale_min"} & set(args.resolved)  # no longer recipe defaults
    settings = _image_settings([], DEMO_MODEL)
    model = timm.create_model(DEMO_MODEL, num_classes=3)
    config = resolve_data_config({"input_size": (3, 64, 64), "crop_pct": 1.0}, model=model)
    before = create_transform(**config, is_training=True, hflip=0.0, scale=(0.8, 1.0), color_jitter=0.4)
    before.transforms.insert(1, transforms.RandomRotation(10.0))
    assert repr(settings.train_transform) == repr(before)
    assert repr(settings.eval_transform) == repr(create_transform(**config, is_training=False))
    assert {name: source["why"] for name, source in settings.sources.items()} == {
        "input_size": "demo config",
        "crop_pct": "demo config",
        "interpolation": f"model pretrained_cfg ({DEMO_MODEL})",
        "mean": f"model pretrained_cfg ({DEMO_MODEL})",
        "std": f"model pretrained_cfg ({DEMO_MODEL})",
        "hflip": "demo config",
        "augmentation": "timm create_transform(is_training=True); crop_scale_min 0.8: demo config, "
        "rotation_degrees 10.0: demo config, color_jitter: timm default",
    }


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mean", "0.1", "0.2"], r"--mean takes 1 or 3 finite numbers .* got \[0.1, 0.2\]"),
        (["--std", "0"], r"--std must be > 0, got \[0.0\]"),
        (["--interpolation", "cubic"], "--interpolation must be bilinear, bicubic, .* got 'cubic'"),
    ],
)
def test_bad_image_setting_is_one_clear_error(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(image_cls.main)(flags)
    assert exit_info.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_run_without_image_flags_uses_the_model_cfg_in_training_saving_and_predict(tmp_path):
    """No image flag: the run trains and evaluates at test_resnet's pretrained_cfg, records why, saves that eval
    transform in config.json, and ftpeft predict preprocesses exactly as training's evaluation did."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from ftpeft.predict.image import load_image_predictor
    from ftpeft.predict.runs import detect_run
    from ftpeft.vision.data import resolve_image_settings

    root, out = write_class_folders(tmp_path / "folders", per_class=4), tmp_path / "run"
    argv = ["--image_dir", str(root), "--model_name_or_path", TIMM_MODEL, "--output_dir", str(out), "--max_steps",
            "1", "--per_device_train_batch_size", "4", "--save_strategy", "no", "--eval_strategy", "no"]  # fmt: skip
    image_cls.main(argv)
    recorded = json.loads((out / "resolved_settings.json").read_text())
    assert {recorded[name]["why"] for name in ("input_size", "crop_pct", "interpolation", "mean", "std")} == {
        FROM_TEST_RESNET
    }
    assert (recorded["input_size"]["used"], recorded["hflip"]["used"]) == ([3, 160, 160], 0.5)
    assert recorded["augmentation"]["why"].startswith("timm create_transform(is_training=True)")
    saved = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert (saved["input_size"], saved["crop_pct"], saved["interpolation"]) == ([3, 160, 160], 0.95, "bilinear")

    _, data_args, *_ = image_cls.parse(argv)
    predictor = load_image_predictor(detect_run(out), "cpu")
    training_eval = resolve_image_settings(predictor.model, data_args).eval_transform
    reloaded = create_transform(**resolve_data_config({}, model=predictor.model))  # the card's snippet
    image = Image.open(root / CLASSES[0] / "0.jpg").convert("RGB")
    for transform in (predictor.transform, reloaded):
        assert repr(transform) == repr(training_eval)
        assert torch.equal(transform(image), training_eval(image))


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


@pytest.mark.parametrize(
    "transform_config",
    [
        {"input_size": (3, 64, 64), "interpolation": "bicubic", "crop_pct": 1.0, "mean": (0.5,) * 3, "std": (0.5,) * 3},
        {"input_size": (3, 40, 40), "interpolation": "bilinear", "crop_pct": 0.875},  # ImageNet mean/std, a crop
        {"input_size": (3, 32, 32), "crop_pct": 1.0, "mean": (0.0,) * 3, "std": (1.0,) * 3, "crop_mode": "squash"},
    ],
)
def test_a_batch_normalised_at_once_equals_the_images_transformed_one_by_one(transform_config):
    from PIL import Image
    from timm.data import create_transform

    from ftpeft.vision.data import pixel_batch

    generator = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy())
        for h, w in [(28, 28), (50, 37), (64, 80)]
    ]
    transform = create_transform(**transform_config, is_training=False)
    one_by_one = torch.stack([transform(image) for image in images])
    assert torch.equal(pixel_batch(transform, images), one_by_one)
    assert torch.equal(pixel_batch(lambda image: transform(image), images), one_by_one)  # not a Compose: per image
