"""Frozen-stage activation cache for timm image models (``image_cls.py --unfreeze_last k --cache_frozen``).

With only the top k stages and the head training, the stem and the bottom stages compute the same thing for
an image every epoch. This module runs them once per image (eval mode), stores the activations entering the
first trainable module (``ftpeft.cache.store``: keyed, validated, built by the main process first), and
trains the model with its frozen modules swapped for pass-throughs, so timm's own forward (the rest of
``forward_features``, then ``forward_head`` with its pooling and dropout) runs unchanged on the cached tensor.

The split follows timm's model contract, not attribute names: the stages are ``group_matcher``'s groups
(``layer_map``), and one traced forward shows which modules run before the first trainable one. The cache is
refused, with the reason, unless every frozen parameter lives in those modules, none of them runs again
later, and on a real batch the cached forward gives the full forward's logits.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ftpeft.cache.store import (
    BoundaryStore,
    ModuleSwaps,
    SplitCollator,
    activations_at,
    build_on_main_first,
    open_or_build,
    weights_fingerprint,
    write_store,
)
from ftpeft.core.errors import FtpeftError
from ftpeft.core.freezing import LayerMap


@dataclasses.dataclass(frozen=True)
class StageSplit:
    """Where a timm model splits into a cached frozen prefix and a trained suffix."""

    boundary: str  # the first trainable module: its input is what the cache holds ('layer3', 'blocks.5', 'fc')
    prefix: tuple[str, ...]  # the top-most modules that run before it, all frozen: swapped out while training


@dataclasses.dataclass
class StageSource:
    """One split to cache: items {"pixel_values", ...}, their labels, an identity of the inputs, how many views."""

    dataset: torch.utils.data.Dataset
    labels: list[int]
    inputs_key: str  # changes whenever the images or their transform change
    views: int = 1  # >1: that many passes through a random transform, seeded


class _PassThrough(nn.Module):
    """Stands in for a frozen module while training from the cache: its input is already the cached tensor."""

    def forward(self, x, *args, **kwargs):
        return x


def _is_under(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".") or module == ""


def find_stage_split(model: nn.Module, k: int, layers: LayerMap, sample: torch.Tensor) -> StageSplit:
    """Trace one eval forward of ``sample`` and split ``model`` before its first trainable stage (or head).

    Raises FtpeftError, naming the reason, where the frozen part is not a chain of modules that could be
    replaced by its output.
    """
    frozen = set(layers.embeddings) | set(layers.other)
    frozen |= {name for names in layers.layers[: layers.num_layers - k] for name in names}
    calls: list[str] = []
    modules = dict(model.named_modules())
    handles = [
        module.register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name))
        for name, module in modules.items()
        if name
    ]
    try:
        activations_at(model, model, sample, at_output=True)
    finally:
        for handle in handles:
            handle.remove()
    own = {name: [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)] for name, module in modules.items()}
    # the first module to run that holds a parameter that trains
    first_trained = next((name for name in calls if any(p not in frozen for p in own[name])), None)
    if first_trained is None:
        raise FtpeftError("--cache_frozen: no trainable module runs in the forward; nothing to train from the cache.")
    boundary = first_trained
    while "." in boundary:  # climb to the largest module that holds no frozen parameter (a whole stage)
        parent = boundary.rpartition(".")[0]
        if any(_is_under(p, parent) for p in frozen):
            break
        boundary = parent
    before = calls[: calls.index(boundary)]
    prefix: list[str] = []
    for name in before:
        if not _is_under(boundary, name) and not any(_is_under(name, outer) for outer in prefix):
            prefix.append(name)
    outside = sorted(p for p in frozen if not any(_is_under(p, m) for m in prefix))
    if outside:
        raise FtpeftError(
            f"--cache_frozen: {type(model).__name__} uses frozen parameters outside the modules that run before "
            f"'{boundary}' ({', '.join(outside[:3])}); its frozen part cannot be cached exactly. Train without "
            "--cache_frozen."
        )
    rerun = [name for name in calls[calls.index(boundary) :] if any(_is_under(name, m) for m in prefix)]
    if rerun:
        raise FtpeftError(
            f"--cache_frozen: {type(model).__name__} runs the frozen module '{rerun[0]}' again after '{boundary}'; "
            "its frozen part cannot be cached exactly. Train without --cache_frozen."
        )
    return StageSplit(boundary, tuple(prefix))


class CachedStagesModel(nn.Module):
    """The timm model with its frozen prefix swapped out; ``forward(boundary_states)`` gives the logits.

    ``restore()`` puts the frozen modules back (the trained ones are the same objects) and returns the
    complete model, to evaluate on real images and to save as a stock timm model.
    """

    def __init__(self, model: nn.Module, split: StageSplit):
        super().__init__()
        self.model, self.split = model, split
        self._swaps = ModuleSwaps()
        for name in split.prefix:
            parent, _, child = name.rpartition(".")
            self._swaps.swap(model.get_submodule(parent), child, _PassThrough())

    def forward(self, boundary_states: torch.Tensor) -> torch.Tensor:
        return self.model(boundary_states)

    def restore(self) -> nn.Module:
        self._swaps.restore()
        return self.model


def stage_inputs(model: nn.Module, split: StageSplit, pixel_values: torch.Tensor) -> torch.Tensor:
    """The activations entering the first trainable module, for one batch (eval mode; the suffix is skipped)."""
    return activations_at(model, model.get_submodule(split.boundary), pixel_values)


@torch.no_grad()
def check_exact(model: nn.Module, split: StageSplit, pixel_values: torch.Tensor) -> None:
    """Refuse unless the cached forward gives the full forward's logits on ``pixel_values`` (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        expected = model(pixel_values)
        states = stage_inputs(model, split, pixel_values)
        cached = CachedStagesModel(model, split)
        try:
            got = cached(states)
        except Exception as error:  # a forward that reshapes or checks its input  # noqa: BLE001
            got = error
        finally:
            cached.restore()
    finally:
        model.train(was_training)
    if isinstance(got, Exception) or got.shape != expected.shape or not torch.allclose(got, expected, 1e-5, 1e-6):
        reason = f"{type(got).__name__}: {got}" if isinstance(got, Exception) else "the logits differ"
        raise FtpeftError(
            f"--cache_frozen: {type(model).__name__}'s forward from the cached input of '{split.boundary}' does not "
            f"reproduce the full forward ({reason.splitlines()[0][:200]}); train without --cache_frozen."
        )


