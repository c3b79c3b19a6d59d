"""--gradient_checkpointing above frozen layers: the trained layers still get their gradients (text, LoRA, timm).

Reentrant checkpointing drops the parameter gradients of a block whose inputs do not require grad, which is
what frozen bottom layers hand the first trained one; ftpeft states ``use_reentrant: False`` and each test
checks, from the saved model, that exactly the unfrozen parameters changed.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TIMM_ARGS, TIMM_MODEL, load_recipe, tiny_args, write_kaggle_layout
from safetensors.torch import load_file, save_file

from ftpeft.core.errors import FtpeftError
from ftpeft.core.settings import derived_settings

bert_cls = load_recipe("bert_cls")
image_cls = load_recipe("image_cls")

TRAINED_AT_K2 = ("bert.encoder.layer.2.", "bert.encoder.layer.3.", "bert.pooler.", "classifier.")


def test_checkpointing_is_made_non_reentrant_unless_the_user_chose():
    from transformers import TrainingArguments

    chosen = TrainingArguments(
        "out", gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True}
    )
    assert not [c for c in derived_settings(chosen) if c.field == "activation_checkpointing_kwargs"]
    unset = TrainingArguments("out", gradient_checkpointing=True, activation_checkpointing_kwargs={"every_n_layers": 2})
    (change,) = [c for c in derived_settings(unset) if c.field == "activation_checkpointing_kwargs"]
    assert change.used == {"every_n_layers": 2, "use_reentrant": False}
    assert not [c for c in derived_settings(TrainingArguments("out")) if c.field == "activation_checkpointing_kwargs"]


def changed_tensors(before: dict, after: dict) -> set[str]:
    assert set(before) == set(after)
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("reentrant", [None, pytest.param(True, marks=pytest.mark.slow)])
def test_checkpointing_with_frozen_bottom_layers_trains_exactly_the_unfrozen(
    tiny_bert_dir, text_csv_dir, tmp_path, reentrant
):
    out = tmp_path / "run"
    # the user's explicit reentrant choice is kept: transformers then makes the embeddings' output require grad
    chosen = [] if reentrant is None else ["--gradient_checkpointing_kwargs", json.dumps({"use_reentrant": True})]
    bert_cls.main(
        tiny_args(tiny_bert_dir, text_csv_dir, out, "--gradient_checkpointing", "--unfreeze-last", "2", *chosen)
    )
    before = load_file(f"{tiny_bert_dir}/model.safetensors")
    changed = changed_tensors(before, load_file(out / "model.safetensors"))
    assert changed == {name for name in before if name.startswith(TRAINED_AT_K2)}
    used = json.loads((out / "resolved_settings.json").read_text()).get("activation_checkpointing_kwargs")
    assert (used["used"] if reentrant is None else used) == ({"use_reentrant": False} if reentrant is None else None)


def test_checkpointing_with_lora_on_frozen_layers_trains_every_adapter(tiny_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "run"
    # k=2: layers 0-1 get LoRA on frozen weights (their inputs need no grad), layers 2-3 train in full
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--gradient_checkpointing", "--unfreeze-last", "2")
    bert_cls.main([*argv, "--use_peft", "--lora_r", "4"])
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = {name: tensor for name, tensor in adapter.items() if "lora_B" in name}
    assert {name.split("layer.")[1].split(".")[0] for name in lora_b} == {"0", "1"}
    assert all(tensor.abs().sum() > 0 for tensor in lora_b.values())  # B starts at zero: nonzero means it trained
    base = load_file(f"{tiny_bert_dir}/model.safetensors")
    full = {name: tensor for name, tensor in adapter.items() if "lora_" not in name}
    assert {name.split("layer.")[1].split(".")[0] for name in full if "layer." in name} == {"2", "3"}
    for name, tensor in full.items():
        base_name = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        assert not torch.equal(tensor, base[base_name]), name


@pytest.mark.slow  # two runs
def test_timm_checkpointing_with_frozen_stages_trains_as_without_it(tmp_path):
    import timm

    torch.manual_seed(0)
    weights = tmp_path / "start.safetensors"
    save_file(timm.create_model(TIMM_MODEL, num_classes=3).state_dict(), weights)
    csv, images = write_kaggle_layout(tmp_path / "kaggle")
    before = load_file(weights)
    saved = {}
    for checkpointing in ([], ["--gradient_checkpointing"]):
        out = tmp_path / f"run{len(checkpointing)}"
        argv = ["--labels_csv", str(csv), "--image_dir", str(images), *TIMM_ARGS, "--pretrained_file", str(weights)]
        argv += ["--unfreeze-last", "2", *checkpointing, "--output_dir", str(out), "--max_steps", "2"]
        image_cls.main([*argv, "--per_device_train_batch_size", "4", "--save_strategy", "no"])
        saved[bool(checkpointing)] = load_file(out / "model.safetensors")
    # BatchNorm statistics move in any trained stage (and twice under recomputation): compare the parameters
    weights_only = {name for name in before if "running_" not in name and "num_batches" not in name}
    changed = {name for name in changed_tensors(before, saved[True]) if name in weights_only}
    assert changed == {name for name in changed_tensors(before, saved[False]) if name in weights_only}
    assert all(name.startswith(("layer3.", "layer4.", "fc.")) for name in changed)
    assert {"layer3.0.conv1.weight", "layer4.0.conv1.weight", "fc.weight"} <= changed
    for name in weights_only:
        torch.testing.assert_close(saved[True][name], saved[False][name], rtol=1e-5, atol=1e-6)
    record = json.loads((tmp_path / "run1" / "resolved_settings.json").read_text())
    assert record["activation_checkpointing"]["used"] is False  # handed to timm's set_grad_checkpointing


def test_timm_checkpointing_refuses_reentrant(tmp_path):
    csv, images = write_kaggle_layout(tmp_path / "kaggle")
    argv = ["--labels_csv", str(csv), "--image_dir", str(images), *TIMM_ARGS, "--output_dir", str(tmp_path / "run")]
    argv += ["--gradient_checkpointing", "--gradient_checkpointing_kwargs", '{"use_reentrant": true}']
    with pytest.raises(FtpeftError, match="cannot apply to a timm model"):
        image_cls.main([*argv, "--max_steps", "1"])
