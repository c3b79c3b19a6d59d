"""Feature export (shapes, hooks, cache reuse/invalidation, text, 2 ranks) and the heads trained on it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import CLASSES, RECIPES, TIMM_MODEL, load_recipe, subprocess_env, write_class_folders

from ftpeft.core.errors import FtpeftError
from ftpeft.features.extract import LATEST_FILE, load_features
from ftpeft.features.heads import attach_head, load_sklearn_head, load_torch_head, torch_head_scores

extract_features = load_recipe("extract_features")
train_head = load_recipe("train_head")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("data") / "folders", per_class=8)


def _extract(folders, feature_dir, *flags):
    argv = [
        "--image_dir",
        str(folders),
        "--model_name_or_path",
        TIMM_MODEL,
        "--image_size",
        "32",
        "--feature_dir",
        str(feature_dir),
        "--validation_split_percentage",
        "25",
        *flags,
    ]
    return extract_features.main(argv)


@pytest.fixture(scope="module")
def features(folders, tmp_path_factory):
    return _extract(folders, tmp_path_factory.mktemp("features"))["feature_dir"]


def test_feature_shapes_and_metadata(features):
    splits, metadata = load_features(features)
    assert {split: x.shape for split, (x, _) in splits.items()} == {"train": (18, 96), "validation": (6, 96)}
    assert sorted(splits["validation"][1].tolist()) == [0, 0, 1, 1, 2, 2]  # stratified
    backbone = metadata["request"]["backbones"][0]
    assert backbone["model"] == TIMM_MODEL and backbone["layer"] == "pre_logits"
    assert backbone["transform"]["input_size"] == [3, 32, 32] and len(backbone["checkpoint_sha256"]) == 16
    assert metadata["label_names"] == list(CLASSES) and metadata["split_sizes"] == {"train": 18, "validation": 6}


def test_cache_reuse_and_invalidation(folders, tmp_path, capsys):
    root = tmp_path / "cache"
    first = _extract(folders, root)
    assert not first["reused"]
    again = _extract(folders, root)
    assert again["reused"] and again["feature_dir"] == first["feature_dir"] and "reusing" in capsys.readouterr().out
    hooked = _extract(folders, root, "--layer", "global_pool")  # other settings: a new key folder, never a reuse
    assert not hooked["reused"] and hooked["feature_dir"] != first["feature_dir"]
    assert (root / LATEST_FILE).read_text().strip() in hooked["feature_dir"]
    (default, _), (by_hook, _) = (
        load_features(first["feature_dir"])[0]["train"],
        load_features(hooked["feature_dir"])[0]["train"],
    )
    np.testing.assert_allclose(by_hook, default, atol=1e-6)  # pooled output == pre-logits for a ResNet
    stage = _extract(folders, root, "--layer", "layer3")
    assert load_features(stage["feature_dir"])[0]["train"][0].shape == (
        18,
        192,
    )  # layer3 maps (192 channels), average-pooled
    assert len([p for p in root.iterdir() if p.is_dir()]) == 3


def test_several_backbones_are_concatenated(folders, tmp_path):
    result = _extract(folders, tmp_path, "--model_name_or_path", TIMM_MODEL, "test_efficientnet")
    splits, metadata = load_features(result["feature_dir"])
    assert metadata["feature_dims"] == [96, 256] and splits["train"][0].shape == (18, 352)


def test_text_features_cls_and_mean(tmp_path):
    common = [
        "--modality",
        "text",
        "--feature_dir",
        str(tmp_path),
        "--max_train_samples",
        "12",
        "--max_eval_samples",
        "4",
        "--max_test_samples",
        "4",
        "--max_seq_length",
        "32",
        "--layer",
        "-2",
    ]
    cls = extract_features.main([*common, "--pooling", "cls"])
    mean = extract_features.main([*common, "--pooling", "mean"])
    (x_cls, y), (x_mean, _) = (
        load_features(cls["feature_dir"])[0]["train"],
        load_features(mean["feature_dir"])[0]["train"],
    )
    assert x_cls.shape == x_mean.shape == (12, 384) and set(y.tolist()) == {0, 1}  # both demo classes drawn
    assert not np.allclose(x_cls, x_mean)


@pytest.mark.parametrize("head", ["logreg", "linear_svm", "random_forest", "hist_gb", "linear", "mlp"])
def test_each_head_trains_and_reloads(features, tmp_path, head):
    out = tmp_path / head
    metrics = train_head.main(
        [
            "--features_dir",
            features,
            "--head",
            head,
            "--output_dir",
            str(out),
            "--n_estimators",
            "20",
            "--max_iter",
            "100",
            "--epochs",
            "20",
            "--learning_rate",
            "1e-2",
        ]
    )
    written = {p.name for p in out.iterdir()}
    assert {"metrics.json", "confusion_matrix.png", "classification_report.md", "README.md", "run_args.yaml"} <= written
    x, y = load_features(features)[0]["validation"]
    if head in ("linear", "mlp"):
        module, config = load_torch_head(out)
        predicted = torch_head_scores(module, x).argmax(-1)
        assert config["label_names"] == list(CLASSES)
    else:
        predicted = load_sklearn_head(out).predict(x)
        card = (out / "README.md").read_text()
        scope: dict = {}
        exec(card.split("```python\n", 1)[1].split("```", 1)[0], scope)  # the card's snippet runs as written  # noqa: S102
        np.testing.assert_array_equal(scope["clf"].predict(x), predicted)
    assert np.mean(predicted == y) == pytest.approx(metrics["eval_accuracy"])
    assert ("timm_model" in written) == (head in ("logreg", "linear_svm", "linear"))  # linear on the pre-logits


def test_linear_head_attaches_to_its_backbone(features, tmp_path, folders):
    import timm

    out = tmp_path / "linear"
    train_head.main(["--features_dir", features, "--head", "linear", "--output_dir", str(out), "--epochs", "5"])
    model = attach_head(out)
    head, _ = load_torch_head(out)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features_now = model.forward_head(model.forward_features(pixels), pre_logits=True)
        torch.testing.assert_close(model(pixels), head(features_now))
        reloaded = timm.create_model(f"local-dir:{out / 'timm_model'}", pretrained=True).eval()
        torch.testing.assert_close(reloaded(pixels), model(pixels))
    assert reloaded.pretrained_cfg["label_names"] == list(CLASSES)


def test_heads_keep_the_import_path_earlier_cards_printed():
    import ftpeft.heads

    assert (ftpeft.heads.attach_head, ftpeft.heads.load_sklearn_head, ftpeft.heads.load_torch_head) == (
        attach_head,
        load_sklearn_head,
        load_torch_head,
    )


def test_sklearn_head_with_foreign_types_is_refused(tmp_path):
    import operator

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    skops.io.dump(FunctionTransformer(operator.neg), tmp_path / "head.skops")
    with pytest.raises(FtpeftError, match="refuses to load"):
        load_sklearn_head(tmp_path)


def test_missing_features_dir_is_one_clear_error(tmp_path):
    with pytest.raises(FtpeftError, match="--features_dir .*extract_features"):
        train_head.main(["--features_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])


@pytest.mark.slow
def test_two_ranks_give_the_same_features(folders, features, tmp_path):
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
        str(RECIPES / "extract_features.py"),
        "--image_dir",
        str(folders),
        "--model_name_or_path",
        TIMM_MODEL,
        "--image_size",
        "32",
        "--feature_dir",
        str(tmp_path),
        "--validation_split_percentage",
        "25",
        "--batch_size",
        "4",
    ]
    result = subprocess.run(
        check=False,
        args=command,
        env=dict(subprocess_env(), ACCELERATE_USE_CPU="true"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (two_ranks, metadata), (one_rank, _) = load_features(tmp_path), load_features(features)
    for split in one_rank:
        np.testing.assert_allclose(two_ranks[split][0], one_rank[split][0], atol=1e-5)
        np.testing.assert_array_equal(two_ranks[split][1], one_rank[split][1])
    assert json.dumps(metadata["request"], sort_keys=True) == json.dumps(
        load_features(features)[1]["request"], sort_keys=True
    )


def test_shipped_feature_configs_parse():
    configs = sorted((RECIPES / "configs" / "features").glob("*.yaml"))
    assert configs
    for config in configs:
        assert config.read_text().startswith("#"), f"{config} must open with the command that runs it"
        extract_features.parse(["--config", str(config)])


def _noisy_linear_problem(rows: int, seed: int):
    """Few informative of many noisy dimensions: strong regularisation wins on held-out rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 200))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    return x, y


@pytest.mark.parametrize(
    ("head", "given_c", "with_validation", "chooses"),
    [("logreg", None, True, True), ("linear_svm", None, True, True), ("logreg", 0.5, True, False),
     ("logreg", None, False, False), ("random_forest", None, True, False)],
)  # fmt: skip
def test_linear_heads_choose_c_on_validation_unless_given(head, given_c, with_validation, chooses):
    from ftpeft.features.args import HeadArguments
    from ftpeft.features.heads import REGULARIZATION_GRID, fit_sklearn_head

    train, validation = _noisy_linear_problem(120, 0), _noisy_linear_problem(400, 1)
    args = HeadArguments(features_dir="unused", head=head, regularization_c=given_c, n_estimators=5)
    classifier, choice = fit_sklearn_head(head, args, train, validation if with_validation else None)
    if not chooses:
        assert choice == {}
        if given_c is not None:
            assert classifier[-1].C == given_c
        return
    scores = choice["validation_accuracy_by_c"]
    assert list(scores) == list(REGULARIZATION_GRID[head])
    assert scores[choice["regularization_c"]] == max(scores.values())
    assert classifier[-1].C == choice["regularization_c"]
    assert np.mean(classifier.predict(validation[0]) == validation[1]) == max(scores.values())
