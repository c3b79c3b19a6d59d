"""Frozen-prefix activation cache for ``--unfreeze_last k`` (``--cache_frozen``).

With only the top k of L layers training, the embeddings and bottom L-k layers compute the same thing
every epoch. This module runs them once (eval mode: no dropout, so it is deterministic), stores the
hidden states at the boundary (the input of the first trainable layer) as one ragged, memory-mapped
array on disk (fp16 by default), and from then on trains a model whose embeddings return the cached
states and whose layer list holds only the top k layers: the rest of the architecture's own forward
(attention masks, pooler, head, loss) runs unchanged.

A cache directory is keyed by a hash of the frozen weights, the boundary, the architecture config, the
tokenised inputs and the dtype; it is written to a temporary name, renamed into place, and checked
(sizes + sha256) before any reuse, so a stale or damaged cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ftpeft.core.errors import FtpeftError
from ftpeft.core.freezing import ARCHITECTURES, layer_map
from ftpeft.core.outputs import staged

CACHE_FORMAT_VERSION = 1
STATES_FILE, OFFSETS_FILE, META_FILE = "states.npy", "offsets.npy", "meta.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# modules the base model applies between the embeddings and the first layer (replaced by identity)
INPUT_PROJECTIONS = {"electra": ("embeddings_project",)}
EMPTY_LAYER_LIST_UNSUPPORTED = {"deberta-v2", "deberta"}


def default_cache_root() -> Path:
    return Path(os.environ.get("FTPEFT_CACHE", Path.home() / ".cache" / "ftpeft")) / "activations"


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
    giving the complete model to evaluate on real inputs and to save.
    """

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        base = model.base_model
        model_type = base.config.model_type
        layout = ARCHITECTURES[model_type]
        self.model = model
        self._swaps: list[tuple[nn.Module, str, nn.Module]] = []
        self._input = _CachedInput()
        layers_parent, _, layers_name = layout.layers.rpartition(".")
        parent = base.get_submodule(layers_parent) if layers_parent else base
        all_layers = getattr(parent, layers_name)
        self._swap(base, "embeddings", self._input)
        for name in INPUT_PROJECTIONS.get(model_type, ()):
            if hasattr(base, name):
                self._swap(base, name, nn.Identity())
        self._swap(parent, layers_name, nn.ModuleList(list(all_layers)[len(all_layers) - k :]))

    def _swap(self, parent: nn.Module, name: str, replacement: nn.Module) -> None:
        self._swaps.append((parent, name, getattr(parent, name)))
        setattr(parent, name, replacement)

    def restore(self) -> nn.Module:
        for parent, name, original in reversed(self._swaps):
            setattr(parent, name, original)
        self._swaps.clear()
        return self.model

    def forward(self, boundary_states, attention_mask, labels=None):
        self._input.value = boundary_states
        dummy_ids = torch.zeros(attention_mask.shape, dtype=torch.long, device=attention_mask.device)
        try:
            return self.model(input_ids=dummy_ids, attention_mask=attention_mask, labels=labels)
        finally:
            self._input.value = None


class _Captured(Exception):
    pass


def _boundary_module(model: nn.Module, k: int) -> nn.Module:
    """The module whose output is the boundary state: layer L-k (1-based), or the embeddings when k = L."""
    base = model.base_model
    model_type = base.config.model_type
    layers = base.get_submodule(ARCHITECTURES[model_type].layers)
    if k < len(layers):
        return layers[len(layers) - k - 1]
    projections = [getattr(base, n) for n in INPUT_PROJECTIONS.get(model_type, ()) if hasattr(base, n)]
    return projections[-1] if projections else base.embeddings


@torch.no_grad()
def boundary_states(model: nn.Module, k: int, batch: dict) -> torch.Tensor:
    """Hidden states entering the first trainable layer, for one padded batch (eval mode, bottom only)."""
    captured = {}

    def grab(_module, _inputs, output):
        captured["states"] = output[0] if isinstance(output, tuple) else output
        raise _Captured  # the layers above are not needed: stop the forward here

    handle = _boundary_module(model, k).register_forward_hook(grab)
    was_training = model.training
    model.eval()
    try:
        model(**{key: v for key, v in batch.items() if key != "labels"})
    except _Captured:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    return captured["states"]


