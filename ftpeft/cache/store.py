"""What the activation caches share: the store on disk, its key, its validation, and building it once.

A store holds one split's cached activations: ``states.npy`` ([rows, *row_shape], memory-mapped, float16,
bfloat16 or float32), ``offsets.npy`` (example i is rows ``offsets[i]:offsets[i+1]``: its tokens for text,
its augmented views for images) and ``meta.json`` (what the key was made of, sizes, sha256 of both files).
Its directory is named by a hash of what determines the content (frozen weights, boundary, inputs, dtype);
it is written under a temporary name, renamed into place, and checked before any reuse, so a stale or
damaged store is never read. Under DDP the main process builds the stores and the other ranks read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from ftpeft.core.outputs import staged

logger = logging.getLogger("ftpeft")

CACHE_FORMAT_VERSION = 1
STATES_FILE, OFFSETS_FILE, META_FILE = "states.npy", "offsets.npy", "meta.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_STORAGE_DTYPES = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}  # numpy has no bfloat16


def default_cache_root() -> Path:
    return Path(os.environ.get("FTPEFT_CACHE", Path.home() / ".cache" / "ftpeft")) / "activations"


def store_directory(cache_root: str | Path, key_meta: dict) -> Path:
    """The folder of the store whose content is determined by ``key_meta`` (JSON-serialisable)."""
    return Path(cache_root) / hashlib.sha256(json.dumps(key_meta, sort_keys=True).encode()).hexdigest()[:32]


def weights_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]], description: dict) -> str:
    """sha256 of ``description`` (architecture, boundary) and the names and bytes of ``tensors``: the frozen
    weights and buffers that determine the activations at the boundary."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


