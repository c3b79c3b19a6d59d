"""The probe's one pass fills the frozen-prefix caches of the head-only and last-k text rungs.

Every hidden state the probe reads is the boundary state of some ``--unfreeze_last k``: ``hidden_states[L-k]`` is
what enters the first trainable layer. Written under the key the rung's own ``--cache_frozen`` computes (its
model's frozen weights, the tokenised split, k, dtype; ``ftpeft.cache.prefix``), each such rung finds valid
caches and trains only its top layers, so it never runs its frozen prefix again. The commands the ladder prints
stay the recipe's own: a fresh run of one builds the same cache itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ftpeft.tuning.args import cached_splits

logger = logging.getLogger("ftpeft")
VERIFY_ROWS = 8


@dataclasses.dataclass
class PrefixCaches:
    """Which rung depths k can train from the cache, and the stores the probe's pass writes for them."""

    cache_root: Path
    dtype: str
    hashes: dict[int, str]  # k -> frozen_fingerprint of that rung's model: the stores this pass writes
    refused: dict[int, str]  # k -> why its rung cannot use --cache_frozen
    cacheable: list[int] = dataclasses.field(default_factory=list)  # depths whose rung can (written or not)
    built: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # k -> store folders this pass wrote
    write_seconds: float = 0.0

    @property
    def written(self) -> list[int]:
        return sorted(self.hashes)

    def describe(self) -> dict:
        """What probe.json keeps, so that a resumed ladder takes the same decisions."""
        return {
            "written": self.written,
            "cacheable": self.cacheable,
            "refused": {str(k): why for k, why in self.refused.items()},
            "built": {str(k): dirs for k, dirs in self.built.items()},
            "write_seconds": round(self.write_seconds, 2),
        }

    @contextlib.contextmanager
    def writing(self, split: str, dataset) -> Iterator[Callable[[int, tuple[torch.Tensor, ...]], None] | None]:
        """The probe's per-batch callback for ``split``; every store is put in place when the block ends cleanly."""
        if split not in cached_splits(self.dtype) or not self.hashes:
            yield None
            return
        from ftpeft.cache.prefix import prefix_key, token_offsets
        from ftpeft.cache.store import BoundaryStore, StoreWriter, store_directory

        offsets = token_offsets(dataset)
        writers: dict[int, StoreWriter] = {}
        with contextlib.ExitStack() as stack:
            for k, model_hash in self.hashes.items():
                key = prefix_key(model_hash, dataset, k, self.dtype)
                directory = store_directory(self.cache_root, key)
                if BoundaryStore.is_valid(directory):  # an earlier run's: the same content, kept
                    continue
                writers[k] = stack.enter_context(StoreWriter(directory, offsets, self.dtype, key))
                self.built.setdefault(k, []).append(str(directory))

            def on_batch(first_row: int, hidden: tuple[torch.Tensor, ...]) -> None:
                start = time.perf_counter()
                top = len(hidden) - 1
                for k, writer in writers.items():
                    for i in range(hidden[top - k].shape[0]):
                        row = first_row + i
                        length = int(offsets[row + 1] - offsets[row])
                        writer.write(int(offsets[row]), hidden[top - k][i, :length])
                self.write_seconds += time.perf_counter() - start

            yield on_batch if writers else None
            start = time.perf_counter()
        self.write_seconds += time.perf_counter() - start  # closing hashes the files


def plan_prefix_caches(
    recipe_args, model_path: str, data, probe_model, collator, num_layers: int, dtype: str
) -> PrefixCaches:
    """For each depth k of a cacheable rung (0 = head only ... L-1), the fingerprint its ``--cache_frozen
    --cache_dtype dtype`` run keys the cache by; a depth is left out, with its reason, when the rung's own run could
    not read the probe's states."""
    from ftpeft.cache.prefix import boundary_states, check_cacheable, frozen_fingerprint, token_offsets
    from ftpeft.cache.store import DTYPES, default_cache_root
    from ftpeft.core.errors import FtpeftError
    from ftpeft.text.modeling import load_sequence_classifier
    from ftpeft.text.pooling import pooling_for

    model_args, _, tuning_args, _, _ = recipe_args
    cache_root = Path(tuning_args.activation_cache_dir or default_cache_root())
    caches = PrefixCaches(cache_root, dtype, {}, {})
    if tuning_args.use_peft or tuning_args.train_embeddings:
        why = "--cache_frozen cannot be used with --use_peft or --train_embeddings"
        caches.refused = dict.fromkeys(range(num_layers), why)
        return caches
    if getattr(data, "windows", False):
        why = "--cache_frozen caches one row per text; the long texts are read as windows"
        caches.refused = dict.fromkeys(range(num_layers), why)
        return caches
    train = data.tokenized["train"]
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in train.column_names]
    sample = collator([train.select_columns(columns)[i] for i in range(min(VERIFY_ROWS, len(train)))])
    with torch.no_grad():
        hidden = probe_model(**sample, output_hidden_states=True).hidden_states
    models: dict[str, torch.nn.Module] = {}
    for k in range(num_layers):  # the last-k rungs never retrain every layer
        pooling, _ = pooling_for(model_args, model_path, k, use_peft=False)
        if pooling not in models:
            models[pooling] = load_sequence_classifier(model_args, model_path, data.label_names, pooling)[0].eval()
        model = models[pooling]
        try:
            check_cacheable(model, k)
        except FtpeftError as error:
            caches.refused[k] = str(error)
            continue
        if len(hidden) != num_layers + 1 or not torch.allclose(
            hidden[num_layers - k], boundary_states(model, k, sample), rtol=1e-4, atol=1e-5
        ):
            caches.refused[k] = f"the probe's hidden state {num_layers - k} is not what --unfreeze_last {k} caches"
            continue
        caches.hashes[k] = frozen_fingerprint(model, k)
    caches.cacheable = caches.written
    splits = [split for split in cached_splits(dtype) if split in data.tokenized]
    tokens = sum(int(token_offsets(data.tokenized[split])[-1]) for split in splits)
    needed = tokens * hidden[0].shape[-1] * len(caches.hashes) * DTYPES[caches.dtype].itemsize
    free = shutil.disk_usage(_existing_ancestor(cache_root)).free
    if needed > free / 2:
        logger.warning(
            "ladder: the probe does not cache the frozen layers (%.1f GB for %d depths; %.1f GB free under %s)",
            needed / 1e9, len(caches.hashes), free / 1e9, cache_root,
        )  # fmt: skip
        caches.hashes = {}  # the rungs build their own caches where they use one
    else:
        logger.info(
            "ladder: the probe pass caches the frozen layers for k = %s (%.0f MB)", caches.written, needed / 1e6
        )
    return caches


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
