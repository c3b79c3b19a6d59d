"""Freezing: for every supported architecture and mode, training changes exactly the intended parameters."""

import pytest
import torch
from helpers import ARCHITECTURES, TIMM_MODEL, text_batch, tiny_config, tiny_model
from transformers import AutoModelForSequenceClassification

from ftpeft import FtpeftError, build_param_groups, layer_map, unfreeze_last


def train_steps(model, model_type, steps=3):
    model.train()
    optimizer = torch.optim.AdamW(build_param_groups(model, 1e-2), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**text_batch(model_type)).loss.backward()
        optimizer.step()


def expected_trainable(layers, k, train_embeddings=False):
    if k is None:
        return None  # everything
    names = set(layers.head) | set(layers.top)  # k=0 trains the readout: head + pooler / final norm
    if k:
        names |= {n for layer in layers.layers[-k:] for n in layer}
    if train_embeddings:
        names |= set(layers.embeddings)
    return names


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("k,train_embeddings", [(0, False), (2, False), (1, True), (None, False)])
def test_only_intended_parameters_change(model_type, k, train_embeddings):
    model = tiny_model(model_type)
    layers = layer_map(model)
    assert layers.num_layers == 4 and layers.source == f"table:{model_type}" and not layers.other
    report = unfreeze_last(model, k, train_embeddings)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, model_type)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    expected = expected_trainable(layers, k, train_embeddings) or set(before)
    assert changed == expected
    assert report.trainable_params == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert report.trainable_layers == (list(range(5 - k, 5)) if k is not None else [1, 2, 3, 4])


@pytest.mark.parametrize("k", [5, 100])
def test_k_larger_than_model_is_a_clear_error(k):
    with pytest.raises(FtpeftError, match=r"--unfreeze_last .* 4 layers"):
        unfreeze_last(tiny_model("bert"), k)


def test_albert_shared_layers_are_refused():
    model = AutoModelForSequenceClassification.from_config(tiny_config("albert", num_layers=2))
    with pytest.raises(FtpeftError, match="ALBERT shares"):
        unfreeze_last(model, 1)


def test_generic_fallback_finds_repeated_blocks():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(3))

    layers = layer_map(Custom())
    assert layers.source == "generic:blocks"
    assert layers.layers == [[f"blocks.{i}.linear.weight", f"blocks.{i}.linear.bias"] for i in range(3)]
    assert layers.embeddings == ["embed.weight"]


def test_unknown_architecture_without_blocks_is_a_clear_error():
    with pytest.raises(FtpeftError, match="cannot find the encoder layers"):
        unfreeze_last(torch.nn.Sequential(torch.nn.Linear(3, 3)), 1)


def test_timm_stages_use_the_same_api():
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    layers = layer_map(model)
    assert layers.source == "timm" and layers.num_layers == 4
    assert layers.head == ["fc.weight", "fc.bias"]
    report = unfreeze_last(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(layers.head) | set(layers.layers[-1])
    assert all(n.startswith(("layer4.", "fc.")) for n in trainable)
    assert report.trainable_layers == [4]


def test_frozen_batchnorm_keeps_running_stats():
    import timm

    from ftpeft import keep_frozen_norms_in_eval

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    unfreeze_last(model, 1)
    pinned = keep_frozen_norms_in_eval(model)
    assert pinned and not any(name.startswith("layer4") for name in pinned)
    stats = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    model.train()
    model(torch.randn(2, 3, 32, 32))
    after = dict(model.named_buffers())
    for name, value in stats.items():
        frozen = not name.startswith("layer4")
        assert torch.equal(value, after[name]) == frozen, name


@pytest.mark.parametrize("model_type", [*ARCHITECTURES, "timm"])
def test_trained_shares_are_what_unfreeze_last_trains_and_change_nothing(model_type):
    from ftpeft.core.freezing import count_parameters, trained_shares

    if model_type == "timm":
        import timm

        model = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=3)
    else:
        model = tiny_model(model_type)
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    shares = trained_shares(model)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    layers = layer_map(model)
    assert len(shares) == layers.num_layers + 1
    for k, share in enumerate(shares):
        unfreeze_last(model, k, layers=layers)
        trainable, total = count_parameters(model)
        assert share == pytest.approx(trainable / total)
    assert shares == sorted(shares) and shares[-1] <= 1.0
