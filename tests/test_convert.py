"""The packaged EfficientNet-Lite0 -> timm tf_efficientnet_lite0 converter: strict, cached, identical outputs."""

from __future__ import annotations

import pytest
import torch

from ftpeft.core.errors import FtpeftError
from ftpeft.vision.convert import (
    DEMO_IMAGE_MODEL,
    convert_state_dict,
    converted_efficientnet_lite0,
    lukemelas_to_timm_key,
    packaged_efficientnet_lite0,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return converted_efficientnet_lite0(cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def source():
    return torch.load(packaged_efficientnet_lite0(), map_location="cpu", weights_only=True)


def test_strict_load_every_tensor_carried_over(converted, source):
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(DEMO_IMAGE_MODEL)
    weights = load_file(str(converted))
    result = model.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    stage_sizes = [len(stage) for stage in model.blocks]
    assert len(weights) == len(source) == 296
    for key, tensor in source.items():
        assert torch.equal(weights[lukemelas_to_timm_key(key, stage_sizes)], tensor), key


def test_cache_is_reused(converted):
    mtime = converted.stat().st_mtime_ns
    assert converted_efficientnet_lite0(cache=converted.parent) == converted
    assert converted.stat().st_mtime_ns == mtime


def test_identical_outputs(converted, source):
    """The stem computed from the source keys equals timm's stem; the file-loaded model equals the in-memory one."""
    import timm

    from ftpeft.vision.models import create_timm_model

    model = timm.create_model(DEMO_IMAGE_MODEL).eval()
    convert_state_dict(source, model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stem = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, (0, 1, 0, 1)), source["_conv_stem.weight"], stride=2
        )
        bn = {k: source[f"_bn0.{k}"] for k in ("running_mean", "running_var", "weight", "bias")}
        expected = torch.nn.functional.batch_norm(
            stem, bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], eps=1e-3
        ).clamp(0, 6)
        assert torch.allclose(model.bn1(model.conv_stem(x)), expected, atol=1e-5)
        reloaded = create_timm_model(DEMO_IMAGE_MODEL, None, pretrained_file=str(converted)).eval()
        assert torch.equal(reloaded(x), model(x))


@pytest.mark.parametrize(
    "key, expected",
    [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("_blocks.0._bn2.bias", "blocks.0.0.bn2.bias"),
        ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
        ("_blocks.2._bn2.running_var", "blocks.1.1.bn3.running_var"),
        ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
        ("_fc.bias", "classifier.bias"),
    ],
)
def test_key_mapping(key, expected):
    assert lukemelas_to_timm_key(key, [1, 2, 2, 3, 3, 4, 1]) == expected


@pytest.mark.parametrize("key", ["_mystery.weight", "_blocks.0._expand_conv.weight", "_blocks.99._bn0.bias"])
def test_unplaceable_keys_are_errors(key):
    with pytest.raises(FtpeftError, match="conversion"):
        lukemelas_to_timm_key(key, [1, 2, 2, 3, 3, 4, 1])
