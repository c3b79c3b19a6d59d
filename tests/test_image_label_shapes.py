"""Label sets and numbers in image_cls (tiny timm model, 32 px): a Kaggle CSV of space-separated tags (multi-label) or
of numeric columns (regression) trains a stock timm model whose outputs -- read by ``ftpeft predict`` and by the card's
snippet -- equal the run's own final evaluation; flags that do not fit the labels are one line, exit 2."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TIMM_ARGS, load_recipe, snapshot, write_class_folders

from ftpeft import cli
from ftpeft.core.errors import run_cli
from ftpeft.labels.scores import multi_label_scores, regression_scores, sigmoid, unscale
from ftpeft.labels.target import load_target

image_cls = load_recipe("image_cls")
COLOURS = ("red", "green", "blue")
ATOL = 1e-5


def write_tagged_images(root, rows: int = 24):
    """ROOT/images/<id>.jpg + ROOT/labels.csv (Kaggle 'planet' layout): image_name, tags (the colour channels lit,
    space-separated: never empty), brightness and redness (numbers the pixels decide)."""
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.RandomState(0)
    records = []
    for i in range(rows):
        lit = [j for j in range(len(COLOURS)) if (i % 7 + 1) >> j & 1]  # every non-empty set of colours, in turn
        pixels = rng.randint(0, 60, size=(40, 48, 3))
        pixels[..., lit] += 150
        Image.fromarray(pixels.astype("uint8")).save(images / f"img{i:02d}.jpg", format="JPEG")
        records.append(
            {
                "image_name": f"img{i:02d}",
                "tags": " ".join(COLOURS[j] for j in lit),
                "brightness": round(pixels.mean() / 255, 4),
                "redness": round(10 * pixels[..., 0].mean() / 255, 3),
            }
        )
    pd.DataFrame(records).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv", images


def write_hub_dataset(csv, images, root):
    """The same images and tags as a Hub-style dataset (ROOT/data/train-*.parquet, an image column and a list-typed
    'tags' column) that ``--dataset_name ROOT`` loads offline; row i is img<i>."""
    from datasets import Dataset, Features, Image, Sequence, Value

    frame = pd.read_csv(csv)
    rows = {
        "image": [{"bytes": (images / f"{name}.jpg").read_bytes(), "path": None} for name in frame["image_name"]],
        "tags": [tags.split(" ") for tags in frame["tags"]],
    }
    features = Features({"image": Image(), "tags": Sequence(Value("string"))})
    (root / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(root / "data" / "train-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    return write_tagged_images(tmp_path_factory.mktemp("planet"))


@contextlib.contextmanager
def final_evaluation():
    """Record each ``Trainer.predict`` of a recipe run: the images it scored (ids) and the model's raw outputs."""
    from ftpeft.core.trainer import FtpeftTrainer

    captured, original = [], FtpeftTrainer.predict

    def predict(self, dataset, *args, **kwargs):
        output = original(self, dataset, *args, **kwargs)
        # a file's stem (what ftpeft predict names a row), or the Hub row i of image img<i>
        ids = [f"img{item:02d}" if isinstance(item, int) else Path(item).stem for item in dataset.images.items]
        captured.append((ids, np.asarray(output.predictions, dtype=np.float64).reshape(len(ids), -1)))
        return output

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FtpeftTrainer, "predict", predict)
        yield captured


# (case, source, label flags, problem type, output names); --problem_type auto decides each from the columns
CASES = [
    ("csv_tags", "csv", ["--label_column", "tags", "--label_separator", " "], "multi_label", ["blue", "green", "red"]),
    ("hub_tags", "hub", ["--label_column", "tags"], "multi_label", ["blue", "green", "red"]),
    ("one_number", "csv", ["--label_column", "brightness"], "regression", ["brightness"]),
    ("two_numbers", "csv", ["--label_columns", "brightness", "redness"], "regression", ["brightness", "redness"]),
]


