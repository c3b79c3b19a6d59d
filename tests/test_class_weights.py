"""--class_weights balanced|none|FILE: the weights, the loss, the refusals, the record, macro-F1 checkpoints."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import (
    TIMM_ARGS,
    load_recipe,
    make_text_files,
    make_tiny_text_model,
    make_wordpiece_tokenizer,
    tiny_args,
    write_class_folders,
    write_knowledge_dataset,
)

from ftpeft.core.class_weights import compute_class_weights, weighted_cross_entropy
from ftpeft.core.errors import FtpeftError, run_cli
from ftpeft.core.trainer import FtpeftTrainer

bert_cls = load_recipe("bert_cls")
NAMES = ["neg", "neu", "pos"]
SKEWED = [0] * 14 + [1] * 5 + [2] * 1  # 70 / 25 / 5 %


@pytest.mark.parametrize(
    "labels,names",
    [(SKEWED, NAMES), ([0, 0, 0, 1], ["a", "b"]), ([1, 1, 0, 2, 2, 2, 2, 2], NAMES)],
)
def test_balanced_weights_equal_scikit_learns(labels, names):
    from sklearn.utils.class_weight import compute_class_weight

    expected = compute_class_weight("balanced", classes=np.arange(len(names)), y=np.asarray(labels))
    assert compute_class_weights("balanced", labels, names) == pytest.approx(expected.tolist())
    counts = np.bincount(labels, minlength=len(names))
    assert compute_class_weights("balanced", labels, names) == pytest.approx(len(labels) / (len(names) * counts))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "name,text",
    [
        ("w.json", '{"pos": 3, "neg": 1, "neu": 0.5}'),
        ("w.csv", "label,weight\nneg,1\nneu,0.5\npos,3\n"),
        ("w.csv", "pos,3\nneg,1\nneu,0.5\n"),  # no header
    ],
)
def test_a_weights_file_maps_label_names_to_class_ids(tmp_path, name, text):
    assert compute_class_weights(write(tmp_path, name, text), SKEWED, NAMES) == [1.0, 0.5, 3.0]


def test_none_means_no_weights():
    assert compute_class_weights("none", SKEWED, NAMES) is None


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("w.json", '{"neg": 1, "neu": 1, "pos": 1, "happy": 2}', r"unknown label\(s\) \['happy'\]"),
        ("w.json", '{"neg": 1, "pos": 2}', r"no weight for label\(s\) \['neu'\]"),
        ("w.json", '{"neg": 1, "neu": -0.5, "pos": 2}', "the weight of 'neu' must be a finite number >= 0"),
        ("w.csv", "neg,1\nneu,nan\npos,1\n", "the weight of 'neu' must be a finite number >= 0"),
        ("w.json", "[1, 2, 3]", "expected a JSON object"),
        ("w.csv", "neg,1,2\n", "expected two columns"),
        ("w.txt", "neg 1\n", "unknown format '.txt'"),
        ("w.json", '{"neg": 0, "neu": 0, "pos": 0}', "every weight is 0"),
    ],
)
def test_a_bad_weights_file_is_refused_with_one_line(tmp_path, name, text, message):
    with pytest.raises(FtpeftError, match=message) as error:
        compute_class_weights(write(tmp_path, name, text), SKEWED, NAMES)
    assert "\n" not in str(error.value)


def test_balanced_needs_every_class_in_training():
    with pytest.raises(FtpeftError, match="class\\(es\\) pos have no training examples"):
        compute_class_weights("balanced", [0, 0, 1], NAMES)


def test_the_weighted_loss_is_the_hand_computed_weighted_mean():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 0, 2])
    weights = [0.5, 2.0, 3.0]
    log_probs = logits.log_softmax(-1)
    per_example = [-log_probs[i, y] * weights[y] for i, y in enumerate(labels.tolist())]
    expected = sum(per_example) / sum(weights[y] for y in labels.tolist())
    assert weighted_cross_entropy(logits, labels, torch.tensor(weights)) == pytest.approx(float(expected), rel=1e-6)
    uniform = weighted_cross_entropy(logits, labels, torch.ones(3))
    assert uniform == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-6)


class LogitsOnly(torch.nn.Module):
    """A model whose forward returns logits only, as the cached-prefix and peft-wrapped models can."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, features, labels=None):
        return {"logits": self.linear(features)}


def test_the_trainer_computes_the_weighted_loss_on_a_batch(tmp_path):
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = LogitsOnly()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = FtpeftTrainer(model=model, args=args, class_weights=[0.5, 2.0, 3.0])
    batch = {"features": torch.randn(6, 4), "labels": torch.tensor([0, 1, 2, 2, 0, 1])}
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True, num_items_in_batch=6)
    weights = torch.tensor([0.5, 2.0, 3.0])
    nll = -outputs["logits"].log_softmax(-1)[torch.arange(6), batch["labels"]]
    expected = (weights[batch["labels"]] * nll).sum() / weights[batch["labels"]].sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "labels" in batch and trainer.loss_is_scaled_for_ga is False  # Trainer averages accumulation steps


