"""LoRA through peft: what trains, what is saved, and that it all reloads with the standard peft API."""

import json

import pytest
import torch
from helpers import load_recipe, text_batch, tiny_args, tiny_model
from transformers import AutoModelForSequenceClassification

from ftpeft import FtpeftError, build_param_groups
from ftpeft.tuning.lora import apply_lora, build_lora_config

bert_cls = load_recipe("bert_cls")


def lora_model(model_type="bert", k=0, lora_layers=None, targets=None, base_dir=None):
    base = tiny_model(model_type)
    if base_dir is not None:  # adapters record where their base model lives
        base.save_pretrained(base_dir)
        base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    config = build_lora_config(base, 4, 8, 0.0, targets, lora_layers, k, ["classifier.weight", "classifier.bias"])
    return apply_lora(base, config)


def train(model, steps=3):
    model.train()
    optimizer = torch.optim.AdamW(build_param_groups(model, 1e-2), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**text_batch("bert")).loss.backward()
        optimizer.step()


def changed_after_training(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model)
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


@pytest.mark.parametrize(
    "k,lora_layers,adapted_layers,full_layers",
    [(0, None, {0, 1, 2, 3}, set()), (0, 1, {3}, set()), (1, None, {0, 1, 2}, {3}), (2, 1, set(), None)],
)
def test_exactly_lora_head_and_top_layers_train(k, lora_layers, adapted_layers, full_layers):
    if full_layers is None:
        with pytest.raises(FtpeftError, match="leave no layer for LoRA"):
            lora_model(k=k, lora_layers=lora_layers)
        return
    model = lora_model(k=k, lora_layers=lora_layers)
    changed = changed_after_training(model)
    lora_layers_seen = {int(n.split("layer.")[1].split(".")[0]) for n in changed if "lora_" in n}
    assert lora_layers_seen == adapted_layers
    full = {int(n.split("layer.")[1].split(".")[0]) for n in changed if "modules_to_save" in n and "layer." in n}
    assert full == full_layers
    assert {n for n in changed if "classifier" in n} == {
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    }
    assert {n for n in changed if "pooler" in n} == {  # the readout trains as at --unfreeze_last 0
        "base_model.model.bert.pooler.modules_to_save.default.dense.weight",
        "base_model.model.bert.pooler.modules_to_save.default.dense.bias",
    }
    others = {n for n in changed if "lora_" not in n and "modules_to_save" not in n}
    assert others == set()


@pytest.mark.parametrize("k", [0, 1])
def test_save_load_gives_identical_logits(tmp_path, k):
    from peft import AutoPeftModelForSequenceClassification

    model = lora_model(k=k, base_dir=tmp_path / "base")
    train(model)
    model.eval()
    inputs = {key: v for key, v in text_batch("bert").items() if key != "labels"}
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=1e-6)


def test_targets_that_match_nothing_list_real_module_names():
    with pytest.raises(FtpeftError, match=r"match no module of this model; Linear layers it has: .*query"):
        lora_model(targets=["q_proj"])


def test_model_type_without_peft_defaults_needs_targets():
    with pytest.raises(FtpeftError, match=r"no default target modules for model type 'distilbert'.*q_lin"):
        lora_model("distilbert")


def test_recipe_lora_round_trip_and_merged_model(tiny_bert_dir, text_csv_dir, tmp_path):
    from transformers import AutoTokenizer, pipeline

    out = tmp_path / "lora"
    bert_cls.main(tiny_args(tiny_bert_dir, text_csv_dir, out, "--use_peft", "--lora_r", "4", "--merge_adapter"))
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.json", "merged"} <= files
    assert "model.safetensors" not in files  # the adapter, not a copy of the base model
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer(["good film", "awful plot"], return_tensors="pt", padding=True)
    card = (out / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    scope = {}
    exec(snippet, scope)  # the card's copy-paste snippet works as written  # noqa: S102
    adapter = scope["model"].eval()
    assert adapter.config.id2label == {0: "neg", 1: "pos"}
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    torch.testing.assert_close(merged(**inputs).logits, adapter(**inputs).logits, rtol=1e-5, atol=1e-5)
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    with torch.no_grad():
        expected = merged.config.id2label[int(merged(**tokenizer(["good film"], return_tensors="pt")).logits.argmax())]
    assert pipeline("text-classification", model=str(out / "merged"))("good film")[0]["label"] == expected
    report = json.loads((out / "freeze_report.json").read_text())
    assert 0 < report["trainable_params"] < report["total_params"] / 2
    assert "library_name: peft" in card and "AutoPeftModelForSequenceClassification" in card
