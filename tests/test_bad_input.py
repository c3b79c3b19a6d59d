"""The bad-input matrix: each case exits with code 2 and one line naming the culprit, without a traceback,
and leaves every file that existed before the run byte-identical."""

import pandas as pd
import pytest
from helpers import (
    ROOT,
    accelerate_bin,
    load_recipe,
    make_text_files,
    make_tiny_text_model,
    run,
    snapshot,
    tiny_args,
)

from ftpeft.core.errors import run_cli

bert_cls = load_recipe("bert_cls")


@pytest.fixture
def workspace(tmp_path, tiny_bert_dir):
    """Data, a model copy and an output dir inside one folder whose bytes the test compares before/after."""
    data = tmp_path / "data"
    data.mkdir()
    make_text_files(data)
    return {"root": tmp_path, "data": data, "model": tiny_bert_dir, "out": tmp_path / "out"}


def edit_csv(path, **changes):
    frame = pd.read_csv(path)
    for column, value in changes.items():
        if value is None:
            frame = frame.drop(columns=[column])
        else:
            frame.loc[0, column] = value
    frame.to_csv(path, index=False)


def write(path, text):
    path.write_text(text)
    return str(path)


def non_empty_output_dir(workspace) -> list[str]:
    workspace["out"].mkdir()
    write(workspace["out"] / "keep.txt", "mine")
    return []


# (case id, setup(workspace) -> extra argv, text the message must contain)
TEXT_CASES = [
    (
        "label column missing",
        lambda w: edit_csv(w["data"] / "train.csv", label=None) or [],
        "--label_column 'label' not found in the train split; columns: ['text']",
    ),
    (
        "label column misnamed",
        lambda w: ["--label_column", "stars"],
        "--label_column 'stars' not found in the train split; columns: ['text', 'label']",
    ),
    (
        "text column misnamed",
        lambda w: ["--text_columns", "review"],
        "--text_columns ['review'] not found; the data has columns ['text', 'label']",
    ),
    (
        "unknown label in validation",
        lambda w: edit_csv(w["data"] / "validation.csv", label="meh") or [],
        "validation split has label(s) ['meh'] never seen in training",
    ),
    (
        "empty training file",
        lambda w: write(w["data"] / "train.csv", "text,label\n") and [],
        "train.csv has no data rows",
    ),
    (
        "unknown data format",
        lambda w: ["--train_file", write(w["data"] / "train.txt", "x")],
        "--train_file " + "{data}/train.txt: unknown format '.txt'",
    ),
    (
        "k larger than the model",
        lambda w: ["--unfreeze-last", "9"],
        "--unfreeze_last 9 is larger than the model's 4 layers",
    ),
    ("k negative", lambda w: ["--unfreeze-last", "-3"], "--unfreeze_last must be >= 0 or 'all'/-1, got -3"),
    (
        "architecture with shared layers",
        lambda w: ["--model_name_or_path", w["albert"], "--unfreeze-last", "1"],
        "ALBERT shares one set of weights",
    ),
    (
        "LoRA targets that match nothing",
        lambda w: ["--use_peft", "--lora_target_modules", "q_proj"],
        "--lora_target_modules ['q_proj'] match no module of this model; Linear layers it has:",
    ),
    ("LoRA rank 0", lambda w: ["--use_peft", "--lora_r", "0"], "--lora_r must be >= 1, got 0"),
    (
        "LoRA on a type peft has no defaults for",
        lambda w: ["--model_name_or_path", w["distilbert"], "--use_peft"],
        "no default target modules for model type 'distilbert'",
    ),
    (
        "unknown YAML key",
        lambda w: ["--config", write(w["root"] / "c.yaml", "learning_rat: 1e-4\n")],
        "unknown key 'learning_rat'. Did you mean 'learning_rate'?",
    ),
    (
        "wrong type in YAML",
        lambda w: ["--config", write(w["root"] / "c.yaml", "num_train_epochs: many\n")],
        "c.yaml: argument --num_train_epochs/--num-train-epochs: expected a number of epochs or 'auto', got 'many'",
    ),
    (
        "non-empty output dir",
        lambda w: non_empty_output_dir(w),
        "--output_dir {out} is not empty (keep.txt); pass --overwrite_output_dir",
    ),
    (
        "missing checkpoint for resume",
        lambda w: ["--resume_from_checkpoint", str(w["root"] / "checkpoint-9")],
        "--resume_from_checkpoint {root}/checkpoint-9: no such checkpoint directory",
    ),
    (
        "model path that does not exist",
        lambda w: ["--model_name_or_path", str(w["root"] / "nope")],
        "--model_name_or_path {root}/nope: no such directory",
    ),
    ("cache without frozen layers", lambda w: ["--cache_frozen"], "--cache_frozen needs --unfreeze_last k (not 'all')"),
    (
        "cache dtype",
        lambda w: ["--unfreeze-last", "1", "--cache_frozen", "--cache_dtype", "int8"],
        "--cache_dtype must be float16, bfloat16 or float32",
    ),
    ("push without repo or login", lambda w: ["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
]


@pytest.fixture(scope="session")
def other_models(tmp_path_factory):
    albert = make_tiny_text_model(tmp_path_factory.mktemp("albert"), "albert", num_layers=2)
    distilbert = make_tiny_text_model(tmp_path_factory.mktemp("distilbert"), "distilbert")
    return {"albert": str(albert), "distilbert": distilbert}


@pytest.mark.parametrize("setup,message", [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_text_recipe_bad_input(workspace, other_models, setup, message, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    workspace.update(other_models)
    extra = setup(workspace)
    before = snapshot(workspace["root"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(bert_cls.main)(tiny_args(workspace["model"], workspace["data"], workspace["out"], *extra))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    expected = message.format(data=workspace["data"], out=workspace["out"], root=workspace["root"])
    assert expected in err, err
    assert err.strip().count("\n") == 0 and err.startswith("error: ")  # one line
    assert snapshot(workspace["root"]) == before


@pytest.mark.slow  # accelerate's launcher in a subprocess
def test_bad_accelerate_config_path_names_the_file(tmp_path):
    missing = tmp_path / "no_such_config.yaml"
    result = run(
        [accelerate_bin(), "launch", "--config_file", str(missing), str(ROOT / "recipes/bert_cls.py"), "--help"]
    )
    assert result.returncode != 0
    assert "no_such_config.yaml" in result.stderr
