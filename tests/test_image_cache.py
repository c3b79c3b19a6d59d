"""Frozen-stage activation cache for timm models: exact per family and depth, trains only the top, keyed, refused
where inexact, and the image recipe with it saves the complete stock timm model."""

from __future__ import annotations

import copy
import json
import random
import re

import pytest
import torch
from helpers import (
    CLASSES,
    ROOT,
    TEXT_RUN_FILES,
    TIMM_ARGS,
    TIMM_MODEL,
    assert_rank_zero_built_the_cache,
    launch_recipe_on_two_cpu_ranks,
    load_recipe,
    write_class_folders,
)

from ftpeft.cache.stages import (
    CachedStagesModel,
    CachedViewsCollator,
    StageSource,
    build_stage_store,
    find_stage_split,
    stage_inputs,
)
from ftpeft.cache.store import BoundaryStore
from ftpeft.core.errors import run_cli
from ftpeft.core.freezing import keep_frozen_norms_in_eval, layer_map, unfreeze_last

image_cls = load_recipe("image_cls")
# what an image run writes (no tokenizer, and timm's own save instead of Trainer's)
IMAGE_RUN_FILES = TEXT_RUN_FILES - {"tokenizer.json", "tokenizer_config.json", "training_args.bin"}


def tiny_timm(name: str):
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, num_classes=3)


@pytest.mark.parametrize(
    "name, k, boundary",
    [
        ("test_resnet", 0, "fc"),
        ("test_resnet", 1, "layer4"),
        ("test_resnet", 2, "layer3"),
        ("test_resnet", 4, "layer1"),  # every stage trains: only the stem (conv1, bn1, act1, maxpool) is cached
        ("test_efficientnet", 0, "classifier"),  # conv_head + bn2 + pooling are cached too
        ("test_efficientnet", 1, "blocks.4"),  # the last group: blocks.4 + conv_head + bn2
        ("test_efficientnet", 3, "blocks.2"),
        ("test_efficientnet", 5, "blocks"),
    ],
)
def test_cached_forward_equals_full_forward(name, k, boundary):
    model = tiny_timm(name).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixels)
        split = find_stage_split(model, k, layer_map(model), pixels)
        states = stage_inputs(model, split, pixels)
        cached = CachedStagesModel(model, split).eval()
        got = cached(states)
        assert split.boundary == boundary
        assert torch.equal(got, expected)  # exactly: the same modules run on the same tensor
        assert torch.equal(cached.restore()(pixels), expected)


def sgd_steps(model, forward, labels, steps=3):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name, k, trained", [("test_resnet", 2, ("layer3.", "layer4.", "fc.")),
                                              ("test_efficientnet", 1, ("blocks.4.", "conv_head.", "bn2.", "classifier."))])  # fmt: skip
def test_training_from_the_cache_matches_uncached_and_changes_only_the_unfrozen(name, k, trained):
    reference = tiny_timm(name)
    for model in (reference, cached_model := copy.deepcopy(reference)):
        unfreeze_last(model, k)
        keep_frozen_norms_in_eval(model)
        model.train()
    before = {n: t.clone() for n, t in reference.state_dict().items()}
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    expected = sgd_steps(reference, lambda: reference(pixels), labels)
    split = find_stage_split(cached_model, k, layer_map(cached_model), pixels)
    states = stage_inputs(cached_model, split, pixels)  # once, in eval mode
    wrapper = CachedStagesModel(cached_model, split).train()
    got = sgd_steps(cached_model, lambda: wrapper(states), labels)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6) and len(set(got)) == len(got)
    after = wrapper.restore().state_dict()
    for tensor_name, value in after.items():
        changed = not torch.equal(value, before[tensor_name])
        should_change = tensor_name.startswith(trained) and not tensor_name.endswith("num_batches_tracked")
        if tensor_name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            should_change = tensor_name.startswith(trained)  # trained BatchNorm updates its statistics, frozen does not
        assert changed == should_change, tensor_name
        torch.testing.assert_close(value, reference.state_dict()[tensor_name], rtol=1e-5, atol=1e-6)


def test_augmented_views_are_seeded_and_drawn_at_random(tmp_path):
    from timm.data import create_transform

    from ftpeft.vision.args import ImageDataArguments
    from ftpeft.vision.data import TransformedImages, load_image_classification_data

    root = write_class_folders(tmp_path / "images", per_class=2)
    images = load_image_classification_data(ImageDataArguments(image_dir=str(root)), seed=0).splits["train"]
    dataset = TransformedImages(images, create_transform(32, is_training=True, scale=(0.3, 1.0)))
    source = StageSource(dataset, images.labels, dataset.fingerprint(), views=3)
    model = tiny_timm(TIMM_MODEL).eval()
    split = find_stage_split(model, 2, layer_map(model), dataset[0]["pixel_values"][None])
    torch.manual_seed(7)
    random.seed(7)
    state = torch.random.get_rng_state(), random.getstate()
    for folder in ("a", "b"):
        build_stage_store(model, split, source, tmp_path / folder, "float32", 2, seed=1, meta={})
    assert torch.equal(torch.random.get_rng_state(), state[0]) and random.getstate() == state[1]  # left as it was
    first, second = BoundaryStore(tmp_path / "a"), BoundaryStore(tmp_path / "b")
    assert first.meta["states_sha256"] == second.meta["states_sha256"]  # same seed, same views
    assert len(first) == len(images) and first.rows_of(0) == 3 and first.meta["row_shape"] == [48, 4, 4]
    views = first.get(0)
    assert not torch.equal(views[0], views[1])  # random crops differ
    batch = CachedViewsCollator(first)([{"cache_index": i, "labels": images.labels[i]} for i in range(len(images))])
    assert batch["boundary_states"].shape == (len(images), 48, 4, 4) and batch["labels"].tolist() == images.labels


