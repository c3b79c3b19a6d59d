"""Frozen features + cheap heads under label sets and numbers: what extract_features stores, each head that fits a
problem type trains, saves and gives `ftpeft predict` its own test outputs; thresholds come from validation only;
heads that do not fit are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import (
    CLASSES,
    LABEL_SET_TAGS,
    TIMM_ARGS,
    load_recipe,
    make_label_set_files,
    make_regression_files,
    write_class_folders,
)

from ftpeft.cli import main as cli_main
from ftpeft.core.errors import FtpeftError
from ftpeft.features.extract import feature_target, load_features, write_features
from ftpeft.features.heads import head_outputs, load_sklearn_head, load_torch_head
from ftpeft.labels.evaluation import ThresholdRule, decided_thresholds

extract_features = load_recipe("extract_features")
train_head = load_recipe("train_head")

LABEL_FLAGS = {"sets": ["--label_column", "tags", "--label_separator", ","], "numbers": ["--label_column", "score"]}
TAGS = sorted(LABEL_SET_TAGS)


@pytest.fixture(scope="module")
def shaped(tmp_path_factory, tiny_bert_dir):
    """{kind: (data dir, feature folder)} for a label-set CSV and a regression CSV, on the tiny BERT's features."""
    root = tmp_path_factory.mktemp("feature_shapes")
    result = {}
    for kind, make in (("sets", make_label_set_files), ("numbers", make_regression_files)):
        (root / kind).mkdir()
        data = make(root / kind)
        result[kind] = (data, extract(data, root / "features", kind, tiny_bert_dir)["feature_dir"])
    return result


def extract(data, feature_dir, kind, model, *flags):
    files = [f"--{split}_file={data / f'{split}.csv'}" for split in ("train", "validation", "test")]
    argv = ["--modality", "text", "--model_name_or_path", str(model), *files, "--max_seq_length", "32",
            "--feature_dir", str(feature_dir), *LABEL_FLAGS[kind], *flags]  # fmt: skip
    return extract_features.main(argv)


def fit(features, out, head, *flags):
    argv = ["--features_dir", str(features), "--head", head, "--output_dir", str(out), "--max_iter", "300",
            "--epochs", "20", "--learning_rate", "1e-2", "--n_estimators", "10", *flags]  # fmt: skip
    return train_head.main(argv)


def load_head(out):
    return load_sklearn_head(out) if (out / "head.skops").is_file() else load_torch_head(out)[0]


def test_stored_labels_are_multi_hot_or_numbers_in_target_units(shaped, tiny_bert_dir, capsys):
    (sets_data, sets), (numbers_data, numbers) = shaped["sets"], shaped["numbers"]
    splits, metadata = load_features(sets)
    target = feature_target(metadata)
    assert target.short_name == "multi_label" and list(target.names) == TAGS and target.separator == ","
    assert metadata["request"]["target"]["names"] == TAGS  # the target is part of the cache key
    y = splits["test"][1]
    truth = pd.read_csv(sets_data / "test.csv")["tags"].str.split(",")
    assert y.dtype == np.float32 and y.shape == (16, 3)
    np.testing.assert_array_equal(y, [[tag in row for tag in TAGS] for row in truth])

    splits, metadata = load_features(numbers)
    target = feature_target(metadata)
    assert target.short_name == "regression" and list(target.names) == ["score"]
    assert metadata["target"]["mean"] == pytest.approx([pd.read_csv(numbers_data / "train.csv")["score"].mean()])
    y = splits["test"][1]
    assert y.dtype == np.float32 and y.shape == (16, 1)
    np.testing.assert_allclose(y[:, 0], pd.read_csv(numbers_data / "test.csv")["score"], rtol=1e-6)  # own units

    # how auto decided is not part of the key: naming the problem type reuses the same features
    again = extract(sets_data, Path(sets).parent, "sets", tiny_bert_dir, "--problem_type", "multi_label")
    assert again["reused"] and again["feature_dir"] == sets and "reusing" in capsys.readouterr().out


# (kind, head, extra flags): each head that fits a problem type
HEADS = [
    ("sets", "logreg", []),
    ("sets", "linear_svm", []),
    ("sets", "random_forest", []),
    ("sets", "mlp", ["--pos_weight", "balanced"]),
    ("numbers", "ridge", []),
    ("numbers", "linear", ["--epochs", "200", "--learning_rate", "0.05"]),
]


