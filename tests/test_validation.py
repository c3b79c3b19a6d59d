"""Bad values and damaged files are refused before any work, with one line naming the culprit.

One row per argument rule, run through the recipes' own ``parse``; a test that every numeric/enum field of
every ftpeft argument dataclass declares a rule and enforces it; and the artifact checks (damaged weights,
missing config, a model folder without tokenizer files, an all-[UNK] tokenizer, a damaged checkpoint).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil
import re
import shutil
import types
import typing
from pathlib import Path

import numpy as np
import pytest
from helpers import load_recipe, make_tiny_text_model, make_tokenizer, snapshot, tiny_args

import ftpeft
from ftpeft.core.artifacts import check_safetensors, safetensors_problem
from ftpeft.core.errors import FtpeftError, run_cli
from ftpeft.core.outputs import last_complete_checkpoint, resolve_resume
from ftpeft.core.validation import TRAINING_RULES, Range

RECIPES = {
    name: load_recipe(name) for name in ("bert_cls", "image_cls", "knowledge_cls", "extract_features", "train_head")
}

# (recipe, argv, message fragment); the recipe parses with its own defaults, as on the command line
RULE_CASES = [
    # text data
    ("bert_cls", ["--validation_split_percentage", "0"], "--validation_split_percentage must be in [1, 99], got 0."),
    ("bert_cls", ["--max_train_samples", "0"], "--max_train_samples must be >= 1, got 0."),
    ("bert_cls", ["--max_eval_samples", "-1"], "--max_eval_samples must be >= 1, got -1."),
    ("bert_cls", ["--max_test_samples", "0"], "--max_test_samples must be >= 1, got 0."),
    ("bert_cls", ["--max_seq_length", "0"], "--max_seq_length must be >= 1, got 0."),
    ("bert_cls", ["--demo_train_samples", "0"], "--demo_train_samples must be >= 1, got 0."),
    ("bert_cls", ["--demo_test_samples", "0"], "--demo_test_samples must be >= 1, got 0."),
    ("bert_cls", ["--preprocessing_num_workers", "0"], "--preprocessing_num_workers must be >= 1, got 0."),
    # tuning
    ("bert_cls", ["--head_lr", "0"], "--head_lr must be > 0, got 0.0."),
    ("bert_cls", ["--head_lr", "nan"], "--head_lr must be a finite number > 0, got nan."),
    ("bert_cls", ["--layer_decay", "0"], "--layer_decay must be in (0, 1], got 0.0."),
    ("bert_cls", ["--layer_decay", "1.5"], "--layer_decay must be in (0, 1], got 1.5."),
    ("bert_cls", ["--lora_r", "0"], "--lora_r must be >= 1, got 0."),
    ("bert_cls", ["--lora_alpha", "0"], "--lora_alpha must be >= 1, got 0."),
    ("bert_cls", ["--lora_dropout", "1"], "--lora_dropout must be in [0, 1), got 1.0."),
    ("bert_cls", ["--lora_lr=-1e-3"], "--lora_lr must be > 0, got -0.001."),
    ("bert_cls", ["--lora_layers", "0"], "--lora_layers must be >= 1, got 0."),
    ("bert_cls", ["--cache_dtype", "int8"], "--cache_dtype must be float16, bfloat16 or float32, got 'int8'."),
    ("bert_cls", ["--unfreeze_last", "-3"], "--unfreeze_last must be >= 0 or 'all'/-1, got -3."),
    ("bert_cls", ["--pooling", "max"], "--pooling must be auto, cls or mean, got 'max'."),
    ("image_cls", ["--class_weights", "weights.json"], "--class_weights weights.json: no such file"),
    # TrainingArguments: the TRAINING_RULES table
    ("bert_cls", ["--learning_rate", "nan"], "--learning_rate must be a finite number > 0, got nan."),
    ("bert_cls", ["--learning_rate", "inf"], "--learning_rate must be a finite number > 0, got inf."),
    ("bert_cls", ["--learning_rate", "0"], "--learning_rate must be > 0, got 0.0."),
    ("bert_cls", ["--weight_decay", "-0.1"], "--weight_decay must be >= 0, got -0.1."),
    ("bert_cls", ["--num_train_epochs", "0"], "--num_train_epochs must be > 0 unless --max_steps > 0, got 0.0"),
    ("bert_cls", ["--num_train_epochs", "nan"], "--num_train_epochs must be a finite number >= 0, got nan."),
    ("bert_cls", ["--max_steps", "0"], "--max_steps must be >= 1, or -1 (train --num_train_epochs), got 0."),
    ("bert_cls", ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1, got 0."),
    ("bert_cls", ["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size must be >= 1, got 0."),
    ("bert_cls", ["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1, got 0."),
    ("bert_cls", ["--eval_accumulation_steps", "0"], "--eval_accumulation_steps must be >= 1, got 0."),
    ("bert_cls", ["--warmup_steps", "-0.5"], "--warmup_steps must be >= 0, got -0.5."),
    ("bert_cls", ["--logging_steps", "0"], "--logging_steps must be > 0, got 0.0."),
    ("bert_cls", ["--eval_strategy", "steps", "--eval_steps", "0"], "--eval_steps must be > 0, got 0.0."),
    ("bert_cls", ["--save_strategy", "steps", "--save_steps", "-1"], "--save_steps must be > 0, got -1.0."),
    ("bert_cls", ["--save_strategy", "no", "--save_steps", "nan"], "--save_steps must be a finite number > 0"),
    ("bert_cls", ["--save_total_limit", "0"], "--save_total_limit must be >= 1, got 0."),
    ("bert_cls", ["--eval_delay", "-1"], "--eval_delay must be >= 0, got -1.0."),
    ("bert_cls", ["--seed", "-1"], "--seed must be in [0, 4294967295], got -1."),
    ("bert_cls", ["--data_seed", "4294967296"], "--data_seed must be in [0, 4294967295], got 4294967296."),
    ("bert_cls", ["--max_grad_norm", "-1"], "--max_grad_norm must be >= 0, got -1.0."),
    ("bert_cls", ["--label_smoothing_factor", "1"], "--label_smoothing_factor must be in [0, 1), got 1.0."),
    ("bert_cls", ["--adam_beta1", "1"], "--adam_beta1 must be in [0, 1), got 1.0."),
    ("bert_cls", ["--adam_beta2", "-0.1"], "--adam_beta2 must be in [0, 1), got -0.1."),
    ("bert_cls", ["--adam_epsilon", "0"], "--adam_epsilon must be > 0, got 0.0."),
    ("bert_cls", ["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be >= 0, got -1."),
    ("bert_cls", ["--dataloader_prefetch_factor", "0"], "--dataloader_prefetch_factor must be >= 1, got 0."),
    ("bert_cls", ["--torch_empty_cache_steps", "0"], "--torch_empty_cache_steps must be >= 1, got 0."),
    # image model and data
    ("image_cls", ["--drop_rate", "1"], "--drop_rate must be in [0, 1), got 1.0."),
    (
        "image_cls",
        ["--validation_split_percentage", "100"],
        "--validation_split_percentage must be in [1, 99], got 100.",
    ),
    ("image_cls", ["--max_train_samples", "0"], "--max_train_samples must be >= 1, got 0."),
    ("image_cls", ["--max_eval_samples", "0"], "--max_eval_samples must be >= 1, got 0."),
    ("image_cls", ["--max_test_samples", "0"], "--max_test_samples must be >= 1, got 0."),
    ("image_cls", ["--image_size", "0"], "--image_size must be >= 1, got 0."),
    ("image_cls", ["--crop_pct", "1.5"], "--crop_pct must be in (0, 1], got 1.5."),
    ("image_cls", ["--hflip", "1.5"], "--hflip must be in [0, 1], got 1.5."),
    ("image_cls", ["--rotation_degrees", "-10"], "--rotation_degrees must be in [0, 180], got -10.0."),
    ("image_cls", ["--crop_scale_min", "0"], "--crop_scale_min must be in (0, 1], got 0.0."),
    ("image_cls", ["--color_jitter", "-0.1"], "--color_jitter must be >= 0, got -0.1."),
    ("image_cls", ["--demo_train_samples", "0"], "--demo_train_samples must be >= 1, got 0."),
    ("image_cls", ["--demo_test_samples", "0"], "--demo_test_samples must be >= 1, got 0."),
    # knowledge
    ("knowledge_cls", ["--inject", "multiply"], "--inject must be none, add, concat or gate, got 'multiply'."),
    ("knowledge_cls", ["--unknown_entity", "mean"], "--unknown_entity must be zero or learned, got 'mean'."),
    ("knowledge_cls", ["--knowledge_dim", "0"], "--knowledge_dim must be >= 1, got 0."),
    ("knowledge_cls", ["--fusion_hidden_size", "0"], "--fusion_hidden_size must be >= 1, got 0."),
    # feature extraction
    ("extract_features", ["--modality", "audio"], "--modality must be image or text, got 'audio'."),
    ("extract_features", ["--pooling", "max"], "--pooling must be cls or mean, got 'max'."),
    ("extract_features", ["--batch_size", "0"], "--batch_size must be >= 1, got 0."),
    ("extract_features", ["--max_seq_length", "0"], "--max_seq_length must be >= 1, got 0."),
    ("extract_features", ["--seed", "-1"], "--seed must be in [0, 4294967295], got -1."),
    # heads on features
    ("train_head", ["--head", "xgboost"], "--head must be logreg, linear_svm, random_forest, hist_gb, ridge, linear"),
    ("train_head", ["--regularization_c", "0"], "--regularization_c must be > 0, got 0.0."),
    ("train_head", ["--max_iter", "0"], "--max_iter must be >= 1, got 0."),
    ("train_head", ["--n_estimators", "0"], "--n_estimators must be >= 1, got 0."),
    ("train_head", ["--hidden_size", "0"], "--hidden_size must be >= 1, got 0."),
    ("train_head", ["--epochs", "0"], "--epochs must be >= 1, got 0."),
    ("train_head", ["--learning_rate", "inf"], "--learning_rate must be a finite number > 0, got inf."),
    ("train_head", ["--weight_decay", "-1"], "--weight_decay must be >= 0, got -1.0."),
    ("train_head", ["--batch_size", "0"], "--batch_size must be >= 1, got 0."),
    ("train_head", ["--seed", "-1"], "--seed must be in [0, 4294967295], got -1."),
]

# boundary values that are allowed (a rule must not refuse what the code supports)
ACCEPTED_CASES = [
    ("bert_cls", ["--lora_dropout", "0", "--layer_decay", "1", "--unfreeze_last", "0"]),
    ("bert_cls", ["--warmup_steps", "0.06", "--logging_steps", "0.5", "--max_grad_norm", "0"]),
    ("bert_cls", ["--num_train_epochs", "0", "--max_steps", "5"]),  # max_steps wins over epochs
    ("bert_cls", ["--eval_strategy", "epoch", "--eval_steps", "0"]),  # eval_steps unused
    ("bert_cls", ["--seed", "0", "--data_seed", "4294967295"]),
    ("knowledge_cls", ["--class_weights", "balanced", "--pooling", "cls"]),
    ("image_cls", ["--hflip", "1", "--rotation_degrees", "0", "--crop_pct", "1", "--color_jitter", "0"]),
    ("train_head", ["--weight_decay", "0", "--head", "mlp"]),
]


def parse(recipe: str, argv: list[str]):
    return RECIPES[recipe].parse(argv)


@pytest.mark.parametrize("recipe,argv,message", RULE_CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in RULE_CASES])
def test_bad_value_is_refused_naming_flag_value_and_range(recipe, argv, message):
    with pytest.raises(FtpeftError) as error:
        parse(recipe, argv)
    assert message in str(error.value)


@pytest.mark.parametrize("recipe,argv", ACCEPTED_CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in ACCEPTED_CASES])
def test_boundary_values_are_accepted(recipe, argv):
    parse(recipe, argv)


def test_yaml_values_are_checked_like_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: .nan\n")
    with pytest.raises(FtpeftError, match="--learning_rate must be a finite number > 0, got nan"):
        parse("bert_cls", ["--config", str(config)])


def test_help_shows_the_allowed_values(capsys):
    with pytest.raises(SystemExit):
        parse("bert_cls", ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Dropout on the LoRA input. Allowed: in [0, 1)." in text
    assert "Allowed: float16, bfloat16 or float32." in text


# --- every field has a rule, and the rule is enforced -----------------------------------------------------------

# str fields that take one of a fixed set of values (a new one belongs here and needs "choices")
ENUM_FIELDS = {
    "auto_keep",
    "cache_dtype",
    "inject",
    "unknown_entity",
    "modality",
    "pooling",
    "head",
    "interpolation",
    "backend",
    "long_texts",
}
CUSTOM_CHECKED = {
    "unfreeze_last",  # 'all' or a layer count: parsed and checked by unfreeze_last_k
    "class_weights",  # balanced, none or a weights file: checked (file read) by check_class_weights
    "max_seq_length",  # 'auto' or a token count: parsed and checked by parse_max_seq_length
    "metric",  # 'auto' or a name of the metric registry (f1_<class>, rmse_<target> too): checked by metric_spec
    "hp_search_metric",  # the same
    "problem_type",  # auto, the short names or HF's long ones: checked by problem_type_name
    "threshold",  # 'auto' or a number in (0, 1): checked by threshold_value
    "pos_weight",  # balanced, none or a JSON file: checked in LabelArguments
}


def argument_dataclasses() -> list[type]:
    """Every dataclass defined in an ``ftpeft.*.args`` module, plus RunArguments."""
    from ftpeft.core.config import OutputArguments, RunArguments

    found = [OutputArguments, RunArguments]
    for module_info in pkgutil.walk_packages(ftpeft.__path__, "ftpeft."):
        if module_info.name.endswith(".args"):
            module = importlib.import_module(module_info.name)
            found += [
                obj
                for obj in vars(module).values()
                if dataclasses.is_dataclass(obj) and isinstance(obj, type) and obj.__module__ == module.__name__
            ]
    return found


def _base_type(annotation) -> type:
    """int for ``int | None``; the annotation itself otherwise."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return args[0] if is_union and len(args) == 1 else annotation


