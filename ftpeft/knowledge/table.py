"""Knowledge tables: vectors keyed by entity/word, read from .npy, safetensors or text files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from ftpeft.core.errors import FtpeftError
from ftpeft.hub_code.knowledge_injection import KnowledgeKeys

TEXT_SUFFIXES = (".txt", ".vec", ".tsv", ".glove", ".w2v")


KNOWLEDGE_FORMATS = (".npy", ".safetensors", *TEXT_SUFFIXES)


VADER_FILE = "vader_lexicon.txt"


VADER_SCALE = 4.0  # VADER ratings live in -4..4


# --- tables ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class KnowledgeTable(KnowledgeKeys):
    """Vectors keyed by entity/word; row i has knowledge id i + 2. Keys are looked up as the shipped model's pipeline
    looks them up (``KnowledgeKeys``: exact, then case-insensitive)."""

    keys: list[str]
    vectors: np.ndarray  # (N, D) float32
    sources: list[dict[str, Any]]  # [{"name", "dim", "rows"}] in concatenation order

    def __post_init__(self):
        KnowledgeKeys.__init__(self, self.keys)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def from_keys_file(cls, path: str | Path) -> KnowledgeTable:
        """Keys only (a run's knowledge_keys.txt): enough to find ids at inference; the vectors are in the model."""
        keys = Path(path).read_text(encoding="utf-8").splitlines()
        return cls(
            keys, np.zeros((len(keys), 1), dtype=np.float32), [{"name": Path(path).name, "dim": 0, "rows": len(keys)}]
        )


def _flag_file(path) -> str:
    return f"--knowledge_file {path}"


def vader_lexicon_path() -> Path:
    """The VADER lexicon inside the installed ``vadersentiment`` package (the default knowledge source)."""
    from ftpeft.core.packaged import packaged_file

    return packaged_file(
        "vaderSentiment",
        VADER_FILE,
        "no --knowledge_file given and the default VADER lexicon is missing: pip install vadersentiment",
    )


def _sidecar_keys(path: Path) -> list[str] | None:
    for candidate in (path.with_suffix(".keys.txt"), path.with_suffix(".txt")):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").splitlines()
    return None


def _read_npy(path: Path) -> tuple[list[str], np.ndarray]:
    vectors = np.load(path, allow_pickle=False)
    keys = _sidecar_keys(path)
    if keys is None:
        raise FtpeftError(
            f"{_flag_file(path)}: no key list next to it ({path.with_suffix('.txt').name}, one key a line)."
        )
    return keys, vectors


def _read_safetensors(path: Path) -> tuple[list[str], np.ndarray]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        if "vectors" not in handle.keys():  # noqa: SIM118  (safe_open is not iterable)
            raise FtpeftError(f"{_flag_file(path)}: no tensor named 'vectors' (it has {list(handle.keys())}).")
        vectors = handle.get_tensor("vectors")
        metadata = handle.metadata() or {}
    if "keys" in metadata:
        try:
            keys = json.loads(metadata["keys"])
        except json.JSONDecodeError:
            raise FtpeftError(f"{_flag_file(path)}: metadata 'keys' is not a JSON list of strings.") from None
    else:
        keys = _sidecar_keys(path)
        if keys is None:
            raise FtpeftError(f"{_flag_file(path)}: no 'keys' in its metadata and no key list file next to it.")
    return [str(k) for k in keys], vectors


def _parse_number_fields(fields: list[str]) -> list[float]:
    values = []
    for field in fields:
        values += [float(v) for v in field.strip().strip("[]").replace(",", " ").split()]
    return values


def _read_text(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise FtpeftError(f"{_flag_file(path)}: the file is empty.")
    first = rows[0][1].split()
    if len(first) == 2 and all(part.isdigit() for part in first):  # word2vec header "N D"
        rows = rows[1:]
    is_vader = "\t" in rows[0][1] and rows[0][1].rstrip().endswith("]")
    keys, vectors = [], []
    for number, line in rows:
        if "\t" in line:  # tab-separated: the key may contain spaces (AFINN phrases)
            key, *fields = line.rstrip("\n").split("\t")
        else:
            key, *fields = line.split()
        try:
            values = _parse_number_fields(fields)
        except ValueError:
            raise FtpeftError(f"{_flag_file(path)} line {number}: not 'key value value ...' ({line[:60]!r}).") from None
        if is_vader:
            values = [v / VADER_SCALE for v in values]
        if vectors and len(values) != len(vectors[0]):
            raise FtpeftError(
                f"{_flag_file(path)} line {number}: key {key!r} has {len(values)} values, the first row has "
                f"{len(vectors[0])}; every vector must have the same dimension."
            )
        keys.append(key.strip())
        vectors.append(values)
    if is_vader:  # the shipped lexicon repeats 10 keys; vaderSentiment itself keeps the last line, so do we
        last = {key: i for i, key in enumerate(keys)}
        keep = sorted(last.values())
        keys, vectors = [keys[i] for i in keep], [vectors[i] for i in keep]
    return keys, np.asarray(vectors, dtype=np.float32)


def read_knowledge_file(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(keys, vectors (N, D) float32) from one knowledge file; any problem is an FtpeftError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FtpeftError(f"{_flag_file(path)}: no such file.")
    suffix = path.suffix.lower()
    if suffix not in KNOWLEDGE_FORMATS:
        raise FtpeftError(f"{_flag_file(path)}: unknown format '{suffix}'; use one of {', '.join(KNOWLEDGE_FORMATS)}.")
    try:
        if suffix == ".npy":
            keys, vectors = _read_npy(path)
        elif suffix == ".safetensors":
            keys, vectors = _read_safetensors(path)
        else:
            keys, vectors = _read_text(path)
    except FtpeftError:
        raise
    except Exception as error:  # numpy, safetensors and decoding raise many types  # noqa: BLE001
        raise FtpeftError(f"{_flag_file(path)}: cannot read it ({type(error).__name__}: {error}).") from None
    return _validated(path, keys, np.asarray(vectors, dtype=np.float32))


def _validated(path: Path, keys: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise FtpeftError(f"{_flag_file(path)}: expected a 2-D (keys x dim) table, got shape {vectors.shape}.")
    if len(keys) != len(vectors):
        raise FtpeftError(
            f"{_flag_file(path)}: {len(vectors)} vectors but {len(keys)} keys; each vector needs one key."
        )
    empty = [i for i, key in enumerate(keys) if not key.strip()]
    if empty:
        raise FtpeftError(f"{_flag_file(path)}: row {empty[0]} has an empty (missing) key.")
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            raise FtpeftError(
                f"{_flag_file(path)}: key {key!r} appears twice (rows {seen[key]} and {i}); keys must be unique."
            )
        seen[key] = i
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise FtpeftError(f"{_flag_file(path)}: key {keys[bad[0]]!r} has NaN/inf values ({bad.size} bad row(s)).")
    return keys, vectors


def load_knowledge_table(paths: list[str | Path], expected_dim: int | None = None) -> KnowledgeTable:
    """Read and merge knowledge files (union of keys, vectors concatenated per source, zeros where absent)."""
    parts = [(Path(p), *read_knowledge_file(p)) for p in paths]
    keys: list[str] = []
    index: dict[str, int] = {}
    for _, source_keys, _ in parts:
        for key in source_keys:
            if key not in index:
                index[key] = len(keys)
                keys.append(key)
    total = sum(v.shape[1] for _, _, v in parts)
    if expected_dim is not None and expected_dim != total:
        dims = ", ".join(f"{p.name}: {v.shape[1]}" for p, _, v in parts)
        raise FtpeftError(f"--knowledge_dim {expected_dim} does not match the knowledge files ({dims}; total {total}).")
    merged = np.zeros((len(keys), total), dtype=np.float32)
    offset, sources = 0, []
    for path, source_keys, vectors in parts:
        rows = [index[key] for key in source_keys]
        merged[rows, offset : offset + vectors.shape[1]] = vectors
        offset += vectors.shape[1]
        sources.append({"name": path.name, "dim": int(vectors.shape[1]), "rows": len(source_keys)})
    return KnowledgeTable(keys, merged, sources)