@pytest.mark.parametrize(("kind", "head", "flags"), HEADS, ids=[f"{k}-{h}" for k, h, _ in HEADS])
def test_heads_train_save_and_predict_their_own_test_outputs(shaped, tmp_path, kind, head, flags):
    data, features = shaped[kind]
    out = tmp_path / head
    metrics = fit(features, out, head, *flags)
    written = {p.name for p in out.iterdir()}
    assert {"metrics.json", "classification_report.md", "README.md", "target.json", "head_config.json"} <= written
    assert "confusion_matrix.png" not in written
    assert ("thresholds.json" in written) == (kind == "sets")
    assert ("predictions_scatter.png" in written) == (kind == "numbers")
    saved = json.loads((out / "target.json").read_text())
    assert saved["problem_type"] == ("multi_label_classification" if kind == "sets" else "regression")
    if kind == "sets":
        for prefix in ("eval", "test"):
            for name in ("map", "micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss"):
                assert 0 <= metrics[f"{prefix}_{name}"] <= 1
            for name in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss"):
                assert 0 <= metrics[f"{prefix}_{name}_at_0.5"] <= 1
        assert metrics["thresholds_chosen_on"] == "validation"
        assert "| praise |" in (out / "classification_report.md").read_text()
    else:
        assert {"test_rmse", "test_mae", "test_r2", "test_pearson", "test_spearman"} <= set(metrics)
        assert metrics["test_rmse"] < np.std(load_features(features)[0]["test"][1])  # beats the mean, in units

    from ftpeft.labels.target import load_target

    target = load_target(out)
    x_test, y_test = load_features(features)[0]["test"]
    expected = head_outputs(load_head(out), x_test, target)
    if (out / "head.skops").is_file():  # the card's snippet runs as written and reads the head as predict does
        scope: dict = {}
        exec((out / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0], scope)  # noqa: S102
        np.testing.assert_array_equal(head_outputs(scope["clf"], x_test, scope["target"]), expected)
    frame = predict(out, data / "test.csv", tmp_path / "preds.csv")
    np.testing.assert_allclose(frame[list(target.names)].to_numpy(), expected, rtol=0, atol=1e-5)
    if kind == "sets":
        assert list(frame.columns) == ["id", "labels", *TAGS]
        chosen = expected >= np.asarray(target.thresholds)
        assert list(frame["labels"].fillna("")) == [",".join(t for t, on in zip(TAGS, row) if on) for row in chosen]
        from ftpeft.labels.scores import multi_label_scores

        assert multi_label_scores(expected, y_test, target.thresholds)["macro_f1"] == metrics["test_macro_f1"]
    else:
        assert list(frame.columns) == ["id", "score"]
        from ftpeft.labels.scores import regression_scores

        assert regression_scores(expected, y_test, ["score"])["rmse"] == pytest.approx(metrics["test_rmse"])


def predict(run_dir, data, output) -> pd.DataFrame:
    assert cli_main(["predict", str(run_dir), "--input", str(data), "--output", str(output)]) in (0, None)
    return pd.read_csv(output)


@pytest.mark.parametrize(("flags", "shared"), [([], False), (["--min_threshold_positives", "100"], True)])
def test_thresholds_come_from_validation_never_test(shaped, tmp_path, flags, shared):
    """Test labels flipped (a rigged test split) leave the thresholds as they were: they are validation's."""
    _, features = shaped["sets"]
    splits, metadata = load_features(features)
    x_test, y_test = splits["test"]
    rigged = {**splits, "test": (x_test, 1 - y_test)}
    extra = {k: v for k, v in metadata.items() if k not in ("format", "key", "request", "feature_dim", "shards")}
    rigged_dir = write_features(tmp_path / "rigged_features", {**metadata["request"], "rigged": True}, rigged, extra)
    thresholds = {}
    for name, folder in (("real", features), ("rigged", rigged_dir)):
        fit(folder, tmp_path / name, "logreg", *flags)
        thresholds[name] = json.loads((tmp_path / name / "thresholds.json").read_text())
    assert thresholds["real"] == thresholds["rigged"]
    x_val, y_val = splits["validation"]
    rule = ThresholdRule("auto", 100 if shared else 10)
    target, _ = decided_thresholds(head_outputs(load_head(tmp_path / "real"), x_val, feature_target(metadata)), y_val,
                                   feature_target(metadata), rule)  # fmt: skip
    assert list(thresholds["real"].values()) == pytest.approx(list(target.thresholds))
    assert (len(set(thresholds["real"].values())) == 1) == shared


