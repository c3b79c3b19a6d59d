"""A linear head on frozen features is also one complete model: in a process where ``import ftpeft`` fails, the stock
loader of the card (pipeline(..., trust_remote_code=True) for text, timm.create_model for images) gives the scores
`ftpeft predict` gives for the head (max abs difference <= 1e-5) -- text logreg (binary at hidden state -2, 3 classes,
label sets), linear SVM, the torch linear head on [CLS] at hidden state 1, ridge (numbers at hidden state 2) and an
image logreg; long rows included. The readout's defaults
stay the mean-pooling model saved before them, and heads that are not one linear layer on one backbone's final
features say so in the card and write no model."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    NEGATIVE,
    POSITIVE,
    TIMM_ARGS,
    load_recipe,
    make_label_set_files,
    make_regression_files,
    make_text_files,
    scores_without_ftpeft,
    sentence,
    write_class_folders,
)

from ftpeft.cli import main as cli_main
from ftpeft.features.complete_model import FTPEFT_PART, TEXT_MODEL_DIR, TIMM_MODEL_DIR, why_not_exported
from ftpeft.hub_code.mean_pooling import MeanPoolingConfig, MeanPoolingForSequenceClassification

extract_features = load_recipe("extract_features")
train_head = load_recipe("train_head")
TOLERANCE = 1e-5
LONG = 12  # a long row repeats its text this often: far past --max_seq_length 16

LOAD_AND_SCORE = """
import torch
from PIL import Image

results = {}
for case in json.load(open(sys.argv[1])):
    namespace = {}
    exec(case["snippet"], namespace)  # the card's stock loading code, as a user copies it
    if "classifier" in namespace:
        classifier = namespace["classifier"]
        config = classifier.model.config
        names = [config.id2label[i] for i in range(config.num_labels)]
        rows = classifier(case["rows"], truncation=True, top_k=None)
        results[case["name"]] = [[{p["label"]: p["score"] for p in row}[name] for name in names] for row in rows]
    else:  # a timm model: softmax of its logits (one class per row)
        model, transform = namespace["model"], namespace["transform"]
        with torch.no_grad():
            pixels = torch.stack([transform(Image.open(path).convert("RGB")) for path in case["rows"]])
            results[case["name"]] = model(pixels).double().softmax(-1).tolist()
