"""The argument system: precedence, YAML checks, aliases, and a re-feedable resolved config."""

import os

import pytest
import yaml
from transformers import TrainingArguments

from ftpeft.core.config import RunArguments, command_line, parse_args, save_resolved_config
from ftpeft.core.errors import FtpeftError
from ftpeft.text.args import ModelArguments, TextDataArguments
from ftpeft.tuning.args import TuningArguments

TYPES = (ModelArguments, TextDataArguments, TuningArguments, RunArguments, TrainingArguments)
RECIPE_DEFAULTS = {"learning_rate": 1e-5, "num_train_epochs": 2.0, "output_dir": "out"}


def parse(argv, yaml_text=None, tmp_path=None):
    if yaml_text is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml_text)
        argv = ["--config", str(path), *argv]
    return parse_args(TYPES, argv, RECIPE_DEFAULTS)


@pytest.mark.parametrize(
    "yaml_text,argv,expected_lr,expected_epochs",
    [
        (None, [], 1e-5, 2.0),  # recipe default beats dataclass default
        ("learning_rate: 2.0e-5\n", [], 2e-5, 2.0),  # YAML beats recipe default
        ("learning_rate: 2.0e-5\n", ["--learning_rate", "3e-5"], 3e-5, 2.0),  # CLI beats YAML
        ("num_train_epochs: 5\n", ["--learning_rate", "3e-5"], 3e-5, 5.0),
    ],
)
def test_precedence(tmp_path, yaml_text, argv, expected_lr, expected_epochs):
    *_, training = parse(argv, yaml_text, tmp_path)
    assert training.learning_rate == expected_lr
    assert training.num_train_epochs == expected_epochs


@pytest.mark.parametrize("flag", ["--unfreeze-last", "--unfreeze_last"])
def test_hyphen_and_underscore_flags(flag):
    _, _, tuning, _, _ = parse([flag, "3"])
    assert tuning.unfreeze_last_k == 3


@pytest.mark.parametrize("value,expected", [("all", None), ("-1", None), ("0", 0), ("6", 6)])
def test_unfreeze_last_values(value, expected):
    assert parse(["--unfreeze_last", value])[2].unfreeze_last_k == expected


@pytest.mark.parametrize(
    "yaml_text,argv,message",
    [
        ("learnin_rate: 1e-4\n", [], "unknown key 'learnin_rate'. Did you mean 'learning_rate'"),
        (
            "learning_rate: fast\n",
            [],
            r"config.yaml: argument --learning_rate/--learning-rate: invalid float value: 'fast'",
        ),
        ("- a\n- b\n", [], "expected a mapping"),
        (None, ["--unfreeze_last", "-3"], "--unfreeze_last must be >= 0"),
        (None, ["--unfreeze_last", "top"], "--unfreeze_last must be a layer count"),
        (None, ["--lora_r", "0"], "--lora_r must be >= 1, got 0"),
        (None, ["--no_such_flag", "1"], r"unknown argument\(s\): \['--no_such_flag', '1'\]"),
        (None, ["--layer_decay", "1.5"], "--layer_decay must be in"),
    ],
)
def test_bad_arguments_name_the_culprit(tmp_path, yaml_text, argv, message):
    with pytest.raises(FtpeftError, match=message):
        parse(argv, yaml_text, tmp_path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FtpeftError, match="no such file"):
        parse_args(TYPES, ["--config", str(tmp_path / "nope.yaml")])


def test_resolved_config_round_trips_and_hides_the_token(tmp_path):
    token = "hf_" + "a" * 30
    parsed = parse(
        ["--unfreeze-last", "2", "--lr_scheduler_type", "cosine", "--hub_token", token, "--text_columns", "a", "b"]
    )
    assert "hub_token" not in parsed.resolved
    path = tmp_path / "run_args.yaml"
    save_resolved_config(path, parsed.resolved)
    assert token not in path.read_text()
    again = parse_args(TYPES, ["--config", str(path)])
    assert again.resolved == parsed.resolved
    assert again[2].unfreeze_last_k == 2 and again[1].text_columns == ["a", "b"]
    assert yaml.safe_load(path.read_text())["learning_rate"] == 1e-5


def test_command_line_redacts_tokens():
    token = "hf_" + "b" * 30
    text = command_line(["recipe.py", "--hub_token", token, f"--hub-token={token}", "--lr", "1"])
    assert token not in text and "--hub_token ***" in text


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"LOCAL_RANK": "1", "WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "False"}, "true"),  # what --multi_gpu exports
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "true"),
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "true"}, "true"),
        ({}, None),  # a plain one-process run is left alone
    ],
)
def test_cpu_ranks_are_real_ranks_without_a_gpu(monkeypatch, env, expected):
    import torch

    from ftpeft.core.config import use_cpu_ranks_without_gpu

    for key in ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_USE_CPU"):
        monkeypatch.setenv(key, "")  # recorded, so whatever the function sets is undone after the test
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    use_cpu_ranks_without_gpu()
    got = os.environ.get("ACCELERATE_USE_CPU")
    assert (got.lower() if got else None) == expected
