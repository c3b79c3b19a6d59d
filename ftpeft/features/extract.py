"""Frozen-feature export: run backbones once over a dataset, keep the features, train cheap heads on them.

    from ftpeft.features import load_features
    splits, metadata = load_features("outputs/features")       # {split: (X [N, D] float32, y)}

Labels by problem type (metadata.json's ``target``, ``ftpeft.labels.target.Target.to_dict()``): class ids [N] int64;
label sets multi-hot [N, labels] float32; numbers [N, targets] float32 in the target's own units (a user reads the
rating, not its z-score; the target's training mean and sd are in metadata.json for heads that train standardised).

Features come from timm models (default: pre-logits via ``forward_head(pre_logits=True)``; any module
via ``--layer NAME`` and a forward hook) or transformers text encoders ([CLS] or masked-mean pooling of
a hidden state, by index, or any module by hook). Several backbones are concatenated, in order.

Cache: FEATURE_DIR/<key>/ holds ``<split>-00000.safetensors`` shards and ``metadata.json``. The key is a
hash of everything that determines the features (models, checkpoint hashes, layer, pooling, transform,
data fingerprint, and the labels: the target's problem type, names, separator and scaling). The same request
reuses the folder (and says "reusing"); any difference gives a new key, so a cache is never silently reused
for other settings. Folders are written under a temporary name and renamed into place, so a killed run leaves
no half-written cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ftpeft.core.artifacts import loading_model
from ftpeft.core.errors import FtpeftError
from ftpeft.core.outputs import atomic_write_text, staged
from ftpeft.core.windows import DOCUMENT_COLUMN, pool_windows
from ftpeft.labels.target import Target, single_label

FORMAT = "ftpeft-features/1"
METADATA_FILE = "metadata.json"
LATEST_FILE = "latest.txt"
DEFAULT_IMAGE_LAYER = "pre_logits"
SHARD_ROWS = 50_000
NOT_INPUTS = ("labels", DOCUMENT_COLUMN)  # columns of a tokenised split the encoder does not take
logger = logging.getLogger("ftpeft")


@dataclasses.dataclass
class Backbone:
    """One loaded backbone and how to read features from it."""

    name: str
    model: nn.Module
    layer: str | None
    pooling: str
    transform: Any = None  # image: eval transform; text: the tokenizer
    settings: dict = dataclasses.field(default_factory=dict)  # transform config etc., part of the cache key
    weights_file: str | None = None  # where the weights came from (informational: the hash is the key)
    feature_dim: int | None = None  # set by the extraction (on rank 0)

    @property
    def hooked_layer(self) -> str | None:
        """The module a forward hook reads; None: the default output (timm's pre-logits, which --layer pre_logits
        and metadata.json name, or the text encoder's last hidden state)."""
        default = self.layer is None or (self.layer == DEFAULT_IMAGE_LAYER and self.settings.get("modality") == "image")
        return None if default else self.layer

    def description(self) -> dict:
        return {
            "model": self.name,
            "checkpoint_sha256": state_dict_hash(self.model),
            "layer": self.layer or (DEFAULT_IMAGE_LAYER if self.settings.get("modality") == "image" else "-1"),
            "pooling": self.pooling,
            **self.settings,
        }


def state_dict_hash(model: nn.Module) -> str:
    """sha256 over parameter/buffer names and bytes: identifies the weights whatever file they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def pool(output: torch.Tensor, pooling: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[N, C, H, W] -> spatial mean; [N, T, C] tokens -> first token ('cls') or (masked) mean; [N, D] as is."""
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    if output.ndim == 3:
        if pooling == "cls":
            return output[:, 0]
        if mask is None:
            return output.mean(dim=1)
        weights = mask.unsqueeze(-1).to(output.dtype)
        return (output * weights).sum(1) / weights.sum(1).clamp(min=1)
    if output.ndim == 2:
        return output
    raise FtpeftError(f"--layer output has shape {tuple(output.shape)}; expected 2, 3 or 4 dimensions.")


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module named ``layer``; an unknown name is one line listing names that exist."""
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise FtpeftError(f"--layer {layer}: no such module; module names look like {names} ...") from None


def check_layer(backbone: Backbone) -> None:
    """Refuse an unknown --layer when the backbone is loaded, before any image or text is read."""
    layer = backbone.hooked_layer
    if layer is None:
        return
    if not _is_int(layer):
        find_layer(backbone.model, layer)
        return
    states = getattr(getattr(backbone.model, "config", None), "num_hidden_layers", None)
    if states is None:  # an image backbone: hidden states are a text encoder's
        raise FtpeftError(f"--layer {layer}: a number picks a text encoder's hidden state; name a module instead.")
    if not -(states + 1) <= int(layer) <= states:
        raise FtpeftError(f"--layer {layer}: the encoder has {states + 1} hidden states (0..{states}, or -1 = last).")


@contextlib.contextmanager
def capture(model: nn.Module, layer: str) -> Iterator[dict]:
    """Forward hook on the module named ``layer``; the output of the last forward lands in ``box['output']``."""
    module = find_layer(model, layer)
    box: dict = {}

    def hook(_module, _inputs, output):
        box["output"] = output[0] if isinstance(output, (tuple, list)) else output

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


@torch.no_grad()
def image_features(backbone: Backbone, pixel_values: torch.Tensor) -> torch.Tensor:
    model = backbone.model
    if backbone.hooked_layer is None:
        return model.forward_head(model.forward_features(pixel_values), pre_logits=True).flatten(1)
    with capture(model, backbone.hooked_layer) as box:
        model(pixel_values)
    return pool(box["output"], backbone.pooling)


@torch.no_grad()
def text_features(backbone: Backbone, batch: dict) -> torch.Tensor:
    mask = batch.get("attention_mask")
    if backbone.layer is None or _is_int(backbone.layer):
        outputs = backbone.model(**batch, output_hidden_states=True)
        hidden = outputs.hidden_states[int(backbone.layer or -1)]
        return pool(hidden, backbone.pooling, mask)
    with capture(backbone.model, backbone.layer) as box:
        backbone.model(**batch)
    return pool(box["output"], backbone.pooling, mask)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def cache_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_cached(feature_dir: str | Path, request: dict) -> Path | None:
    """The folder holding intact features for exactly this request, if one exists.

    Its metadata must parse and name this request, and every shard must be whole: a damaged copy is not
    reused (extraction writes a fresh one over it).
    """
    from ftpeft.core.artifacts import safetensors_problem

    folder = Path(feature_dir) / cache_key(request)
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
        if metadata.get("request") != json.loads(json.dumps(request, default=str)):
            return None
        shards = [folder / name for names in metadata["shards"].values() for name in names]
        if any(not shard.is_file() or safetensors_problem(shard) for shard in shards):
            return None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):  # missing or damaged metadata.json
        return None
    return folder


def distributed_map(count: int, compute: Callable[[list[int]], np.ndarray], desc: str) -> np.ndarray | None:
    """Rows 0..count-1 computed in batches split across accelerate ranks; rank 0 gets all rows, others None."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    with state.split_between_processes(list(range(count))) as mine:
        rows = compute(list(mine))
    if state.num_processes == 1:
        return rows
    parts = gather_object([(state.process_index, rows)])
    if not state.is_main_process:
        return None
    return np.concatenate([rows for _, rows in sorted(parts, key=lambda part: part[0]) if len(rows)])


def batched(indices: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def write_features(
    feature_dir: str | Path,
    request: dict,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    extra: dict | None = None,
) -> Path:
    """Write shards + metadata.json under a temporary name, then rename into FEATURE_DIR/<key>."""
    from safetensors.numpy import save_file

    root = Path(feature_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(request)
    target = root / key
    # an identical extraction that finished meanwhile (or a stale copy) is replaced
    with staged(target, directory=True) as tmp:
        shards = {}
        for split, (features, labels) in splits.items():
            shards[split] = []
            for number, start in enumerate(range(0, max(len(labels), 1), SHARD_ROWS)):
                name = f"{split}-{number:05d}.safetensors"
                save_file(
                    {
                        "features": np.ascontiguousarray(features[start : start + SHARD_ROWS], dtype=np.float32),
                        "labels": np.ascontiguousarray(labels[start : start + SHARD_ROWS]),
                    },
                    str(tmp / name),
                )
                shards[split].append(name)
        metadata = {
            "format": FORMAT,
            "key": key,
            "request": request,
            "feature_dim": int(next(iter(splits.values()))[0].shape[1]),
            "split_sizes": {split: len(labels) for split, (_, labels) in splits.items()},
            "shards": shards,
            **(extra or {}),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    atomic_write_text(root / LATEST_FILE, key + "\n")
    return target


def resolve_feature_dir(path: str | Path) -> Path:
    """A feature folder, or a cache root (then the latest extraction written there)."""
    path = Path(path)
    if (path / METADATA_FILE).is_file():
        return path
    if (path / LATEST_FILE).is_file():
        key = (path / LATEST_FILE).read_bytes().decode("utf-8", errors="replace").strip()
        if key not in {p.name for p in path.iterdir() if p.is_dir()}:  # a damaged latest.txt names no extraction
            raise FtpeftError(
                f"{path / LATEST_FILE}: names {key[:40]!r}, no extraction folder in {path}; pass the extraction "
                "folder itself as --features_dir, or run recipes/extract_features.py again."
            )
        return path / key
    raise FtpeftError(f"--features_dir {path}: no metadata.json (run recipes/extract_features.py first).")


def load_features(path: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """({split: (features [N, D] float32, labels)}, metadata) from an extraction folder or cache root; the labels
    by problem type as the module docstring says (``feature_target(metadata)`` reads the target)."""
    from safetensors.numpy import load_file

    from ftpeft.core.artifacts import check_safetensors, read_json_file

    folder = resolve_feature_dir(path)
    again = "run recipes/extract_features.py again"
    metadata = read_json_file(folder / METADATA_FILE, "a feature folder", advice=again)
    if metadata.get("format") != FORMAT or not isinstance(metadata.get("shards"), dict):
        raise FtpeftError(f"--features_dir {folder}: format {metadata.get('format')!r}, expected {FORMAT!r}.")
    splits = {}
    for split, names in metadata["shards"].items():
        for name in names:
            if not (folder / name).is_file():
                raise FtpeftError(f"{folder / name}: missing; {again}.")
            check_safetensors(folder / name, advice=again)
        parts = [load_file(str(folder / name)) for name in names]
        splits[split] = (
            np.concatenate([p["features"] for p in parts]),
            np.concatenate([p["labels"] for p in parts]),
        )
    problem = _metadata_problem(metadata)  # after the shards: a cut shard is the likelier damage, named first
    if problem:
        raise FtpeftError(f"{folder / METADATA_FILE}: damaged ({problem}); {again}.")
    target = feature_target(metadata)
    for split, (features, labels) in splits.items():
        if not np.isfinite(features).all():  # bytes overwritten inside a shard whose header is whole
            raise FtpeftError(f"{folder}: the {split} features hold NaN or inf values (a damaged shard); {again}.")
        problem = _labels_problem(labels, target)
        if problem:
            raise FtpeftError(f"{folder}: the {split} labels {problem}; {again}.")
    return splits, metadata


def feature_target(metadata: dict) -> Target:
    """The labels' Target an extraction recorded; one class per row of ``label_names`` for folders written before
    targets were recorded."""
    if isinstance(metadata.get("target"), dict):
        return Target.from_dict(metadata["target"])
    return single_label(metadata["label_names"])


def target_key(target: Target) -> dict:
    """The target as part of the cache key: everything but ``why`` (how auto decided does not change the labels)."""
    return {k: v for k, v in target.to_dict().items() if k != "why"}


def stored_labels(labels, target: Target) -> np.ndarray:
    """What a shard keeps (see the module docstring), from the labels the text and image loaders encode: class ids,
    multi-hot rows, or numbers as z-scores of the target's training mean and sd (stored in the target's units)."""
    if target.is_single_label:
        return np.asarray(labels, dtype=np.int64)
    values = np.asarray(labels, dtype=np.float64).reshape(len(labels), target.num_outputs)
    if target.is_regression:
        from ftpeft.labels.scores import unscale

        values = unscale(values, target)
    return values.astype(np.float32)


def _labels_problem(labels: np.ndarray, target: Target) -> str | None:
    """How a split's stored labels disagree with the target (None: they fit)."""
    if target.is_single_label:
        if labels.ndim == 1 and (not labels.size or (0 <= labels.min() and labels.max() < target.num_outputs)):
            return None
        top = labels.max() if labels.size else None
        return f"run to {top} (shape {labels.shape}) but metadata.json names {target.num_outputs} classes"
    if labels.ndim != 2 or labels.shape[1] != target.num_outputs:
        return f"have shape {labels.shape}; metadata.json's target has {target.num_outputs} output(s)"
    if target.is_multi_label and not np.isin(labels, (0.0, 1.0)).all():
        return "are not 0/1 (label sets are stored multi-hot)"
    if not np.isfinite(labels).all():
        return "hold NaN or inf values"
    return None


METADATA_TYPES = {"label_names": list, "modality": str, "split_sizes": dict, "request": dict}  # what readers use


def _metadata_problem(metadata: dict) -> str | None:
    """What is missing or malformed in an extraction's metadata.json (None: what train_head and predict read is
    there)."""
    for key, kind in METADATA_TYPES.items():
        if not isinstance(metadata.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    backbones = metadata["request"].get("backbones")
    if not (isinstance(backbones, list) and backbones and all(isinstance(b, dict) and "model" in b for b in backbones)):
        return "'request.backbones' is missing or malformed"
    if "data" not in metadata["request"]:
        return "'request.data' is missing"
    target = metadata.get("target")
    if target is not None:  # folders written before targets were recorded have none: one class per row
        from ftpeft.labels.target import PROBLEM_TYPES, REGRESSION

        if not (isinstance(target, dict) and target.get("problem_type") in PROBLEM_TYPES.values()):
            return "'target' is malformed"
        if list(target.get("names") or []) != metadata["label_names"]:
            return "'target.names' differ from 'label_names'"
        scaling = [target.get("mean"), target.get("std")]
        if target["problem_type"] == REGRESSION and not all(
            isinstance(v, list) and len(v) == len(target["names"]) and all(isinstance(x, (int, float)) for x in v)
            for v in scaling
        ):
            return "'target.mean' or 'target.std' is not one number per target"
    return None


# --- loading backbones and running them over a dataset ------------------------------------------------------


def load_image_backbones(feature_args, data_args) -> list[Backbone]:
    """timm backbones (pretrained head kept, eval mode) with their eval transforms."""
    from ftpeft.vision.data import build_transforms
    from ftpeft.vision.models import create_timm_model, resolve_image_model

    names = feature_args.model_name_or_path or [None]
    files = feature_args.pretrained_file or [None] * len(names)
    backbones = []
    for name, weights in zip(names, files):
        name, weights = resolve_image_model(name, weights, demo=True)
        model = create_timm_model(name, None, pretrained=feature_args.pretrained, pretrained_file=weights).eval()
        _, eval_transform, data_config = build_transforms(model, data_args)
        settings = {"modality": "image", "transform": data_config, "pretrained": feature_args.pretrained}
        backbones.append(
            Backbone(name, model, feature_args.layer, feature_args.pooling, eval_transform, settings, weights)
        )
        check_layer(backbones[-1])
    return backbones


def load_text_backbones(feature_args, datasets, text_columns: list[str]) -> list[Backbone]:
    """transformers encoders (AutoModel, eval mode) with their tokenizers; default: the packaged MiniLM. Each
    truncates at --max_seq_length, auto resolved from the training split of ``datasets`` under its own tokenizer."""
    from transformers import AutoModel

    from ftpeft.text.args import ModelArguments, parse_max_seq_length
    from ftpeft.text.data import token_lengths
    from ftpeft.text.modeling import (
        base_model_name,
        check_max_seq_length,
        load_tokenizer,
        model_position_limit,
        resolve_max_seq_length,
        resolve_model_path,
    )
    from ftpeft.text.windows import resolve_doc_stride, resolve_long_texts

    backbones = []
    train = {"train": datasets["train"]}
    for name in feature_args.model_name_or_path or [None]:
        model_args = ModelArguments(model_name_or_path=name)
        path = resolve_model_path(model_args)
        check_max_seq_length(model_args, path, feature_args.max_seq_length)
        try:
            with loading_model(path):
                model = AutoModel.from_pretrained(path).eval()
        except (OSError, ValueError) as error:
            raise FtpeftError(f"--model_name_or_path {path}: {str(error).splitlines()[0]}") from None
        tokenizer = load_tokenizer(model_args, path)
        lengths = token_lengths(train, tokenizer, text_columns)["train"]
        max_seq_length, why = resolve_max_seq_length(
            feature_args.max_seq_length, lengths, model_position_limit(model_args, path), path
        )
        logger.info("%s: max_seq_length %s -> %d (%s)", path, feature_args.max_seq_length, max_seq_length, why)
        settings = {"modality": "text", "max_seq_length": max_seq_length}  # the number: part of the cache key
        given = parse_max_seq_length(feature_args.max_seq_length) is not None
        windows, why = resolve_long_texts(feature_args.long_texts, given, lengths, max_seq_length, len(text_columns))
        if windows:  # a text's features: the mean of its windows' (the key changes only for windowed extractions)
            settings["doc_stride"] = resolve_doc_stride(feature_args.doc_stride, max_seq_length)
            logger.info("%s: long texts read as windows of %d tokens (%s)", path, max_seq_length, why)
        backbones.append(
            Backbone(base_model_name(model_args), model, feature_args.layer, feature_args.pooling, tokenizer, settings)
        )
        check_layer(backbones[-1])
    return backbones


def _progress(total: int, desc: str):
    from accelerate import PartialState
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not PartialState().is_main_process)


def extract_image_splits(backbones: list[Backbone], splits: dict, batch_size: int) -> dict | None:
    """{split: (features of all backbones side by side, labels as the images hold them)} on rank 0; None on other
    ranks (``stored_labels`` gives the labels the stored form)."""
    from ftpeft.vision.data import pixel_batch

    result = {}
    for split, images in splits.items():
        columns = []
        for backbone in backbones:
            bar = _progress(len(images), f"{backbone.name} {split}")

            def compute(indices, backbone=backbone, images=images, bar=bar):
                rows = []
                for batch in batched(indices, batch_size):
                    pixels = pixel_batch(backbone.transform, [images.image(i) for i in batch])
                    rows.append(image_features(backbone, pixels).float().numpy())
                    bar.update(len(batch) * _world_size())
                return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

            columns.append(distributed_map(len(images), compute, split))
            backbone.feature_dim = None if columns[-1] is None else int(columns[-1].shape[1])
            bar.close()
        if columns[0] is not None:
            result[split] = (np.concatenate(columns, axis=1), np.asarray(images.labels))  # as stored_labels makes
    return result or None


def extract_text_splits(backbones: list[Backbone], datasets, text_columns: list[str], batch_size: int) -> dict | None:
    """Like ``extract_image_splits`` for tokenised text (DataCollatorWithPadding per batch)."""
    from transformers import DataCollatorWithPadding

    from ftpeft.text.data import tokenize

    result: dict = {}
    columns_by_split: dict[str, list] = {split: [] for split in datasets}
    for backbone in backbones:
        tokenizer = backbone.transform
        stride = backbone.settings.get("doc_stride")
        tokenized = tokenize(datasets, tokenizer, text_columns, backbone.settings["max_seq_length"], doc_stride=stride)
        collate = DataCollatorWithPadding(tokenizer)
        for split, dataset in tokenized.items():
            bar = _progress(len(dataset), f"{backbone.name} {split}")

            lengths = [len(ids) for ids in dataset["input_ids"]]

            def compute(indices, backbone=backbone, dataset=dataset, bar=bar, collate=collate, lengths=lengths):
                # batches of similar length pad little (demo tweets: 1.8x fewer tokens than in data order)
                order = sorted(range(len(indices)), key=lambda j: lengths[indices[j]])
                rows = []
                for batch in batched([indices[j] for j in order], batch_size):
                    inputs = collate([{k: v for k, v in dataset[i].items() if k not in NOT_INPUTS} for i in batch])
                    rows.append(text_features(backbone, dict(inputs)).float().numpy())
                    bar.update(len(batch) * _world_size())
                if not rows:
                    return np.zeros((0, 0), np.float32)
                sorted_rows = np.concatenate(rows)
                features = np.empty_like(sorted_rows)
                features[order] = sorted_rows  # back to the order of ``indices``
                return features

            features = distributed_map(len(dataset), compute, split)
            if features is not None and stride is not None:  # windows -> one row per text
                features = pool_windows(features, None, dataset[DOCUMENT_COLUMN])[0]
            columns_by_split[split].append(features)
            backbone.feature_dim = (
                None if columns_by_split[split][-1] is None else int(columns_by_split[split][-1].shape[1])
            )
            bar.close()
    for split, columns in columns_by_split.items():
        if columns[0] is not None:
            result[split] = (np.concatenate(columns, axis=1), np.asarray(datasets[split]["labels"]))
    return result or None


def _world_size() -> int:
    from accelerate import PartialState

    return PartialState().num_processes