print(json.dumps(results))
"""


def make_three_class_files(directory: Path, sizes=(48, 24, 16)) -> Path:
    """train / validation / test CSVs of 3 classes: a positive word, a negative word, or neither ('neutral')."""
    import random

    for split, n, seed in zip(("train", "validation", "test"), sizes, (1, 2, 3)):
        rng = random.Random(seed)
        rows = []
        for i in range(n):
            kind = ("neg", "pos", "neutral")[i % 3]
            text = sentence(rng, int(kind == "pos"))
            if kind == "neutral":
                text = " ".join(w for w in text.split() if w not in POSITIVE + NEGATIVE)
            rows.append({"text": text, "label": kind})
        pd.DataFrame(rows).to_csv(directory / f"{split}.csv", index=False)
    return directory


def text_features(data: Path, feature_dir: Path, model: str, *flags: str) -> str:
    files = [f"--{split}_file={data / f'{split}.csv'}" for split in ("train", "validation", "test")]
    argv = ["--modality", "text", "--model_name_or_path", model, *files, "--max_seq_length", "16",
            "--feature_dir", str(feature_dir), *flags]  # fmt: skip
    return extract_features.main(argv)["feature_dir"]


def fit(features: str, out: Path, head: str, *flags: str) -> Path:
    argv = ["--features_dir", features, "--head", head, "--output_dir", str(out), "--max_iter", "300",
            "--epochs", "20", "--learning_rate", "1e-2", *flags]  # fmt: skip
    train_head.main(argv)
    return out


def predict(run_dir: Path, inputs: Path, output: Path) -> pd.DataFrame:
    assert cli_main(["predict", str(run_dir), "--input", str(inputs), "--output", str(output)]) in (0, None)
    return pd.read_csv(output)


def stock_part(run_dir: Path) -> str:
    """The card's loading code above the ftpeft part: what runs without ftpeft."""
    card = (run_dir / "README.md").read_text()
    snippet = card.split("## Load it\n\n```python\n", 1)[1].split("```", 1)[0]
    assert FTPEFT_PART in snippet, snippet
    return snippet.split(FTPEFT_PART, 1)[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir):
    """name -> (head run dir, input file or folder for `ftpeft predict`, the rows the stock loader scores)."""
    root = tmp_path_factory.mktemp("portable_heads")
    for folder in ("binary", "three", "sets", "numbers"):
        (root / folder).mkdir()
    data = {
        "binary": make_text_files(root / "binary"),
        "three": make_three_class_files(root / "three"),
        "sets": make_label_set_files(root / "sets"),
        "numbers": make_regression_files(root / "numbers"),
    }
    cache = root / "features"
    features = {
        "binary": text_features(data["binary"], cache, tiny_bert_dir, "--layer", "-2"),
        # the random tiny BERT's [CLS] state barely varies (sd ~0.003): a standardised head would amplify float32
        # noise past the tolerance, so [CLS] is read by the torch head, which trains on the raw features
        "binary_cls": text_features(data["binary"], cache, tiny_bert_dir, "--pooling", "cls", "--layer", "1"),
        "three": text_features(data["three"], cache, tiny_bert_dir, "--pooling", "mean"),
        "sets": text_features(data["sets"], cache, tiny_bert_dir, "--label_column", "tags", "--label_separator", ","),
        "numbers": text_features(data["numbers"], cache, tiny_bert_dir, "--label_column", "score", "--layer", "2"),
    }
    heads = {
        "binary_logreg": ("binary", "logreg"),
        "binary_linear_svm": ("binary", "linear_svm"),
        "binary_cls_linear": ("binary_cls", "linear"),
        "three_logreg": ("three", "logreg"),
        "sets_logreg": ("sets", "logreg"),
        "numbers_ridge": ("numbers", "ridge"),
    }
    result = {}
    for name, (kind, head) in heads.items():
        texts = list(pd.read_csv(data[kind.split("_")[0]] / "test.csv")["text"][:6])
        texts += [" ".join([text] * LONG) for text in texts[:2]]
        inputs = root / f"{name}.jsonl"
        inputs.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
        result[name] = (fit(features[kind], root / name, head), inputs, texts)

    images = write_class_folders(root / "images", per_class=6)
    argv = ["--image_dir", str(images), *TIMM_ARGS, "--feature_dir", str(root / "image_features"),
            "--validation_split_percentage", "25"]  # fmt: skip
    image_features = extract_features.main(argv)["feature_dir"]
    files = sorted(str(path) for path in images.rglob("*.jpg"))
    result["image_logreg"] = (fit(image_features, root / "image_logreg", "logreg"), images, files)
    return result


@pytest.mark.slow  # 6 text heads + 1 image head on tiny models, and a fresh interpreter: ~35 s on 2 shared cores
def test_linear_heads_load_without_ftpeft_and_score_as_ftpeft_predict(runs, tmp_path):
    cases, expected = [], {}
    for name, (run_dir, inputs, rows) in runs.items():
        image = name.startswith("image")
        assert (run_dir / (TIMM_MODEL_DIR if image else TEXT_MODEL_DIR) / "config.json").is_file()
        frame = predict(run_dir, inputs, tmp_path / f"{name}.csv")
        columns = [c for c in frame.columns if c not in ("id", "label", "labels")]
        if image:  # the CSV's id: the path under the folder, without its extension
            frame = frame.set_index("id").loc[[str(Path(f).relative_to(inputs).with_suffix("")) for f in rows]]
        expected[name] = frame[columns].to_numpy()
        cases.append({"name": name, "snippet": stock_part(run_dir), "rows": rows})
    scores = scores_without_ftpeft(LOAD_AND_SCORE, cases, tmp_path)
    assert set(scores) == set(expected)
    for name, want in expected.items():
        got = np.asarray(scores[name])
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= TOLERANCE, (name, np.abs(got - want).max())
    # a binary head's two probabilities, a label set's independent ones, numbers in the target's units
    assert np.allclose(expected["binary_logreg"].sum(axis=1), 1.0)
    assert expected["numbers_ridge"].mean() > 1.5  # the scores sit around 3, not at a z-score of 0


