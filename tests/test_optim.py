"""Optimizer groups: exact learning rates per layer and weight-decay membership."""

import pytest
import torch
from helpers import tiny_model

from ftpeft import build_param_groups, layer_map, unfreeze_last


@pytest.fixture
def model():
    return tiny_model("bert")


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
        assert lrs[f"bert.encoder.layer.{i}.output.LayerNorm.weight"] == pytest.approx((1e-4 * 0.5 ** (4 - i), 0.0))
        assert lrs[f"bert.encoder.layer.{i}.output.dense.bias"] == pytest.approx((1e-4 * 0.5 ** (4 - i), 0.0))
    assert lrs["bert.embeddings.word_embeddings.weight"] == pytest.approx((1e-4 * 0.5**5, 0.01))
    assert lrs["bert.embeddings.LayerNorm.weight"] == pytest.approx((1e-4 * 0.5**5, 0.0))


def test_frozen_parameters_are_left_out(model):
    unfreeze_last(model, 1)
    groups = build_param_groups(model, 1e-4, head_lr=1e-3)
    lrs = {name: lr for name, (lr, _) in lr_of(groups).items()}
    top = {n for n, _ in model.named_parameters() if n.startswith(("bert.encoder.layer.3.", "bert.pooler."))}
    head = {"classifier.weight", "classifier.bias"}
    assert len(top) == 18 and set(lrs) == top | head  # 16 tensors of layer 3 + the pooler's 2, then the head
    assert set(lrs) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert {lrs[n] for n in top} == {1e-4} and {lrs[n] for n in head} == {1e-3}
    assert sum(len(g["params"]) for g in groups) == len(lrs)  # each trainable tensor in exactly one group


def test_groups_work_in_a_stock_optimizer_and_trainer_scheduler(model, tmp_path):
    from transformers import TrainingArguments

    from ftpeft import FtpeftTrainer

    optimizer = torch.optim.AdamW(build_param_groups(model, 1e-4, head_lr=1e-3))
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [1e-4, 1e-3]
    # the Trainer's own linear schedule (2 warmup steps of 10) scales every group by the same factor
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", warmup_steps=2, lr_scheduler_type="linear")
    groups = build_param_groups(model, 1e-4, head_lr=1e-3)
    expected = [g["lr"] for g in groups]  # read now: optimizer and scheduler write into these dicts
    trainer = FtpeftTrainer(model=model, args=args, param_groups=groups)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    base = [g["initial_lr"] for g in trainer.optimizer.param_groups]
    assert base == expected  # the groups' own LRs, in order
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.0] * len(base)  # warmup starts at 0
    for step, factor in enumerate([0.5, 1.0, 7 / 8, 6 / 8, 5 / 8], start=1):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        lrs = [g["lr"] for g in trainer.optimizer.param_groups]
        assert lrs == pytest.approx([lr * factor for lr in base]), step


def test_adapter_lr_applies_to_lora_weights():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("bert"), LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    lrs = lr_of(build_param_groups(model, 1e-4, head_lr=1e-3, adapter_lr=5e-4))
    assert {lr for n, (lr, _) in lrs.items() if "lora_" in n} == {5e-4}
    assert len([n for n in lrs if "lora_" in n]) == 4 * 2 * 2  # 4 layers x (query, value) x (A, B)
    assert {lr for n, (lr, _) in lrs.items() if "classifier" in n} == {1e-3}
    assert set(lrs) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert layer_map(model).num_layers == 4