def frozen_fingerprint(model: nn.Module, k: int) -> str:
    """sha256 of what determines the boundary states: config, boundary, and the frozen weights' bytes."""
    layers = layer_map(model)
    frozen = set(layers.embeddings) | set(layers.other)
    frozen |= {name for names in layers.layers[: layers.num_layers - k] for name in names}
    digest = hashlib.sha256()
    digest.update(json.dumps(model.base_model.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(f"boundary={layers.num_layers - k}".encode())
    tensors = [(n, p) for n, p in model.named_parameters() if n in frozen] + list(model.named_buffers())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def inputs_fingerprint(dataset) -> str:
    """sha256 of the tokenised inputs (ids and masks), independent of datasets' in-memory fingerprints."""
    digest = hashlib.sha256()
    for column in ("input_ids", "attention_mask", "token_type_ids"):
        if column in dataset.column_names:
            for row in dataset[column]:
                digest.update(np.asarray(row, dtype=np.int32).tobytes() + b"|")
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


class BoundaryStore:
    """One split's cached boundary states: a ragged [total_tokens, hidden] memmap + row offsets."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.meta = json.loads((directory / META_FILE).read_text())
        self.offsets = np.load(directory / OFFSETS_FILE)
        self.states = np.load(directory / STATES_FILE, mmap_mode="r")
        self.dtype = DTYPES[self.meta["dtype"]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, index: int) -> torch.Tensor:
        rows = np.array(self.states[self.offsets[index] : self.offsets[index + 1]])  # a copy: torch wants writable
        tensor = torch.from_numpy(rows)
        return tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor

    @staticmethod
    def is_valid(directory: Path) -> bool:
        """Complete and undamaged: every file present, sizes and hashes as recorded at write time."""
        try:
            meta = json.loads((directory / META_FILE).read_text())
            states, offsets = directory / STATES_FILE, directory / OFFSETS_FILE
            return (
                meta.get("version") == CACHE_FORMAT_VERSION
                and states.stat().st_size == meta["states_bytes"]
                and _file_sha256(offsets) == meta["offsets_sha256"]
                and _file_sha256(states) == meta["states_sha256"]
            )
        except (OSError, ValueError, KeyError):
            return False


def build_store(model, k, dataset, collator, directory: Path, dtype: str, batch_size: int, key_meta: dict) -> None:
    """Compute boundary states for every row of ``dataset`` and write them atomically to ``directory``."""
    from tqdm.auto import tqdm

    lengths = [len(ids) for ids in dataset["input_ids"]]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    hidden = model.base_model.config.hidden_size
    storage_dtype = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}[dtype]
    with staged(directory, directory=True) as staging:
        states = np.lib.format.open_memmap(
            staging / STATES_FILE, mode="w+", dtype=storage_dtype, shape=(int(offsets[-1]), hidden)
        )
        columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
        for start in tqdm(range(0, len(dataset), batch_size), desc=f"caching frozen layers ({directory.name[:8]})"):
            rows = dataset.select_columns(columns)[start : start + batch_size]
            features = [{c: rows[c][i] for c in columns} for i in range(len(rows["input_ids"]))]
            batch = collator(features)
            output = boundary_states(model, k, batch).to(DTYPES[dtype])
            for i in range(output.shape[0]):
                row = start + i
                values = output[i, : lengths[row]]
                if dtype == "bfloat16":
                    values = values.view(torch.uint16)
                states[offsets[row] : offsets[row + 1]] = values.cpu().numpy()
        states.flush()
        del states
        np.save(staging / OFFSETS_FILE, offsets)
        meta = dict(
            key_meta,
            version=CACHE_FORMAT_VERSION,
            dtype=dtype,
            rows=len(lengths),
            hidden_size=hidden,
            states_bytes=(staging / STATES_FILE).stat().st_size,
            offsets_sha256=_file_sha256(staging / OFFSETS_FILE),
            states_sha256=_file_sha256(staging / STATES_FILE),
        )
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))


def cached_split(
    model, k, dataset, collator, cache_root: Path, dtype: str, batch_size: int, model_hash: str, tag: int = 0
):
    """(index dataset, store, reused) for one tokenised split; builds the cache unless a valid one exists.

    The index dataset holds ``labels``, ``cache_index`` (row in the store) and ``cache_split`` (``tag``).
    """
    meta = {"model": model_hash, "inputs": inputs_fingerprint(dataset), "k": k, "dtype": dtype}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    directory = Path(cache_root) / key
    reused = BoundaryStore.is_valid(directory)
    if not reused:
        build_store(model, k, dataset, collator, directory, dtype, batch_size, meta)
    store = BoundaryStore(directory)
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
    import logging

    model_hash = frozen_fingerprint(model, k)
    indexes, stores, reused = {}, {}, {}
    with training_args.main_process_first(desc="caching the frozen layers"):
        for tag, (split, dataset) in enumerate(splits.items()):
            indexes[split], stores[tag], reused[split] = cached_split(
                model, k, dataset, collator, cache_root, dtype, batch_size, model_hash, tag
            )
    for split, was_reused in reused.items():
        logging.getLogger("ftpeft").warning(
            "process %d: activation cache for %s %s", training_args.process_index, split,
            "reused" if was_reused else "built",
        )  # fmt: skip
    return CachedPrefixModel(model, k), indexes, SplitCollator(stores), reused


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
            "labels": torch.tensor([int(f["labels"]) for f in features]),
        }


class SplitCollator:
    """Routes each batch to the store of the split it came from (train and eval splits share a Trainer)."""

    def __init__(self, stores: dict[int, BoundaryStore]):
        self.collators = {tag: CachedStatesCollator(store) for tag, store in stores.items()}

    def __call__(self, features: list[dict]) -> dict:
        return self.collators[int(features[0]["cache_split"])](features)