def declared_fields():
    for cls in argument_dataclasses():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            yield cls, field, _base_type(hints[field.name])


def test_the_argument_dataclasses_are_found():
    names = {cls.__name__ for cls in argument_dataclasses()}
    assert {"ModelArguments", "TextDataArguments", "TuningArguments", "ImageModelArguments", "ImageDataArguments",
            "KnowledgeArguments", "FeatureArguments", "HeadArguments", "RunArguments"} <= names  # fmt: skip


def test_every_numeric_and_enum_field_declares_a_rule():
    missing = []
    for cls, field, base in declared_fields():
        if base in (int, float) and field.metadata.get("range") is None:
            missing.append(f"{cls.__name__}.{field.name}: no 'range'")
        if field.name in ENUM_FIELDS and field.metadata.get("choices") is None:
            missing.append(f"{cls.__name__}.{field.name}: no 'choices'")
        if base is str and field.name not in ENUM_FIELDS | CUSTOM_CHECKED and "choices" in field.metadata:
            missing.append(f"{cls.__name__}.{field.name}: has 'choices' but is not listed in ENUM_FIELDS")
    assert not missing, missing


def _bad_value(field: dataclasses.Field, base: type):
    if field.metadata.get("choices") is not None:
        return ["not-a-choice"] if typing.get_origin(field.type) is list else "not-a-choice"
    rule: Range = field.metadata["range"]
    if base is float:
        return math.nan
    return rule.low - 1 if rule.low is not None else rule.high + 1


