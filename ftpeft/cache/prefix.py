"""Frozen-prefix activation cache for ``--unfreeze_last k`` (``--cache_frozen``).

With only the top k of L layers training, the embeddings and bottom L-k layers compute the same thing
every epoch. This module runs them once (eval mode: no dropout, so it is deterministic), stores the
hidden states at the boundary (the input of the first trainable layer) as one ragged, memory-mapped
array on disk (fp16 by default), and from then on trains a model whose embeddings return the cached
states and whose layer list holds only the top k layers: the rest of the architecture's own forward
(attention masks, pooler, head, loss) runs unchanged.

A cache directory is keyed by a hash of the frozen weights, the boundary, the architecture config, the
tokenised inputs and the dtype; it is written to a temporary name, renamed into place, and checked
(sizes + sha256) before any reuse, so a stale or damaged cache is never read (``ftpeft.cache.store``,
shared with the image cache).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
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
    default_cache_root,
    open_or_build,
    weights_fingerprint,
    write_store,
)
from ftpeft.core.errors import FtpeftError
from ftpeft.core.freezing import ARCHITECTURES, layer_map

__all__ = ["BoundaryStore", "default_cache_root"]  # kept importable from here
# modules the base model applies between the embeddings and the first layer (replaced by identity)
INPUT_PROJECTIONS = {"electra": ("embeddings_project",)}
EMPTY_LAYER_LIST_UNSUPPORTED = {"deberta-v2", "deberta"}


def check_cacheable(model: nn.Module, k: int) -> None:
    """Refuse, naming the reason, when this model's cached run could not be exactly the uncached one.

    The flag rules (a depth k, no LoRA, no trained embeddings) sit with ``TuningArguments.cache_frozen``.
    """
    base = getattr(model, "base_model", model)
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise FtpeftError(f"--cache_frozen supports model types {sorted(ARCHITECTURES)}, not '{model_type}'.")
    if k == 0 and model_type in EMPTY_LAYER_LIST_UNSUPPORTED:
        raise FtpeftError(
            f"--cache_frozen with --unfreeze_last 0 is not supported for {model_type} (its encoder needs at least "
            "one layer); for a head on frozen features use recipes/extract_features.py + recipes/train_head.py."
        )
    encoder = getattr(base, "encoder", None)
    if getattr(encoder, "conv", None) is not None:  # DeBERTa-v2's conv mixes into the first layer's output
        raise FtpeftError("--cache_frozen: this DeBERTa-v2 checkpoint uses a convolution after layer 1; not supported.")


class _CachedInput(nn.Module):
    """Stands in for the embeddings: returns the boundary states of the current batch."""

    def __init__(self):
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, *args, **kwargs):
        return self.value


class CachedPrefixModel(nn.Module):
    """The model with its frozen prefix swapped out; ``forward(boundary_states, attention_mask, labels)``.

    ``restore()`` puts the embeddings and all layers back (the trained top layers are the same objects),
    giving the complete model to evaluate on real inputs and to save; ``prefix_cached()`` swaps the prefix out
    again for a block (to evaluate a restored model from the cache).
    """

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k
        self._swaps = ModuleSwaps()
        self._input = _CachedInput()
        self._swap_prefix_out()

    def _swap_prefix_out(self) -> None:
        base = self.model.base_model
        model_type = base.config.model_type
        layers_parent, _, layers_name = ARCHITECTURES[model_type].layers.rpartition(".")
        parent = base.get_submodule(layers_parent) if layers_parent else base
        all_layers = getattr(parent, layers_name)
        self._swaps.swap(base, "embeddings", self._input)
        for name in INPUT_PROJECTIONS.get(model_type, ()):
            if hasattr(base, name):
                self._swaps.swap(base, name, nn.Identity())
        self._swaps.swap(parent, layers_name, nn.ModuleList(list(all_layers)[len(all_layers) - self.k :]))

    def restore(self) -> nn.Module:
        self._swaps.restore()
        return self.model

    @contextlib.contextmanager
    def prefix_cached(self) -> Iterator[CachedPrefixModel]:
        """Within the block the (restored) model reads cached boundary states again; restored after it."""
        self._swap_prefix_out()
        try:
            yield self
        finally:
            self._swaps.restore()

    def forward(self, boundary_states, attention_mask, labels=None):
        self._input.value = boundary_states
        dummy_ids = torch.zeros(attention_mask.shape, dtype=torch.long, device=attention_mask.device)
        try:
            return self.model(input_ids=dummy_ids, attention_mask=attention_mask, labels=labels)
        finally:
            self._input.value = None


def _boundary_module(model: nn.Module, k: int) -> nn.Module:
    """The module whose output is the boundary state: layer L-k (1-based), or the embeddings when k = L."""
    base = model.base_model
    model_type = base.config.model_type
    layers = base.get_submodule(ARCHITECTURES[model_type].layers)
    if k < len(layers):
        return layers[len(layers) - k - 1]
    projections = [getattr(base, n) for n in INPUT_PROJECTIONS.get(model_type, ()) if hasattr(base, n)]
    return projections[-1] if projections else base.embeddings


def boundary_states(model: nn.Module, k: int, batch: dict) -> torch.Tensor:
    """Hidden states entering the first trainable layer, for one padded batch (eval mode, bottom only)."""
    inputs = {key: v for key, v in batch.items() if key != "labels"}
    return activations_at(model, _boundary_module(model, k), at_output=True, **inputs)


def frozen_fingerprint(model: nn.Module, k: int) -> str:
    """sha256 of what determines the boundary states: config, boundary, and the frozen weights' bytes."""
    layers = layer_map(model)
    frozen = set(layers.embeddings) | set(layers.other)
    frozen |= {name for names in layers.layers[: layers.num_layers - k] for name in names}
    description = {"config": model.base_model.config.to_dict(), "boundary": layers.num_layers - k}
    tensors = [(n, p) for n, p in model.named_parameters() if n in frozen] + list(model.named_buffers())
    return weights_fingerprint(tensors, description)


