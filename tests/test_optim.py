"""Optimizer groups: exact learning rates per layer and weight-decay membership."""

import pytest
import torch
from text_fixtures import tiny_config
from transformers import AutoModelForSequenceClassification

from ftpeft import build_param_groups, layer_map, unfreeze_last


@pytest.fixture
def model():
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config("bert"))


def lr_of(groups):
    return {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["param_names"]}


def test_head_lr_layer_decay_and_no_decay_sets(model):
    groups = build_param_groups(model, 1e-4, head_lr=1e-3, layer_decay=0.5, weight_decay=0.01)
    lrs = lr_of(groups)
    assert set(lrs) == {n for n, _ in model.named_parameters()}
    assert lrs["classifier.weight"] == (1e-3, 0.01)
    assert lrs["classifier.bias"] == (1e-3, 0.0)
    assert lrs["bert.pooler.dense.weight"] == (1e-4, 0.01)  # top: same LR as the top layer
    for i in range(4):  # layer i (0-based) of 4: decay^(4 - i)... top layer (3) gets lr * 0.5
        assert lrs[f"bert.encoder.layer.{i}.attention.self.query.weight"] == pytest.approx(
            (1e-4 * 0.5 ** (4 - i), 0.01)
        )
        assert lrs[f"bert.encoder.layer.{i}.output.LayerNorm.weight"][1] == 0.0
    assert lrs["bert.embeddings.word_embeddings.weight"] == pytest.approx((1e-4 * 0.5**5, 0.01))
    assert lrs["bert.embeddings.LayerNorm.weight"][1] == 0.0


def test_frozen_parameters_are_left_out(model):
    unfreeze_last(model, 1)
    names = {n for g in build_param_groups(model, 1e-4, head_lr=1e-3) for n in g["param_names"]}
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("bert.encoder.layer.3.", "bert.pooler", "classifier")) for n in names)


def test_groups_work_in_a_stock_optimizer_and_trainer_scheduler(model):
    groups = build_param_groups(model, 1e-4, head_lr=1e-3)
    optimizer = torch.optim.AdamW(groups)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [1e-4, 1e-3]


def test_adapter_lr_applies_to_lora_weights():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(tiny_config("bert"))
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    lrs = lr_of(build_param_groups(model, 1e-4, head_lr=1e-3, adapter_lr=5e-4))
    assert {lr for n, (lr, _) in lrs.items() if "lora_" in n} == {5e-4}
    assert {lr for n, (lr, _) in lrs.items() if "classifier" in n} == {1e-3}
    assert set(lrs) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert layer_map(model).num_layers == 4