def frozen_stages_fingerprint(model: nn.Module, split: StageSplit) -> str:
    """sha256 of the boundary and the prefix modules' structure (repr), weights and buffers (BatchNorm statistics)."""
    description = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "boundary": split.boundary,
        "prefix": {name: repr(model.get_submodule(name)) for name in split.prefix},
    }
    tensors = [
        (f"{name}.{tensor_name}", tensor)
        for name in split.prefix
        for tensor_name, tensor in model.get_submodule(name).state_dict(keep_vars=True).items()
    ]
    return weights_fingerprint(tensors, description)


def build_stage_store(
    model, split: StageSplit, source: StageSource, directory: Path, dtype: str, batch_size: int, seed: int, meta: dict
) -> None:
    """Run the frozen prefix once over every image (``source.views`` times) and write the store atomically.

    Example i's views are rows i*views .. i*views+views-1; view v is drawn with the RNGs seeded by seed + v,
    and the caller's RNG state is left as it was.
    """
    from tqdm.auto import tqdm

    count, views = len(source.dataset), source.views
    offsets = np.arange(0, count * views + 1, views, dtype=np.int64)

    def chunks():
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                for view in range(views):
                    torch.manual_seed(seed + view)  # torchvision's random transforms
                    random.seed(seed + view)  # timm's
                    for start in tqdm(
                        range(0, count, batch_size), desc=f"caching frozen stages ({directory.name[:8]})"
                    ):
                        indices = range(start, min(count, start + batch_size))
                        pixels = torch.stack([source.dataset[i]["pixel_values"] for i in indices])
                        states = stage_inputs(model, split, pixels.to(next(model.parameters()).device))
                        for offset, index in enumerate(indices):
                            yield index * views + view, states[offset : offset + 1]
        finally:
            random.setstate(python_state)

    write_store(directory, offsets, chunks(), dtype, meta)


class CachedExamples(torch.utils.data.Dataset):
    """What the Trainer iterates over instead of images: example index, its split's tag and its label."""

    def __init__(self, labels: list[int], tag: int):
        self.labels, self.tag = labels, tag

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"cache_index": index, "cache_split": self.tag, "labels": self.labels[index]}


class CachedViewsCollator:
    """A batch of cached activations, one view per image (drawn at random where the store holds several)."""

    def __init__(self, store: BoundaryStore, dtype: torch.dtype = torch.float32):
        self.store, self.dtype = store, dtype

    def __call__(self, features: list[dict]) -> dict:
        rows = []
        for feature in features:
            index = int(feature["cache_index"])
            views = self.store.rows_of(index)
            rows.append(self.store.get(index, int(torch.randint(views, ())) if views > 1 else 0))
        return {
            "boundary_states": torch.cat(rows).to(self.dtype),
            "labels": torch.tensor([f["labels"] for f in features]),  # class ids, multi-hot rows or numbers
        }


def prepare_cached_stages(
    model: nn.Module,
    k: int,
    layers: LayerMap,
    sources: dict[str, StageSource],
    cache_root,
    dtype: str,
    batch_size: int,
    training_args,
):
    """Split ``model`` at its first trainable stage, check the split is exact, cache every split's stage inputs.

    Returns (CachedStagesModel, {split: CachedExamples}, collator, {split: reused}). The main process builds
    the caches first; the other ranks find them valid and read them. Train with ``keep_all_columns``.
    """
    first = min(sources.values(), key=lambda source: source.views).dataset  # a deterministic transform, if any
    device = next(model.parameters()).device
    sample = torch.stack([first[i]["pixel_values"] for i in range(min(4, len(first)))]).to(device)
    split = find_stage_split(model, k, layers, sample)
    check_exact(model, split, sample)
    model_hash = frozen_stages_fingerprint(model, split)

    def cache_split(name: str, tag: int):
        source = sources[name]
        meta = {"model": model_hash, "inputs": source.inputs_key, "views": source.views, "dtype": dtype}
        if source.views > 1:
            meta["seed"] = training_args.seed
        build = lambda directory: build_stage_store(
            model, split, source, directory, dtype, batch_size, training_args.seed, meta
        )
        store, reused = open_or_build(cache_root, meta, build)
        return CachedExamples(source.labels, tag), store, reused

    examples, stores, reused = build_on_main_first(training_args, sources, cache_split)
    collator = SplitCollator({tag: CachedViewsCollator(store) for tag, store in stores.items()})
    return CachedStagesModel(model, split), examples, collator, reused