def inputs_fingerprint(dataset) -> str:
    """sha256 of the tokenised inputs (ids and masks), independent of datasets' in-memory fingerprints."""
    digest = hashlib.sha256()
    for column in ("input_ids", "attention_mask", "token_type_ids"):
        if column in dataset.column_names:
            for row in dataset[column]:
                digest.update(np.asarray(row, dtype=np.int32).tobytes() + b"|")
    return digest.hexdigest()


def prefix_key(model_hash: str, dataset, k: int, dtype: str) -> dict:
    """What a boundary store's content is determined by; its folder is named by a hash of this."""
    return {"model": model_hash, "inputs": inputs_fingerprint(dataset), "k": k, "dtype": dtype}


def token_offsets(dataset) -> np.ndarray:
    """Example i's tokens are store rows ``offsets[i]:offsets[i+1]`` (unpadded)."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    return offsets


def build_store(model, k, dataset, collator, directory: Path, dtype: str, batch_size: int, key_meta: dict) -> None:
    """Compute boundary states for every row of ``dataset`` and write them atomically to ``directory``."""
    from tqdm.auto import tqdm

    offsets = token_offsets(dataset)
    lengths = np.diff(offsets)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]

    def chunks():
        for start in tqdm(range(0, len(dataset), batch_size), desc=f"caching frozen layers ({directory.name[:8]})"):
            rows = dataset.select_columns(columns)[start : start + batch_size]
            output = boundary_states(
                model, k, collator([{c: rows[c][i] for c in columns} for i in range(len(rows[columns[0]]))])
            )
            for i in range(output.shape[0]):
                yield int(offsets[start + i]), output[i, : lengths[start + i]]

    write_store(directory, offsets, chunks(), dtype, key_meta)


def cached_split(
    model, k, dataset, collator, cache_root: Path, dtype: str, batch_size: int, model_hash: str, tag: int = 0
):
    """(index dataset, store, reused) for one tokenised split; builds the cache unless a valid one exists.

    The index dataset holds ``labels``, ``cache_index`` (row in the store) and ``cache_split`` (``tag``).
    """
    meta = prefix_key(model_hash, dataset, k, dtype)
    build = lambda directory: build_store(model, k, dataset, collator, directory, dtype, batch_size, meta)
    store, reused = open_or_build(cache_root, meta, build)
    index = dataset.select_columns(["labels"]).add_column("cache_index", list(range(len(dataset))))
    index = index.add_column("cache_split", [tag] * len(dataset))
    return index, store, reused


def prepare_cached_training(
    model, k: int, splits: dict, collator, cache_root, dtype: str, batch_size: int, training_args
):
    """Cache the frozen prefix for every split; return (CachedPrefixModel, index datasets, collator, reused).

    The main process builds the caches first; other ranks then find them valid and read them. The index
    datasets carry no model inputs: train them with ``remove_unused_columns=False`` (``keep_all_columns``).
    """
    model_hash = frozen_fingerprint(model, k)
    indexes, stores, reused = build_on_main_first(
        training_args,
        splits,
        lambda split, tag: cached_split(
            model, k, splits[split], collator, cache_root, dtype, batch_size, model_hash, tag
        ),
    )
    cached_collator = SplitCollator({tag: CachedStatesCollator(store) for tag, store in stores.items()})
    return CachedPrefixModel(model, k), indexes, cached_collator, reused


class CachedStatesCollator:
    """Pads cached boundary states of a batch; attention mask from the row lengths."""

    def __init__(self, store: BoundaryStore, dtype: torch.dtype = torch.float32):
        self.store, self.dtype = store, dtype

    def __call__(self, features: list[dict]) -> dict:
        rows = [self.store.get(int(f["cache_index"])).to(self.dtype) for f in features]
        longest = max(r.shape[0] for r in rows)
        states = torch.zeros(len(rows), longest, rows[0].shape[1], dtype=self.dtype)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, row in enumerate(rows):
            states[i, : row.shape[0]] = row
            mask[i, : row.shape[0]] = 1
        return {
            "boundary_states": states,
            "attention_mask": mask,
            "labels": torch.tensor([f["labels"] for f in features]),  # class ids, multi-hot rows or numbers
        }