@pytest.mark.parametrize("case, source, label_flags, problem_type, names", CASES, ids=[c[0] for c in CASES])
def test_predict_and_the_card_give_the_runs_final_evaluation(
    tagged, tmp_path, monkeypatch, case, source, label_flags, problem_type, names
):
    csv, images = tagged
    out = tmp_path / "run"
    if source == "hub":
        data = ["--dataset_name", write_hub_dataset(csv, images, tmp_path / "hub")]
    else:
        data = ["--labels_csv", csv, "--image_dir", images, "--id_column", "image_name"]
    argv = [*data, *label_flags, *TIMM_ARGS, "--output_dir", out, "--max_steps", "2", "--per_device_train_batch_size",
            "8", "--save_strategy", "no", "--validation_split_percentage", "25"]  # fmt: skip
    with final_evaluation() as evaluations:
        metrics = image_cls.main(list(map(str, argv)))
    val_ids, outputs = evaluations[-1]  # no test split: the final evaluation scores validation
    target = load_target(out)
    assert (target.short_name, list(target.names)) == (problem_type, names)
    config = json.loads((out / "config.json").read_text())  # timm's, with HF's problem_type
    assert (config["problem_type"], config["label_names"], config["num_classes"]) == (
        target.problem_type,
        names,
        len(names),
    )
    recorded = json.loads((out / "resolved_settings.json").read_text())["problem_type"]
    assert (recorded["given"], recorded["used"]) == ("auto", problem_type)
    assert json.loads((out / "data_report.json").read_text())["targets"]["problem_type"] == problem_type

    predictions = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(out), "--input", str(images), "--output", str(predictions)]) == 0
    predicted = pd.read_csv(predictions, keep_default_na=False).set_index("id").loc[val_ids]
    truth = pd.read_csv(csv, keep_default_na=False).set_index("image_name").loc[val_ids]
    if problem_type == "multi_label":
        expected = sigmoid(outputs)  # the evaluation's logits -> label probabilities
        thresholds = json.loads((out / "thresholds.json").read_text())
        assert config["label_thresholds"] == thresholds and list(thresholds) == names
        chosen = expected >= np.array([thresholds[n] for n in names])
        joined = [target.separator.join(n for n, on in zip(names, row) if on) for row in chosen]
        assert list(predicted["labels"]) == joined  # joined as the run read them: ' ' (--label_separator), ',' (lists)
        hot = np.array([[name in tags.split(" ") for name in names] for tags in truth["tags"]], dtype=float)
        scores = multi_label_scores(predicted[names].to_numpy(), hot, [thresholds[n] for n in names])
        for name in ("map", "micro_f1", "macro_f1"):
            assert scores[name] == pytest.approx(metrics[f"eval_{name}"], abs=ATOL), name
    else:
        expected = unscale(outputs, target)  # the evaluation's standardised outputs -> the targets' units
        scores = regression_scores(predicted[names].to_numpy(), truth[names].to_numpy(), names)
        for name in ("rmse", "mae", "r2"):
            assert scores[name] == pytest.approx(metrics[f"eval_{name}"], abs=ATOL), name
    np.testing.assert_allclose(predicted[names].to_numpy(), expected, atol=ATOL, rtol=0)

    card = (out / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert ("softmax" in snippet, "sigmoid" in snippet) == (False, problem_type == "multi_label")
    monkeypatch.chdir(tmp_path)
    shutil.copy(images / f"{val_ids[0]}.jpg", tmp_path / "image.jpg")
    scope: dict = {}
    exec(snippet, scope)  # the card's loading code runs as written  # noqa: S102
    loaded = scope["probabilities" if problem_type == "multi_label" else "values"]
    np.testing.assert_allclose([loaded[n] for n in names], expected[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "source, flags, message",
    [
        (
            "folders",
            ["--problem_type", "multi_label"],
            r"--problem_type multi_label: --image_dir .* one class per image",
        ),
        ("folders", ["--label_separator", " "], r"--label_separator: --image_dir .* one class per image"),
        (
            "csv",
            ["--label_column", "tags", "--problem_type", "regression"],
            r"column 'tags' of the train split has 'red' in row \d+; a regression target must be a finite number",
        ),
        ("hot", ["--label_columns", *COLOURS], r"column 'green' of the train split has 2 in row 3; .*hold 0 or 1"),
        ("twice", ["--label_column", "tags"], r"the column name\(s\) \['tags'\] occur more than once"),
        (
            "labels",
            ["--label_column", "tags"],
            r"a column is named 'labels' .* beside the label column\(s\) \['tags'\]",
        ),
        ("csv", ["--label_column", "brightness", "--pos_weight", "balanced"], r"--pos_weight is for label sets"),
    ],
    ids=[
        "folders_multi_label",
        "folders_separator",
        "word_as_number",
        "hot_2",
        "name_twice",
        "labels_beside",
        "pos_weight",
    ],
)
def test_labels_that_do_not_fit_are_one_clear_error(tagged, tmp_path, capsys, source, flags, message):
    csv, images = tagged
    if source == "folders":
        data = ["--image_dir", str(write_class_folders(tmp_path / "folders", per_class=2))]
    else:
        frame = pd.read_csv(csv)
        if source == "twice":
            frame.insert(2, "tags ", frame["tags"])  # written with the same name twice (pandas would rename it)
        if source == "labels":
            frame["labels"] = frame["tags"]
        if source == "hot":  # one 0/1 column per colour, one cell of them 2
            for colour in COLOURS:
                frame[colour] = frame["tags"].map(lambda tags, colour=colour: int(colour in tags.split(" ")))
            frame.loc[3, "green"] = 2
        table = tmp_path / "labels.csv"
        text = frame.to_csv(index=False)
        table.write_text(text.replace("tags ,", "tags,", 1) if source == "twice" else text)
        data = ["--labels_csv", str(table), "--image_dir", str(images), "--id_column", "image_name"]
    argv = [*data, *flags, *TIMM_ARGS, "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    before = snapshot(images.parent)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(image_cls.main)(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert snapshot(images.parent) == before
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_an_image_ladder_probes_and_chooses_label_sets_on_map(tmp_path):
    """The ladder on a Kaggle tag CSV: the probe fits one-vs-rest logistic regression per stage, rungs train with
    BCE, and the choice is made on validation mAP within a bootstrap tolerance."""
    from helpers import TIMM_ARGS, load_recipe

    csv, images = write_tagged_images(tmp_path / "data", rows=36)
    argv = [*TIMM_ARGS, "--labels_csv", str(csv), "--image_dir", str(images), "--id_column", "image_name",
            "--label_column", "tags", "--label_separator", " ", "--output_dir", str(tmp_path / "ladder"),
            "--max_steps", "3", "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
            "--rungs", "probe_head", "head_only", "--time_budget", "10m"]  # fmt: skip
    result = load_recipe("ladder").main(argv)
    assert result["metric"] == "map" and result["data"]["problem_type"] == "multi_label_classification"
    done = [r for r in result["rungs"] if r["status"] == "done"]
    assert {r["name"] for r in done} == {"probe_head", "head_only"} and all("map" in r["val_scores"] for r in done)
    assert result["recommended"] in {"probe_head", "head_only"}