def test_a_fixed_threshold_is_used_as_given(shaped, tmp_path):
    fit(shaped["sets"][1], tmp_path / "fixed", "logreg", "--threshold", "0.3")
    assert json.loads((tmp_path / "fixed" / "thresholds.json").read_text()) == dict.fromkeys(TAGS, 0.3)


@pytest.mark.parametrize(
    ("kind", "head", "flags", "message"),
    [
        ("numbers", "logreg", [], "--head logreg does not fit regression features; use one of ridge, linear, mlp."),
        ("numbers", "hist_gb", [], "--head hist_gb does not fit regression features"),
        ("sets", "ridge", [], "--head ridge does not fit multi_label features"),
        ("numbers", "ridge", ["--problem_type", "multi_label"], "the features in .* are regression; extract them"),
        ("numbers", "linear", ["--pos_weight", "balanced"], "--pos_weight is for label sets .*these features are"),
        ("sets", "logreg", ["--pos_weight", "balanced"], "--pos_weight weighs the BCE loss of the torch heads"),
    ],
)
def test_heads_that_do_not_fit_are_refused_in_one_line(shaped, tmp_path, kind, head, flags, message):
    with pytest.raises(FtpeftError, match=message):
        fit(shaped[kind][1], tmp_path / "out", head, *flags)
    assert not (tmp_path / "out" / "metrics.json").exists()


def write_tagged_class_folders(root: Path) -> tuple[Path, Path]:
    """ROOT/images/<class>/<i>.jpg + ROOT/labels.csv (Kaggle layout, ids 'beagle/0'): tags (the class, plus 'odd' for
    odd i, space-separated) and score (a number the class decides)."""
    images = write_class_folders(root / "images", per_class=8)
    rows = [
        {"id": f"{name}/{i}", "tags": " ".join([name, *(["odd"] if i % 2 else [])]), "score": 1.5 * c + 0.1 * i}
        for c, name in enumerate(CLASSES)
        for i in range(8)
    ]
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return images, root / "labels.csv"


IMAGE_LABEL_FLAGS = {
    "sets": ["--label_column", "tags", "--label_separator", " "],
    "numbers": ["--label_column", "score"],
}


@pytest.mark.parametrize("kind", ["sets", "numbers"])
def test_image_features_give_a_timm_model_that_predicts_as_the_head(tmp_path, kind):
    """A linear head on one timm backbone's pre-logits is also a stock timm model (timm_model/, with the target in
    its config): `ftpeft predict` gives the same outputs from either, and they are the head's on the cached rows."""
    images, labels_csv = write_tagged_class_folders(tmp_path)
    argv = ["--image_dir", str(images), "--labels_csv", str(labels_csv), *TIMM_ARGS, "--feature_dir",
            str(tmp_path / "features"), "--validation_split_percentage", "25", *IMAGE_LABEL_FLAGS[kind]]  # fmt: skip
    features = extract_features.main(argv)["feature_dir"]
    splits, metadata = load_features(features)
    target = feature_target(metadata)
    assert splits["train"][1].shape == (18, 4 if kind == "sets" else 1) and splits["train"][1].dtype == np.float32
    out = tmp_path / "head"
    fit(features, out, "linear", "--epochs", "30")
    assert (out / "timm_model" / "target.json").is_file()
    from_head = predict(out, images, tmp_path / "head.csv").set_index("id")
    from_timm = predict(out / "timm_model", images, tmp_path / "timm.csv").set_index("id")
    names = list(target.names)
    np.testing.assert_allclose(from_timm.loc[from_head.index, names], from_head[names], rtol=0, atol=1e-5)
    module, _ = load_torch_head(out)
    cached = head_outputs(module, np.concatenate([splits["train"][0], splits["validation"][0]]), target)
    distance = np.abs(cached[:, None, :] - from_head[names].to_numpy()[None, :, :]).max(axis=2)
    assert distance.min(axis=1).max() < 1e-5  # every cached image's output is in the CSV