class BoundaryStore:
    """One split's cached activations: a [rows, *row_shape] memmap and the row range of every example."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.meta = json.loads((directory / META_FILE).read_text())
        self.offsets = np.load(directory / OFFSETS_FILE)
        self.states = np.load(directory / STATES_FILE, mmap_mode="r")
        self.dtype = DTYPES[self.meta["dtype"]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows_of(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def get(self, index: int, row: int | None = None) -> torch.Tensor:
        """All rows of example ``index`` ([n, *row_shape]), or only its ``row``-th ([1, *row_shape])."""
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        if row is not None:
            start, stop = start + row, start + row + 1
        tensor = torch.from_numpy(np.array(self.states[start:stop]))  # a copy: torch wants writable memory
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


class StoreWriter:
    """Writes one store atomically, a chunk at a time, inside ``with``: nothing is in place until the block ends
    cleanly. Several can be open at once (one pass of a model filling the stores of several boundaries)."""

    def __init__(self, directory: Path, offsets: np.ndarray, dtype: str, key_meta: dict):
        self.directory, self.offsets, self.dtype, self.key_meta = directory, offsets, dtype, key_meta
        self.states: np.ndarray | None = None

    def __enter__(self) -> Self:
        self._stack = ExitStack()
        self.staging = self._stack.enter_context(staged(self.directory, directory=True))
        return self

    def write(self, first_row: int, values: torch.Tensor) -> None:
        """Set rows ``first_row : first_row + len(values)`` ([n, *row_shape])."""
        if self.states is None:  # the row shape is known once the first activations exist
            self.states = np.lib.format.open_memmap(
                self.staging / STATES_FILE,
                mode="w+",
                dtype=_STORAGE_DTYPES[self.dtype],
                shape=(int(self.offsets[-1]), *values.shape[1:]),
            )
        values = values.detach().to(DTYPES[self.dtype])
        if self.dtype == "bfloat16":
            values = values.view(torch.uint16)
        self.states[first_row : first_row + values.shape[0]] = values.cpu().numpy()

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is not None:  # the staging folder goes; nothing is put in place
            return self._stack.__exit__(exc_type, exc, traceback)
        with self._stack:
            self._finish()
        return False

    def _finish(self) -> None:
        staging = self.staging
        row_shape = list(self.states.shape[1:])
        self.states.flush()
        self.states = None
        np.save(staging / OFFSETS_FILE, self.offsets)
        meta = dict(
            self.key_meta,
            version=CACHE_FORMAT_VERSION,
            dtype=self.dtype,
            rows=len(self.offsets) - 1,
            row_shape=row_shape,
            states_bytes=(staging / STATES_FILE).stat().st_size,
            offsets_sha256=_file_sha256(staging / OFFSETS_FILE),
            states_sha256=_file_sha256(staging / STATES_FILE),
        )
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))


def write_store(
    directory: Path, offsets: np.ndarray, chunks: Iterable[tuple[int, torch.Tensor]], dtype: str, key_meta: dict
) -> None:
    """Write a store atomically: ``chunks`` yields (first row, tensor [n, *row_shape]) until every row is set."""
    with StoreWriter(directory, offsets, dtype, key_meta) as writer:
        for first_row, values in chunks:
            writer.write(first_row, values)


def open_or_build(cache_root: str | Path, key_meta: dict, build: Callable[[Path], None]) -> tuple[BoundaryStore, bool]:
    """(store, reused): the valid store for ``key_meta``, else ``build(directory)`` writes it first."""
    directory = store_directory(cache_root, key_meta)
    reused = BoundaryStore.is_valid(directory)
    if not reused:
        build(directory)
    return BoundaryStore(directory), reused


def build_on_main_first(
    training_args, splits: Iterable[str], cache_split: Callable[[str, int], tuple[Any, BoundaryStore, bool]]
) -> tuple[dict[str, Any], dict[int, BoundaryStore], dict[str, bool]]:
    """Run ``cache_split(split, tag)`` for every split, the main process first so the others find the stores
    valid and read them; returns (index datasets by split, stores by tag, reused by split), each logged."""
    indexes, stores, reused = {}, {}, {}
    with training_args.main_process_first(desc="caching the frozen layers"):
        for tag, split in enumerate(splits):
            indexes[split], stores[tag], reused[split] = cache_split(split, tag)
    for split, was_reused in reused.items():
        logger.warning(
            "process %d: activation cache for %s %s", training_args.process_index, split,
            "reused" if was_reused else "built",
        )  # fmt: skip
    return indexes, stores, reused


class SplitCollator:
    """Routes each batch to the collator of the split it came from (train and eval splits share a Trainer);
    every example carries its split's tag in ``cache_split``."""

    def __init__(self, collators: dict[int, Callable[[list[dict]], dict]]):
        self.collators = collators

    def __call__(self, features: list[dict]) -> dict:
        return self.collators[int(features[0]["cache_split"])](features)


class ModuleSwaps:
    """Replace submodules in place and put the originals back: a cached model is the trained model itself,
    with its frozen part swapped out while training and restored for evaluation and saving."""

    def __init__(self):
        self._swaps: list[tuple[nn.Module, str, nn.Module]] = []

    def swap(self, parent: nn.Module, name: str, replacement: nn.Module) -> None:
        self._swaps.append((parent, name, getattr(parent, name)))
        setattr(parent, name, replacement)

    def restore(self) -> None:
        for parent, name, original in reversed(self._swaps):
            setattr(parent, name, original)
        self._swaps.clear()


class StopForward(Exception):
    """Raised by a hook once the boundary activations are captured: the layers above are not needed."""


@torch.no_grad()
def activations_at(model: nn.Module, module: nn.Module, /, *args, at_output: bool = False, **kwargs) -> torch.Tensor:
    """What enters ``module`` (or leaves it, ``at_output``) when ``model(*args, **kwargs)`` runs in eval mode.

    The forward stops there, so the layers above cost nothing; the model's train/eval mode is kept.
    """
    captured = {}

    def grab_input(_module, inputs):
        captured["value"] = inputs[0]
        raise StopForward

    def grab_output(_module, _inputs, output):
        captured["value"] = output[0] if isinstance(output, tuple) else output
        raise StopForward

    handle = module.register_forward_hook(grab_output) if at_output else module.register_forward_pre_hook(grab_input)
    was_training = model.training
    model.eval()
    try:
        model(*args, **kwargs)
    except StopForward:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    return captured["value"]