@pytest.mark.parametrize(
    "cls,field,base",
    [c for c in declared_fields() if c[1].metadata.get("range") or c[1].metadata.get("choices")],
    ids=lambda value: getattr(value, "name", getattr(value, "__name__", "")),
)
def test_every_declared_rule_is_enforced(cls, field, base):
    required = {  # fields without a default (e.g. predict's run dir) get a harmless value
        f.name: "x"
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    with pytest.raises(FtpeftError, match=f"^--{field.name} must be"):
        cls(**{**required, field.name: _bad_value(field, base)})


def test_training_rules_name_real_fields():
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert [rule.field for rule in TRAINING_RULES if rule.field not in names] == []
    assert len({rule.field for rule in TRAINING_RULES}) == len(TRAINING_RULES)


# --- model files ------------------------------------------------------------------------------------------------


def save_tensors(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 2), np.float32)}, str(path))
    return path


def _cut_data(data: bytes) -> bytes:
    return data[:-5]


def _cut_header(data: bytes) -> bytes:
    return data[:12]


DAMAGE = {
    "truncated data": (_cut_data, "truncated: the tensors need 40 bytes of data, the file holds 35"),
    "truncated header": (_cut_header, "truncated: header of"),
    "garbage": (lambda data: b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", "header is not valid JSON"),
    "empty": (lambda data: b"", "0 bytes, shorter than the 8-byte header length"),
    "trailing bytes": (lambda data: data + b"junk", "4 bytes of unexpected data after the tensors"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_safetensors_is_named(tmp_path, damage):
    path = save_tensors(tmp_path / "w.safetensors")
    assert safetensors_problem(path) is None
    cut, message = DAMAGE[damage]
    path.write_bytes(cut(path.read_bytes()))
    with pytest.raises(FtpeftError, match=r"w\.safetensors: damaged safetensors file \(") as error:
        check_safetensors(path)
    assert message in str(error.value) and "re-download or re-copy it" in str(error.value)


@pytest.fixture
def model_copy(tmp_path, tiny_bert_dir) -> Path:
    return Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))


def test_truncated_model_weights_end_the_recipe_with_one_line(model_copy, text_csv_dir, tmp_path, capsys):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(RECIPES["bert_cls"].main)(tiny_args(model_copy, text_csv_dir, tmp_path / "out"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert f"error: {weights}: damaged safetensors file (truncated: the tensors need" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda m: (m / "config.json").unlink(), "config.json: missing; a model folder needs it"),
        (lambda m: (m / "config.json").write_text('{"model_type": "bert",'), "config.json: not valid JSON"),
        (lambda m: (m / "config.json").write_text("[1, 2]"), "config.json: expected a JSON object, got list"),
        (
            lambda m: (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "part-2.st"}})),
            "part-2.st: missing, listed in model.safetensors.index.json",
        ),
    ],
    ids=["no config", "config cut", "config not an object", "missing shard"],
)
def test_model_folder_pieces_are_named(model_copy, damage, message):
    from ftpeft.text.args import ModelArguments
    from ftpeft.text.modeling import resolve_model_path

    damage(model_copy)
    with pytest.raises(FtpeftError, match=message):
        resolve_model_path(ModelArguments(model_name_or_path=str(model_copy)))


