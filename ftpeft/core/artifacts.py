"""Checks of the files a run loads (weights, configs, checkpoint states), made where they are loaded.

A half-copied model folder or a truncated download otherwise ends in a traceback from deep inside
transformers, timm or torch. These checks read only headers and sizes, so they cost milliseconds even for
large weights; a damaged or missing piece is one line naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ftpeft.core.errors import FtpeftError, first_line

SAFETENSORS_INDEX = "model.safetensors.index.json"
WEIGHT_NAMES = ("model.safetensors", "adapter_model.safetensors")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")  # torch.save archives (optimizer, scheduler, RNG, training args)
MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses larger headers too
REFETCH = "re-download or re-copy it"


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a safetensors file (None: header and size agree).

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's byte range,
    then the tensor data; a truncated or overwritten file breaks one of these.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than the 8-byte header length"
    with path.open("rb") as stream:
        header_size = int.from_bytes(stream.read(8), "little")
        if header_size > min(size - 8, MAX_HEADER_BYTES):
            return f"truncated: header of {header_size} bytes declared, {size - 8} bytes follow"
        try:
            header = json.loads(stream.read(header_size))
        except (ValueError, UnicodeDecodeError):
            return "header is not valid JSON"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"header entry {name!r} has no valid data_offsets"
        end = max(end, offsets[1])
    data = size - 8 - header_size
    if data < end:
        return f"truncated: the tensors need {end} bytes of data, the file holds {data}"
    if data > end:
        return f"{data - end} bytes of unexpected data after the tensors"
    return None


def check_safetensors(path: str | Path, advice: str = REFETCH) -> None:
    """Refuse a missing or damaged safetensors file with one line naming it."""
    if not Path(path).is_file():
        raise FtpeftError(f"{path}: missing; {advice}.")
    problem = safetensors_problem(path)
    if problem:
        raise FtpeftError(f"{path}: damaged safetensors file ({problem}); {advice}.")


def torch_archive_problem(path: str | Path) -> str | None:
    """What is wrong with a torch.save file (zip archive; its directory is at the end, so a cut file has none)."""
    return None if zipfile.is_zipfile(path) else "not a complete torch archive (truncated?)"


def read_json_file(path: str | Path, what: str, advice: str = REFETCH) -> dict:
    """A JSON object from ``path``, which ``what`` needs; a missing or unparsable file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FtpeftError(f"{path}: missing; {what} needs it ({advice}).")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise FtpeftError(f"{path}: not valid JSON ({error}); {advice}.") from None
    if not isinstance(data, dict):
        raise FtpeftError(f"{path}: expected a JSON object, got {type(data).__name__}; {advice}.")
    return data


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors weight files of a model/adapter/checkpoint folder, shards of an index included."""
    folder = Path(folder)
    files = [folder / name for name in WEIGHT_NAMES if (folder / name).is_file()]
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = read_json_file(index, "a sharded model").get("weight_map", {})
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise FtpeftError(
                    f"{folder / shard}: missing, listed in {index.name}; re-download or re-copy the model."
                )
            files.append(folder / shard)
    return files


def check_transformers_config(folder: str | Path) -> None:
    """config.json builds its transformers config class: a value of the wrong type (``"hidden_size": null``) or out
    of its range is refused here, naming the file, instead of deep inside the model's loading."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(folder)
    except Exception as error:  # transformers and huggingface_hub raise many types for a bad value  # noqa: BLE001
        raise FtpeftError(
            f"{Path(folder) / 'config.json'}: not a valid config ({first_line(error)}); {REFETCH}."
        ) from None


def check_model_folder(folder: str | Path) -> None:
    """A local transformers model folder: config.json readable, every safetensors weight file whole.

    An adapter-only folder (adapter_config.json, no config.json) needs no config.json.
    """
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        config = read_json_file(folder / "config.json", "a model folder")
        if "model_type" in config:  # a transformers config (a timm one has no model_type)
            check_transformers_config(folder)
    for path in weight_files(folder):
        check_safetensors(path)


def config_mismatch(error: BaseException) -> bool:
    """Whether ``error`` is transformers refusing weights whose shapes differ from what config.json describes."""
    return isinstance(error, RuntimeError) and "ignore_mismatched_sizes" in str(error)


@contextlib.contextmanager
def loading_model(model_path: str | Path) -> Iterator[None]:
    """Load a model inside this: a model folder that transformers cannot build (weights that do not fit config.json,
    a hand-edited or half-copied config such as ``"hidden_size": 0``) ends as one line naming the folder instead of
    whatever transformers or torch raise from deep inside (RuntimeError, ZeroDivisionError, ...)."""
    try:
        yield
    except FtpeftError:
        raise
    except Exception as error:  # the load boundary: anything raised here comes from the folder's files  # noqa: BLE001
        if config_mismatch(error):
            problem = "the weights do not fit its config.json (tensor shapes differ)"
        else:
            problem = f"the model cannot be built from its config.json ({type(error).__name__}: {first_line(error)})"
        raise FtpeftError(
            f"{model_path}: {problem}; a damaged or edited config.json, or one from another model; {REFETCH}."
        ) from None
