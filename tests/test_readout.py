"""The head-only readout: --pooling auto|cls|mean, the mean-pooling model class, and what k=0 trains."""

import json
import shlex

import numpy as np
import pytest
import torch
from helpers import ROOT, load_recipe, make_tiny_text_model, text_batch, tiny_args, tiny_model

from ftpeft import FtpeftError, MeanPoolingForSequenceClassification, build_param_groups, layer_map, unfreeze_last
from ftpeft.text.pooling import build_mean_pooling_classifier, checkpoint_pooling, resolve_pooling

bert_cls = load_recipe("bert_cls")
LABELS = ["neg", "pos"]


def as_sentence_transformers(folder, mean=True):
    """Add the files sentence-transformers writes next to the weights (modules.json + 1_Pooling/config.json)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    pooling = {"pooling_mode_mean_tokens": mean, "pooling_mode_cls_token": not mean}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


@pytest.fixture(scope="module")
def sentence_bert_dir(tmp_path_factory):
    """The tiny BERT, saved as a mean-pooled sentence-transformers checkpoint."""
    folder = tmp_path_factory.mktemp("sentence_bert")
    make_tiny_text_model(folder, head=False)
    return as_sentence_transformers(folder)


def train_steps(model, steps=3):
    model.train()
    optimizer = torch.optim.AdamW(build_param_groups(model, 1e-2), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**text_batch()).loss.backward()
        optimizer.step()


def changed_by_training(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model)
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


# --- which readout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested,trained_with,k,use_peft,expected",
    [
        ("auto", "mean", 0, False, "mean"),  # a frozen sentence encoder: read it as it was trained
        ("auto", "mean", 2, False, "cls"),  # trained layers adapt [CLS]; the stock model loads without ftpeft
        ("auto", "mean", None, False, "cls"),
        ("auto", "mean", 0, True, "cls"),  # LoRA reloads onto the stock class
        ("auto", "cls", 0, False, "cls"),  # a CLS-pooled sentence encoder
        ("auto", None, 0, False, "cls"),  # not a sentence-transformers checkpoint
        ("mean", None, 2, False, "mean"),  # as given
        ("cls", "mean", 0, False, "cls"),
    ],
)
def test_auto_pooling_picks_mean_only_for_a_frozen_mean_pooled_checkpoint(
    requested, trained_with, k, use_peft, expected
):
    used, why = resolve_pooling(requested, trained_with, k, use_peft)
    assert used == expected and why


def test_mean_pooling_with_lora_is_refused():
    with pytest.raises(FtpeftError, match="--pooling mean cannot be used with --use_peft"):
        resolve_pooling("mean", "mean", 0, True)


def test_checkpoint_pooling_reads_the_sentence_transformers_files(tmp_path, sentence_bert_dir):
    assert checkpoint_pooling(str(sentence_bert_dir)) == "mean"
    cls_model = tmp_path / "cls_model"
    cls_model.mkdir()
    assert checkpoint_pooling(str(as_sentence_transformers(cls_model, mean=False))) == "cls"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert checkpoint_pooling(str(plain)) is None


# --- what k=0 trains ----------------------------------------------------------------------------------------


def test_k0_on_the_stock_model_trains_the_pooler_and_the_head():
    model = tiny_model("bert")
    layers = layer_map(model)
    report = unfreeze_last(model, 0)
    assert changed_by_training(model) == set(layers.head) | set(layers.top)
    assert layers.top == ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
    assert report.groups["top"]["trainable"] == report.groups["top"]["total"] > 0


def test_k0_on_the_mean_pooling_model_trains_only_its_head(sentence_bert_dir):
    torch.manual_seed(0)
    model, new = build_mean_pooling_classifier(str(sentence_bert_dir), LABELS)
    layers = layer_map(model)
    assert layers.source == "table:bert" and layers.top == [] and not layers.other  # the [CLS] pooler is gone
    assert sorted(new) == sorted(layers.head) == ["classifier.bias", "classifier.weight", "dense.bias", "dense.weight"]
    unfreeze_last(model, 0)
    assert changed_by_training(model) == set(layers.head)


def test_the_mean_pooling_model_keeps_the_checkpoint_encoder_and_ignores_padding(sentence_bert_dir):
    from transformers import AutoModel

    model, _ = build_mean_pooling_classifier(str(sentence_bert_dir), LABELS)
    encoder = AutoModel.from_pretrained(sentence_bert_dir)
    for name, tensor in encoder.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(model.encoder.state_dict()[name], tensor), name
    model.eval()
    batch = text_batch()
    batch.pop("labels")
    padded = {key: torch.nn.functional.pad(value, (0, 3)) for key, value in batch.items()}  # 3 more [PAD]s
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, model(**padded).logits, atol=1e-5)


# --- the recipe ---------------------------------------------------------------------------------------------


def test_head_only_run_uses_mean_pooling_and_reloads_with_identical_logits(sentence_bert_dir, text_csv_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out = tmp_path / "run"
    bert_cls.main(tiny_args(sentence_bert_dir, text_csv_dir, out, "--unfreeze-last", "0", "--max_steps", "3"))
    settings = json.loads((out / "resolved_settings.json").read_text())
    assert settings["pooling"]["given"] == "auto" and settings["pooling"]["used"] == "mean"
    assert json.loads((out / "config.json").read_text())["model_type"] == "ftpeft-mean-pooling"
    freeze = json.loads((out / "freeze_report.json").read_text())
    assert freeze["trainable_layers"] == [] and freeze["groups"]["head"]["trainable"] == freeze["trainable_params"]
    card = (out / "README.md").read_text()
    assert "Readout: mean pooling" in card and "trust_remote_code=True" in card and "import ftpeft" not in card

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()  # ftpeft is imported: registered
    assert isinstance(model, MeanPoolingForSequenceClassification)
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = ["good film was great", "bad plot and boring actor"]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    again = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(logits, again(**tokenizer(texts, padding=True, return_tensors="pt")).logits)
    predictions = pipeline("text-classification", model=str(out), top_k=None)(texts)
    for row, scores in zip(predictions, logits.softmax(-1)):
        by_label = {p["label"]: p["score"] for p in row}
        assert [by_label[name] for name in LABELS] == pytest.approx(scores.tolist(), rel=1e-5)


def test_layers_that_train_keep_the_stock_model(sentence_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "run"
    bert_cls.main(tiny_args(sentence_bert_dir, text_csv_dir, out, "--unfreeze-last", "1"))
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert json.loads((out / "resolved_settings.json").read_text())["pooling"]["used"] == "cls"


def test_mean_pooling_trains_from_the_frozen_prefix_cache_with_class_weights(sentence_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "run"
    metrics = bert_cls.main(
        tiny_args(sentence_bert_dir, text_csv_dir, out, "--unfreeze-last", "0", "--cache_frozen",
                  "--activation_cache_dir", str(tmp_path / "cache"), "--class_weights", "balanced")
    )  # fmt: skip
    assert json.loads((out / "config.json").read_text())["model_type"] == "ftpeft-mean-pooling"
    assert json.loads((out / "resolved_settings.json").read_text())["class_weights"]["used"] == {"neg": 1, "pos": 1}
    assert metrics["train_loss"] > 0 and 0 <= metrics["test_accuracy"] <= 1


# --- the frozen-feature route -------------------------------------------------------------------------------


def test_text_features_batched_by_length_keep_the_row_order(tiny_bert_dir):
    """extract_features sorts texts by length so batches pad little; each row is still its own text's features."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoModel, AutoTokenizer

    from ftpeft.features.extract import Backbone, extract_text_splits

    texts = ["good", "the film was a very good story and a fine plot", "bad actor", "awful", "the plot was boring"]
    data = DatasetDict({"train": Dataset.from_dict({"text": texts, "labels": [1, 1, 0, 0, 0]})})
    backbone = Backbone(
        "tiny", AutoModel.from_pretrained(tiny_bert_dir).eval(), None, "mean",
        AutoTokenizer.from_pretrained(tiny_bert_dir), {"max_seq_length": 32},
    )  # fmt: skip
    batched, labels = extract_text_splits([backbone], data, ["text"], batch_size=2)["train"]
    one_by_one, _ = extract_text_splits([backbone], data, ["text"], batch_size=1)["train"]  # no padding at all
    assert labels.tolist() == [1, 1, 0, 0, 0]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_the_documented_text_feature_commands_parse():
    """The docs' text frozen-feature route (mean pooling + logreg) names flags the recipes take."""
    page = (ROOT / "docs" / "recipes" / "features.md").read_text()
    lines = [line for line in page.splitlines() if "outputs/features/tweets" in line]
    commands = {shlex.split(line)[1]: shlex.split(line)[2:] for line in lines if line.startswith("python recipes/")}
    feature_args, _ = load_recipe("extract_features").parse(commands["recipes/extract_features.py"])
    assert (feature_args.modality, feature_args.pooling) == ("text", "mean")
    head_args, _ = load_recipe("train_head").parse(commands["recipes/train_head.py"])
    assert head_args.head == "logreg" and head_args.features_dir == feature_args.feature_dir