@pytest.fixture(scope="module")
def skewed_csv_dir(tmp_path_factory):
    """Text files whose training split is 3:1 neg:pos."""
    import pandas as pd

    directory = make_text_files(tmp_path_factory.mktemp("skewed"))
    train = pd.read_csv(directory / "train.csv")
    keep = pd.concat([train[train.label == "neg"], train[train.label == "pos"].head(11)])
    keep.to_csv(directory / "train.csv", index=False)
    return directory


def test_the_recipe_records_the_weights_in_settings_and_card(tiny_bert_dir, skewed_csv_dir, tmp_path):
    out = tmp_path / "run"
    bert_cls.main(tiny_args(tiny_bert_dir, skewed_csv_dir, out, "--unfreeze-last", "1", "--class_weights", "balanced"))
    settings = json.loads((out / "resolved_settings.json").read_text())["class_weights"]
    assert settings["given"] == "balanced"
    assert settings["used"] == pytest.approx({"neg": 43 / 64, "pos": 43 / 22}, rel=1e-5)  # 32 neg, 11 pos
    assert "class_weights: balanced" in (out / "run_args.yaml").read_text()
    card = (out / "README.md").read_text()
    assert "class-weighted cross-entropy (--class_weights balanced" in card and "pos 1.95" in card


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"neg": 1, "pos": 1, "happy": 2}', "error: --class_weights .*unknown label\\(s\\) \\['happy'\\]"),
        ('{"neg": 1, "pos": -2}', "error: --class_weights .*the weight of 'pos' must be a finite number >= 0"),
    ],
)
def test_the_recipe_refuses_a_bad_file_with_one_line_and_exit_2(
    tiny_bert_dir, text_csv_dir, tmp_path, capsys, content, message
):
    weights = tmp_path / "weights.json"
    weights.write_text(content)
    with pytest.raises(SystemExit) as exit:
        run_cli(bert_cls.main)(
            tiny_args(tiny_bert_dir, text_csv_dir, tmp_path / "out", "--class_weights", str(weights))
        )
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.search(message, err[0])


def test_macro_f1_chooses_the_checkpoint_loaded_at_the_end(tiny_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "run"
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "1", "--class_weights", "balanced")
    argv += ["--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps"]
    argv += ["--save_steps", "2", "--save_total_limit", "2", "--learning_rate", "3e-3", "--head_lr", "3e-3"]
    metrics = bert_cls.main(argv + ["--load_best_model_at_end", "--metric_for_best_model", "macro_f1"])
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    scores = {entry["step"]: entry["eval_macro_f1"] for entry in state["log_history"] if "eval_macro_f1" in entry}
    assert set(scores) == {2, 4}  # Trainer found 'macro_f1' as eval_macro_f1
    best_step = max(scores, key=scores.get)  # the first of equals, as Trainer keeps the earlier on a tie
    assert state["best_metric"] == pytest.approx(scores[best_step])
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert metrics["eval_macro_f1"] == pytest.approx(scores[best_step])  # the final evaluation is the best model


def image_argv(tmp_path, out, weights):
    images = write_class_folders(tmp_path / "images", per_class=6)
    return ["--image_dir", str(images), *TIMM_ARGS, "--unfreeze-last", "1", "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_strategy", "no",
            "--save_strategy", "no", "--class_weights", weights]  # fmt: skip


def knowledge_argv(tmp_path, out, weights):
    model = make_tiny_text_model(tmp_path / "kb_bert", num_layers=2, tokenizer=make_wordpiece_tokenizer(), head=False)
    data = write_knowledge_dataset(tmp_path / "train.jsonl")
    return ["--model_name_or_path", model, "--train_file", str(data), "--output_dir", str(out),
            "--inject", "concat", "--use_peft", "--lora_r", "2", "--unfreeze_last", "0", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--validation_split_percentage", "25", "--eval_strategy", "no",
            "--save_strategy", "no", "--class_weights", weights]  # fmt: skip


@pytest.mark.parametrize(
    "recipe,make_argv,weights,expected",
    [
        ("image_cls", image_argv, '{"beagle": 1, "collie": 2, "pug": 0.5}', {"beagle": 1, "collie": 2, "pug": 0.5}),
        ("knowledge_cls", knowledge_argv, "balanced", None),  # LoRA-wrapped knowledge model: logits from peft
    ],
)
def test_every_trainer_recipe_trains_with_class_weights(tmp_path, recipe, make_argv, weights, expected):
    if weights.startswith("{"):
        (tmp_path / "weights.json").write_text(weights)
        weights = str(tmp_path / "weights.json")
    out = tmp_path / "run"
    metrics = load_recipe(recipe).main(make_argv(tmp_path, out, weights))
    used = json.loads((out / "resolved_settings.json").read_text())["class_weights"]["used"]
    assert used == (expected or pytest.approx(used)) and len(used) >= 2 and all(w > 0 for w in used.values())
    assert "class-weighted cross-entropy" in (out / "README.md").read_text()
    assert metrics["train_loss"] > 0