def test_damaged_timm_weights_file_is_named(tmp_path):
    from ftpeft.vision.models import create_timm_model

    path = save_tensors(tmp_path / "resnet.safetensors")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(FtpeftError, match=r"resnet\.safetensors: damaged safetensors file"):
        create_timm_model("test_resnet", 2, pretrained_file=str(path))


def test_damaged_feature_cache_is_named_and_not_reused(tmp_path):
    from ftpeft.features import extract

    request = {"backbones": ["x"]}
    folder = extract.write_features(tmp_path, request, {"train": (np.ones((4, 3), np.float32), np.arange(4))})
    assert extract.find_cached(tmp_path, request) == folder
    shard = next(folder.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-8])
    assert extract.find_cached(tmp_path, request) is None  # extracted again, not reused
    with pytest.raises(FtpeftError, match=f"{shard.name}: damaged safetensors file .*run recipes/extract_features.py"):
        extract.load_features(folder)


# --- tokenizers -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_without_tokenizer(tmp_path_factory) -> Path:
    """What a half-copied folder looks like: config.json + model.safetensors, no tokenizer files."""
    folder = Path(make_tiny_text_model(tmp_path_factory.mktemp("no_tokenizer"), "bert", num_layers=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    return folder


def test_model_folder_without_tokenizer_is_refused(model_without_tokenizer, text_csv_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(RECIPES["bert_cls"].main)(tiny_args(model_without_tokenizer, text_csv_dir, tmp_path / "out"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert f"error: {model_without_tokenizer}: the tokenizer has only its special tokens" in err
    assert "Pass --tokenizer_name" in err


def test_tokenizer_name_fills_in_for_the_missing_files(model_without_tokenizer, tiny_bert_dir):
    from ftpeft.text.args import ModelArguments
    from ftpeft.text.modeling import load_tokenizer

    args = ModelArguments(model_name_or_path=str(model_without_tokenizer), tokenizer_name=str(tiny_bert_dir))
    assert len(load_tokenizer(args, str(model_without_tokenizer))) == len(make_tokenizer())


def test_tokenizer_that_maps_the_text_to_unk_is_refused():
    from datasets import Dataset, DatasetDict

    from ftpeft.knowledge.args import KnowledgeArguments
    from ftpeft.knowledge.data import knowledge_layout, tokenize_with_knowledge
    from ftpeft.text.data import tokenize
    from ftpeft.text.modeling import check_tokenizer_covers

    tokenizer = make_tokenizer()
    check_tokenizer_covers(tokenizer, ["the film was good", "a boring plot"])  # every word known
    check_tokenizer_covers(tokenizer, ["the film was good", "zut alors"])  # 2 of 6 unknown: fine
    foreign = ["der Film war gut", "ein langweiliger Plot", "la película fue buena"]
    with pytest.raises(FtpeftError, match=r"maps 11 of 11 sampled training words to \[UNK\] .*--tokenizer_name"):
        check_tokenizer_covers(tokenizer, foreign)
    splits = DatasetDict(train=Dataset.from_dict({"text": foreign, "labels": [0, 1, 0]}))
    with pytest.raises(FtpeftError, match="sampled training words to"):  # the tokenize steps run the check
        tokenize(splits, tokenizer, ["text"], 16)
    knowledge = KnowledgeArguments(inject="none")
    with pytest.raises(FtpeftError, match="sampled training words to"):
        tokenize_with_knowledge(splits, tokenizer, ["text"], 16, None, knowledge_layout(splits, knowledge), knowledge)


def test_tokenizer_without_unknown_token_passes():
    from ftpeft.text.modeling import check_tokenizer_covers

    tokenizer = make_tokenizer()
    tokenizer.unk_token = None  # byte-level tokenizers: nothing ever maps to an unknown token
    check_tokenizer_covers(tokenizer, ["zzz qqq"])


# --- checkpoints ------------------------------------------------------------------------------------------------


def make_checkpoint(path: Path) -> Path:
    import torch

    path.mkdir(parents=True)
    save_tensors(path / "model.safetensors")
    torch.save({"step": 1}, path / "optimizer.pt")
    (path / "trainer_state.json").write_text('{"global_step": 1}')
    return path


@pytest.mark.parametrize(
    "damaged_file,message",
    [
        ("model.safetensors", "model.safetensors is damaged (truncated: the tensors need"),
        ("optimizer.pt", "optimizer.pt is damaged (not a complete torch archive"),
    ],
)
def test_damaged_checkpoint_is_refused_or_skipped(tmp_path, damaged_file, message, caplog):
    older = make_checkpoint(tmp_path / "checkpoint-1")
    newer = make_checkpoint(tmp_path / "checkpoint-2")
    path = newer / damaged_file
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FtpeftError, match=re.escape(f"--resume_from_checkpoint {newer}: {newer / message}")):
        resolve_resume(str(newer), tmp_path)
    assert last_complete_checkpoint(tmp_path) == older  # auto skips it, saying why
    assert message in caplog.text
    assert resolve_resume("auto", tmp_path) == str(older)