@pytest.mark.slow  # the runs of the test above
def test_the_complete_model_carries_the_target_readout_and_length(runs):
    run_dir = runs["sets_logreg"][0]
    config = json.loads((run_dir / TEXT_MODEL_DIR / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["label_thresholds"] == json.loads((run_dir / "thresholds.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("mean_pooling.")
    assert (config["head"], config["pooling"], config["readout_layer"]) == ("linear", "mean", -1)
    binary = json.loads((runs["binary_cls_linear"][0] / TEXT_MODEL_DIR / "config.json").read_text())
    assert (binary["pooling"], binary["readout_layer"], len(binary["id2label"])) == ("cls", 1, 2)
    tokenizer_config = json.loads((run_dir / TEXT_MODEL_DIR / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 16
    card = (run_dir / "README.md").read_text()
    assert f"Complete model: {TEXT_MODEL_DIR}/" in card and "library_name: transformers" in card


@pytest.mark.slow  # the runs of the test above
def test_ftpeft_predict_scores_the_complete_model_as_the_head(runs, tmp_path):
    """`ftpeft predict` on transformers_model/ cuts long rows at the extraction's length, as the head's run does."""
    run_dir, inputs, _ = runs["sets_logreg"]
    head = predict(run_dir, inputs, tmp_path / "head.csv")
    model = predict(run_dir / TEXT_MODEL_DIR, inputs, tmp_path / "model.csv")
    assert list(model.columns) == list(head.columns) and model["labels"].equals(head["labels"])
    names = [c for c in head.columns if c not in ("id", "labels")]
    assert np.abs(model[names].to_numpy() - head[names].to_numpy()).max() <= TOLERANCE


def test_the_readout_defaults_are_the_model_saved_before_them():
    """A config.json written before readout_layer, pooling and head existed loads as it did: mean of the last hidden
    state, dense + tanh."""
    from helpers import tiny_config

    encoder = tiny_config("bert").to_dict()
    old = MeanPoolingConfig.from_dict({"encoder_config": encoder, "num_labels": 2})
    assert (old.readout_layer, old.pooling, old.head) == (None, "mean", "dense_tanh")
    torch.manual_seed(0)
    model = MeanPoolingForSequenceClassification(old).eval()
    ids, mask = torch.tensor([[2, 5, 7, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = (states * mask[..., None]).sum(1) / mask.sum()
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                   model.classifier(torch.tanh(model.dense(mean))))  # fmt: skip
        linear = MeanPoolingConfig(encoder_config=encoder, num_labels=2, readout_layer=1, pooling="cls", head="linear")
        model = MeanPoolingForSequenceClassification(linear).eval()
        assert model.dense is None
        first = model.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1][:, 0]
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, model.classifier(first))
    with pytest.raises(ValueError, match="pooling 'max'"):
        MeanPoolingConfig(pooling="max")


IMAGE = {"modality": "image"}
TEXT = {"modality": "text"}


def feature_meta(modality: dict, *layers: str) -> dict:
    """head_config.json's ``features`` for backbones read at ``layers``."""
    backbones = [{"model": f"m{i}", "layer": layer} for i, layer in enumerate(layers)]
    return {**modality, "request": {"backbones": backbones}}


@pytest.mark.parametrize(
    ("head", "meta", "reason"),
    [
        ("logreg", feature_meta(TEXT, "-2"), None),
        ("ridge", feature_meta(TEXT, "0"), None),
        ("linear_svm", feature_meta(IMAGE, "pre_logits"), None),
        ("linear", feature_meta(IMAGE, "pre_logits"), None),
        ("random_forest", feature_meta(TEXT, "-1"), "--head random_forest is a tree ensemble, not one linear layer"),
        ("hist_gb", feature_meta(IMAGE, "pre_logits"), "--head hist_gb is a tree ensemble"),
        ("mlp", feature_meta(TEXT, "-1"), "--head mlp is an MLP, not one linear layer"),
        ("logreg", feature_meta(TEXT, "-1", "-1"), "the features concatenate 2 backbones; no one model holds them"),
        ("logreg", feature_meta(IMAGE, "layer3"), "--layer layer3, not the pre-logits its classifier slot reads"),
        ("logreg", feature_meta(TEXT, "encoder.layer.1"), "the module --layer encoder.layer.1 (a hook)"),
    ],
)
def test_only_a_linear_head_on_one_backbones_final_features_is_exported(head, meta, reason):
    got = why_not_exported(head, meta)
    assert got == reason if reason is None else reason in got


def test_a_head_that_is_not_linear_says_so_in_the_card(tmp_path, tiny_bert_dir):
    data = tmp_path / "data"
    data.mkdir()
    make_text_files(data, sizes=(24, 8, 8))
    out = fit(text_features(data, tmp_path / "features", tiny_bert_dir), tmp_path / "mlp", "mlp", "--epochs", "2")
    assert not (out / TEXT_MODEL_DIR).exists()
    card = (out / "README.md").read_text()
    assert "No complete model: --head mlp is an MLP, not one linear layer; the head runs with ftpeft" in card
    assert FTPEFT_PART not in card and 'load_torch_head("' in card