def cached_run_args(images, out, cache, *extra) -> list[str]:
    return ["--image_dir", str(images), *TIMM_ARGS, "--unfreeze-last", "2", "--cache_frozen",
            "--activation_cache_dir", str(cache), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--save_strategy", "no", *extra]  # fmt: skip


def test_recipe_saves_the_complete_model_and_reuses_or_rebuilds_the_cache(tmp_path, caplog):
    import timm
    from transformers import set_seed

    images, out, cache = write_class_folders(tmp_path / "images", per_class=4), tmp_path / "run", tmp_path / "cache"
    metrics = image_cls.main(cached_run_args(images, out, cache))
    assert {p.name for p in out.iterdir()} == IMAGE_RUN_FILES
    assert len(list(cache.iterdir())) == 2  # train + validation
    assert "activation cache for train built" in caplog.text and "evaluation transform" in caplog.text
    card = (out / "README.md").read_text()
    assert "--cache_frozen" in card and "no data augmentation" in card
    recorded = json.loads((out / "resolved_settings.json").read_text())  # no augmentation, and why
    assert recorded["augmentation"]["used"] is None and recorded["hflip"]["used"] == 0.0
    assert recorded["augmentation"]["why"].startswith("--cache_frozen without --cache_augmented_views")
    # the saved model is the complete stock timm model: frozen stages as initialised, the top ones trained
    saved = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert saved.pretrained_cfg["label_names"] == list(CLASSES)
    set_seed(42)  # the run's seed: the same initial weights
    initial = dict(timm.create_model(TIMM_MODEL, num_classes=3).named_parameters())
    changed = {name for name, param in saved.named_parameters() if not torch.equal(param, initial[name])}
    assert {name.split(".")[0] for name in changed} == {"layer3", "layer4", "fc"}
    assert "eval_accuracy" in metrics
    caplog.clear()
    image_cls.main(cached_run_args(images, out, cache, "--overwrite_output_dir"))
    assert "activation cache for train reused" in caplog.text and "for validation reused" in caplog.text
    train_store = next(d for d in cache.iterdir() if BoundaryStore(d).meta["rows"] > 2)  # validation: 2 of 12
    states_file = train_store / "states.npy"
    damaged = bytearray(states_file.read_bytes())
    damaged[-1] ^= 0xFF
    states_file.write_bytes(bytes(damaged))
    caplog.clear()
    image_cls.main(cached_run_args(images, out, cache, "--overwrite_output_dir"))
    assert "activation cache for train built" in caplog.text and "for validation reused" in caplog.text
    assert BoundaryStore.is_valid(train_store)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--unfreeze_last", "all", "--cache_frozen"], "--cache_frozen needs --unfreeze_last k"),
        (["--unfreeze_last", "2", "--cache_frozen", "--train_embeddings"], "cannot be used with --train_embeddings"),
        (["--unfreeze_last", "2", "--cache_augmented_views", "2"], "--cache_augmented_views needs --cache_frozen"),
        (
            ["--unfreeze_last", "1", "--cache_frozen", "--model_name_or_path", "test_vit", "--image_size", "160"],
            r"VisionTransformer uses frozen parameters outside .*\(cls_token, pos_embed\)",
        ),
    ],
)
def test_inexact_setups_are_refused_with_one_line(tmp_path, capsys, flags, message):
    images = write_class_folders(tmp_path / "images", per_class=2)
    argv = ["--image_dir", str(images), *TIMM_ARGS, *flags, "--output_dir", str(tmp_path / "out"),
            "--activation_cache_dir", str(tmp_path / "cache"), "--max_steps", "1"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_cli(image_cls.main)(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert re.search(message, err) and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_two_ranks_share_one_image_cache(tmp_path):
    images = write_class_folders(tmp_path / "images", per_class=4)
    args = cached_run_args(images, tmp_path / "ddp", tmp_path / "cache")
    assert_rank_zero_built_the_cache(launch_recipe_on_two_cpu_ranks("image_cls", *args), tmp_path / "cache")
    assert (tmp_path / "ddp" / "model.safetensors").is_file() and (tmp_path / "ddp" / "metrics.json").is_file()


@pytest.mark.slow
def test_quick_image_cache_benchmark_writes_its_table_and_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import image_cache

    path = image_cache.main(["--quick", "--results_dir", str(tmp_path)])
    data = json.loads((tmp_path / "image_cache_quick.json").read_text())
    assert len(data["pairs"]) == 2 and len(data["summary"]["epoch2_ratios"]) == 2
    assert [pair["cached"]["case"] for pair in data["pairs"]] == ["--unfreeze-last 2 --cache_frozen"] * 2
    assert "| 2 | --unfreeze-last 2 --cache_frozen |" in path.read_text()
