"""Knowledge sources for injection: vector tables keyed by entity/word, entity mentions, per-example features.

- ``read_knowledge_file(path)``: a table of vectors keyed by entity/word. Formats: ``.npy`` + a key list
  (``<stem>.txt`` or ``<stem>.keys.txt``, one key a line); ``.safetensors`` with a tensor ``vectors`` and
  the keys in the metadata (``"keys"``: a JSON list) or a sidecar key list; text: word2vec/GloVe
  (``key v1 v2 ...``, an optional ``N D`` header), tab-separated ``key<TAB>v1<TAB>...`` (AFINN), or the
  VADER lexicon (``token<TAB>mean<TAB>sd<TAB>[ten ratings]`` -> 12 values scaled by 1/4 into [-1, 1]).
- ``load_knowledge_table(paths)``: several files are merged into one table over the union of their keys;
  a key's vector is the concatenation of its vector in each source (zeros where a source lacks the key).
- Mentions: a column of spans (``[{"start", "end", "key"}, ...]`` or ``[[start, end, key], ...]``, char
  offsets into the first text column) or exact, case-insensitive, word-bounded matching of the table's
  keys (longest phrase first) in the text.
- Token alignment: a mention's id goes to the FIRST sub-token it overlaps only (see ``align_mentions``).
- ``tokenize_with_knowledge``: tokens + ``knowledge_ids`` (token level), ``example_knowledge_ids`` (an ID
  column looked up in the table) and ``knowledge_vectors`` (columns of float lists), in one pass.
- ``KnowledgeCollator``: pads ``knowledge_ids`` with 0 (= "no knowledge") next to ``input_ids``.

Ids: 0 = no knowledge, 1 = unknown entity/ID (not in the table), 2.. = table rows (``ftpeft.injection``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import string
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FtpeftError
from .injection import FIRST_ROW_ID, INJECT_MODES, NO_KNOWLEDGE_ID, UNKNOWN_ID, UNKNOWN_MODES

TEXT_SUFFIXES = (".txt", ".vec", ".tsv", ".glove", ".w2v")
KNOWLEDGE_FORMATS = (".npy", ".safetensors", *TEXT_SUFFIXES)
VADER_FILE = "vader_lexicon.txt"
VADER_SCALE = 4.0  # VADER ratings live in -4..4
KNOWLEDGE_COLUMNS = ("knowledge_ids", "example_knowledge_ids", "knowledge_vectors")


@dataclasses.dataclass
class KnowledgeArguments:
    inject: str = dataclasses.field(
        default="add",
        metadata={
            "help": "Where external knowledge enters: add (projected entity vectors added to token embeddings), "
            "concat (example features concatenated with [CLS] before an MLP), gate (learned gate between text "
            "and external features), none (text-only control).",
            "choices": list(INJECT_MODES),
        },
    )
    knowledge_file: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "One or more vector tables keyed by entity/word (.npy + key list, .safetensors, word2vec/GloVe "
            "or tab-separated text); several are concatenated. Default: the VADER lexicon (vaderSentiment)."
        },
    )
    knowledge_column: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "concat/gate: columns with per-example features -- a list of floats (used as is) or an "
            "entity ID looked up in --knowledge_file. With these, the text is not matched against the table."
        },
    )
    entity_column: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Column of entity mentions [{start, end, key}, ...] (char offsets into the first text column). "
            "Default: exact, case-insensitive, word-bounded matching of the table's keys in the text."
        },
    )
    train_knowledge: bool = dataclasses.field(
        default=False, metadata={"help": "Also train the knowledge table (frozen by default: it is the knowledge)."}
    )
    unknown_entity: str = dataclasses.field(
        default="zero",
        metadata={"help": "Vector of a mention/ID missing from the table: zero, or one learned UNK vector.",
                  "choices": list(UNKNOWN_MODES)},
    )
    knowledge_dim: int | None = dataclasses.field(
        default=None, metadata={"help": "Expected total width of the knowledge vectors; checked against the files."}
    )
    fusion_hidden_size: int = dataclasses.field(
        default=256, metadata={"help": "concat/gate: width of the fusion layer before the classifier."}
    )

    def __post_init__(self):
        if self.inject not in INJECT_MODES:
            raise FtpeftError(f"--inject must be one of {', '.join(INJECT_MODES)}, got '{self.inject}'.")
        if self.unknown_entity not in UNKNOWN_MODES:
            raise FtpeftError(f"--unknown_entity must be one of {', '.join(UNKNOWN_MODES)}, got '{self.unknown_entity}'.")
        if self.inject == "add" and self.knowledge_column:
            raise FtpeftError("--knowledge_column gives example-level features; use it with --inject concat or gate, not add.")
        if self.inject == "none" and (self.knowledge_file or self.knowledge_column or self.entity_column):
            raise FtpeftError("--inject none is the text-only control; drop --knowledge_file/--knowledge_column/--entity_column.")
        if self.knowledge_dim is not None and self.knowledge_dim <= 0:
            raise FtpeftError(f"--knowledge_dim must be positive, got {self.knowledge_dim}.")
        if self.fusion_hidden_size <= 0:
            raise FtpeftError(f"--fusion_hidden_size must be positive, got {self.fusion_hidden_size}.")

    @property
    def uses_token_knowledge(self) -> bool:
        """add always; concat/gate when mentions come from spans or text matching (not only from columns)."""
        return self.inject == "add" or (self.inject != "none" and (bool(self.entity_column) or not self.knowledge_column))


# --- tables ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class KnowledgeTable:
    """Vectors keyed by entity/word; row i has knowledge id i + 2."""

    keys: list[str]
    vectors: np.ndarray  # (N, D) float32
    sources: list[dict[str, Any]]  # [{"name", "dim", "rows"}] in concatenation order

    def __post_init__(self):
        self._exact = {key: i + FIRST_ROW_ID for i, key in enumerate(self.keys)}
        self._lower: dict[str, int] = {}
        for i, key in enumerate(self.keys):  # case-insensitive: the first key wins among case variants
            self._lower.setdefault(_normalise(key), i + FIRST_ROW_ID)
        self.max_words = max((len(k.split()) for k in self._lower), default=1)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def id_of(self, key: Any) -> int:
        """Knowledge id of ``key`` (exact, then case-insensitive); 1 (unknown) when absent, 0 for None/''."""
        if key is None or (isinstance(key, float) and math.isnan(key)) or str(key) == "":
            return NO_KNOWLEDGE_ID
        key = str(key)
        return self._exact.get(key) or self._lower.get(_normalise(key)) or UNKNOWN_ID

    def phrase_id(self, phrase: str) -> int | None:
        return self._lower.get(_normalise(phrase))

    @classmethod
    def from_keys_file(cls, path: str | Path) -> KnowledgeTable:
        """Keys only (a run's knowledge_keys.txt): enough to find ids at inference; the vectors are in the model."""
        keys = Path(path).read_text(encoding="utf-8").splitlines()
        return cls(keys, np.zeros((len(keys), 1), dtype=np.float32), [{"name": Path(path).name, "dim": 0, "rows": len(keys)}])


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _flag_file(path) -> str:
    return f"--knowledge_file {path}"


def vader_lexicon_path() -> Path:
    """The VADER lexicon inside the installed ``vadersentiment`` package (the default knowledge source)."""
    from .data.demo import packaged_file

    return packaged_file(
        "vaderSentiment", VADER_FILE, "no --knowledge_file given and the default VADER lexicon is missing: pip install vadersentiment"
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
        raise FtpeftError(f"{_flag_file(path)}: no key list next to it ({path.with_suffix('.txt').name}, one key a line).")
    return keys, vectors


def _read_safetensors(path: Path) -> tuple[list[str], np.ndarray]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        if "vectors" not in handle.keys():
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
    except Exception as error:  # numpy, safetensors and decoding raise many types
        raise FtpeftError(f"{_flag_file(path)}: cannot read it ({type(error).__name__}: {error}).") from None
    return _validated(path, keys, np.asarray(vectors, dtype=np.float32))


def _validated(path: Path, keys: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise FtpeftError(f"{_flag_file(path)}: expected a 2-D (keys x dim) table, got shape {vectors.shape}.")
    if len(keys) != len(vectors):
        raise FtpeftError(f"{_flag_file(path)}: {len(vectors)} vectors but {len(keys)} keys; each vector needs one key.")
    empty = [i for i, key in enumerate(keys) if not key.strip()]
    if empty:
        raise FtpeftError(f"{_flag_file(path)}: row {empty[0]} has an empty (missing) key.")
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            raise FtpeftError(f"{_flag_file(path)}: key {key!r} appears twice (rows {seen[key]} and {i}); keys must be unique.")
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


# --- mentions and token alignment ------------------------------------------------------------------------
_WORD = re.compile(r"\S+")
_PUNCTUATION = string.punctuation + "“”‘’…"


def match_mentions(text: str, table: KnowledgeTable) -> list[tuple[int, int, int]]:
    """Exact, case-insensitive matches of the table's keys in ``text`` at word boundaries.

    Words are whitespace-delimited; a word (or the ends of a phrase) may carry punctuation that is
    stripped for a second try ("good!" matches "good", ":)" matches ":)"). Longest phrase first,
    no overlaps. Returns (char start, char end, knowledge id).
    """
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    mentions, i = [], 0
    while i < len(words):
        found = None
        for n in range(min(table.max_words, len(words) - i), 0, -1):
            start, end = words[i][0], words[i + n - 1][1]
            knowledge_id = table.phrase_id(text[start:end])
            if knowledge_id is None:
                phrase = text[start:end]
                left = len(phrase) - len(phrase.lstrip(_PUNCTUATION))
                right = len(phrase.rstrip(_PUNCTUATION))
                if right > left:
                    knowledge_id = table.phrase_id(phrase[left:right])
                    start, end = start + left, start + right
            if knowledge_id is not None:
                found = (start, end, knowledge_id, n)
                break
        if found:
            mentions.append(found[:3])
            i += found[3]
        else:
            i += 1
    return mentions


def parse_spans(value: Any, row: int, text: str, column: str) -> list[tuple[int, int, str]]:
    """Spans of one row of ``--entity_column`` -> (start, end, key), checked against the text length."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise FtpeftError(f"--entity_column {column}: row {row} is not a JSON list of spans ({value[:60]!r}).") from None
    spans = []
    for span in value:
        try:
            start, end, key = (span["start"], span["end"], span["key"]) if isinstance(span, dict) else span
            start, end = int(start), int(end)
        except (KeyError, TypeError, ValueError):
            raise FtpeftError(
                f"--entity_column {column}: row {row} has a span {span!r}; expected {{start, end, key}} or [start, end, key]."
            ) from None
        if not 0 <= start < end <= len(text):
            raise FtpeftError(
                f"--entity_column {column}: row {row} span ({start}, {end}, {key!r}) is outside the text (length {len(text)})."
            )
        spans.append((start, end, str(key)))
    return spans


def align_mentions(
    offsets: list[tuple[int, int]], sequence_ids: list[int | None], mentions: list[tuple[int, int, int]]
) -> list[int]:
    """Token-level knowledge ids from char-level mentions, using the fast tokenizer's offset_mapping.

    A mention's id goes to the FIRST sub-token it overlaps only, not to every piece: each mention then
    contributes exactly once whatever the tokenizer does with it ("unbelievable" in 3 pieces is not
    injected 3 times as strongly as "good" in one), mean-pooling over mentions (concat/gate) counts
    mentions rather than pieces, and it is the alignment ERNIE (Zhang et al. 2019) uses. The encoder's
    attention spreads the signal to the other pieces. Mentions cut off by truncation get no token.
    Special tokens and the second text of a pair never receive knowledge.
    """
    ids = [NO_KNOWLEDGE_ID] * len(offsets)
    for start, end, knowledge_id in mentions:
        for position, ((token_start, token_end), sequence) in enumerate(zip(offsets, sequence_ids)):
            if sequence != 0 or token_end <= token_start:
                continue
            if token_start < end and token_end > start:
                if ids[position] == NO_KNOWLEDGE_ID:
                    ids[position] = knowledge_id
                break
    return ids


def knowledge_batch(tokenizer, texts: list[str], table: KnowledgeTable, max_length: int = 512, spans=None) -> dict:
    """Inference helper: tokenise ``texts`` and add token-level ``knowledge_ids`` (text matching, or
    ``spans[i]`` = [(start, end, key), ...]); returns padded tensors ready for ``model(**batch)``."""
    features = []
    for i, text in enumerate(texts):
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")
        if spans is None:
            mentions = match_mentions(text, table)
        else:
            mentions = [(start, end, table.id_of(key)) for start, end, key in spans[i]]
        encoded["knowledge_ids"] = align_mentions(offsets, encoded.sequence_ids(), mentions)
        features.append(dict(encoded))
    return KnowledgeCollator(tokenizer)(features)


# --- datasets ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class KnowledgeLayout:
    """Which knowledge inputs a dataset carries; becomes part of the model config."""

    token_knowledge: bool
    id_columns: list[str]
    vector_columns: dict[str, int]  # column -> width

    @property
    def example_vector_dim(self) -> int:
        return sum(self.vector_columns.values())

    def model_settings(self) -> dict[str, Any]:
        return dict(
            token_knowledge=self.token_knowledge,
            num_example_ids=len(self.id_columns),
            example_vector_dim=self.example_vector_dim,
        )


def _first_value(dataset, column: str):
    for value in dataset[column]:
        if value is not None:
            return value
    return None


def knowledge_layout(datasets, args: KnowledgeArguments) -> KnowledgeLayout:
    """Check the knowledge columns exist in every split and sort them into ID and vector columns."""
    wanted = list(args.knowledge_column or []) + ([args.entity_column] if args.entity_column else [])
    for split, dataset in datasets.items():
        for column in wanted:
            if column not in dataset.column_names:
                flag = "--entity_column" if column == args.entity_column else "--knowledge_column"
                raise FtpeftError(f"{flag} '{column}' not found in the {split} split; columns: {dataset.column_names}.")
    id_columns, vector_columns = [], {}
    for column in args.knowledge_column or []:
        first = _first_value(datasets["train"], column)
        if isinstance(first, (list, tuple, np.ndarray)):
            vector_columns[column] = len(first)
        else:
            id_columns.append(column)
    if id_columns and not args.knowledge_file:
        raise FtpeftError(f"--knowledge_column {id_columns} hold IDs; pass --knowledge_file to look them up in.")
    return KnowledgeLayout(args.uses_token_knowledge, id_columns, vector_columns)


def _vector(value, column: str, width: int, row: int) -> list[float]:
    if value is None or len(value) != width:
        got = "nothing" if value is None else f"{len(value)} values"
        raise FtpeftError(f"--knowledge_column {column}: row {row} has {got}, expected {width} floats (as the first row).")
    vector = [math.nan if v is None else float(v) for v in value]  # readers turn NaN into None
    if not all(math.isfinite(v) for v in vector):
        raise FtpeftError(f"--knowledge_column {column}: row {row} has NaN/inf/missing values.")
    return vector


def tokenize_with_knowledge(
    datasets,
    tokenizer,
    text_columns: list[str],
    max_length: int,
    table: KnowledgeTable | None,
    layout: KnowledgeLayout,
    args: KnowledgeArguments,
    num_proc: int | None = None,
):
    """Tokenise every split (no padding) and add the knowledge inputs the layout asks for, in one pass.

    Keeps only the model inputs, ``labels`` and the knowledge columns.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise FtpeftError("knowledge injection aligns mentions with offset_mapping, which needs a fast tokenizer.")
    token_level = layout.token_knowledge and table is not None
    entity_column = args.entity_column

    def encode(batch, indices):
        texts = [["" if t is None else str(t) for t in batch[c]] for c in text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")
        if token_level:
            rows = []
            for i, text in enumerate(texts[0]):
                if entity_column:
                    spans = parse_spans(batch[entity_column][i], indices[i], text, entity_column)
                    mentions = [(s, e, table.id_of(key)) for s, e, key in spans]
                else:
                    mentions = match_mentions(text, table)
                rows.append(align_mentions(offsets[i], encoded.sequence_ids(i), mentions))
            encoded["knowledge_ids"] = rows
        if layout.id_columns:
            encoded["example_knowledge_ids"] = [
                [table.id_of(batch[c][i]) if table else UNKNOWN_ID for c in layout.id_columns] for i in range(len(texts[0]))
            ]
        if layout.vector_columns:
            encoded["knowledge_vectors"] = [
                sum((_vector(batch[c][i], c, w, indices[i]) for c, w in layout.vector_columns.items()), [])
                for i in range(len(texts[0]))
            ]
        return encoded

    from datasets import DatasetDict

    tokenized = {}
    for split, dataset in datasets.items():
        drop = [c for c in dataset.column_names if c != "labels"]
        tokenized[split] = dataset.map(
            encode, batched=True, with_indices=True, remove_columns=drop, num_proc=num_proc, desc=f"tokenising {split}"
        )
    return DatasetDict(tokenized)


def knowledge_stats(tokenized) -> dict[str, dict[str, int]]:
    """Per split: examples, mentions aligned to a token, unknown entities/IDs, examples with any known entry."""
    stats = {}
    for split, dataset in tokenized.items():
        counts = {"examples": len(dataset), "mentions": 0, "unknown": 0, "examples_with_knowledge": 0}
        columns = [c for c in ("knowledge_ids", "example_knowledge_ids") if c in dataset.column_names]
        for row in dataset.select_columns(columns) if columns else []:
            ids = [i for c in columns for i in row[c]]
            counts["mentions"] += sum(i != NO_KNOWLEDGE_ID for i in row.get("knowledge_ids", []))
            counts["unknown"] += sum(i == UNKNOWN_ID for i in ids)
            counts["examples_with_knowledge"] += any(i >= FIRST_ROW_ID for i in ids)
        if "knowledge_vectors" in dataset.column_names:
            counts["examples_with_knowledge"] = len(dataset)
        stats[split] = counts
    return stats


def knowledge_report(stats: dict[str, dict[str, int]], unknown_entity: str) -> tuple[dict[str, int], list[str]]:
    """Flat metrics (``knowledge_<split>_<count>``) for metrics.json and one card note per split."""
    metrics, notes = {}, []
    for split, counts in stats.items():
        metrics.update({f"knowledge_{split}_{key}": value for key, value in counts.items()})
        notes.append(
            f"Knowledge ({split}): {counts['examples_with_knowledge']:,}/{counts['examples']:,} examples with a known "
            f"entry, {counts['mentions']:,} token-level mentions, {counts['unknown']:,} unknown entities/IDs "
            f"(given the {'learned UNK' if unknown_entity == 'learned' else 'zero'} vector)."
        )
    return metrics, notes


class KnowledgeCollator:
    """Pads the text like ``DataCollatorWithPadding`` and the knowledge inputs next to it.

    ``knowledge_ids`` are padded with 0 (= no knowledge) on the tokenizer's padding side, to exactly
    the padded ``input_ids`` length; ID slots and float vectors are stacked. Everything is a plain tensor
    in the batch, so it works unchanged under DDP.
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        from transformers import DataCollatorWithPadding

        self.tokenizer = tokenizer
        self.text_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        features = [dict(f) for f in features]
        extra = {name: [f.pop(name) for f in features] for name in KNOWLEDGE_COLUMNS if name in features[0]}
        batch = self.text_collator(features)
        if "knowledge_ids" in extra:
            length = batch["input_ids"].shape[1]
            left = self.tokenizer.padding_side == "left"
            padded = []
            for ids in extra["knowledge_ids"]:
                ids = list(ids)
                pad = [NO_KNOWLEDGE_ID] * (length - len(ids))
                padded.append(pad + ids if left else ids + pad)
            batch["knowledge_ids"] = torch.tensor(padded, dtype=torch.long)
        if "example_knowledge_ids" in extra:
            batch["example_knowledge_ids"] = torch.tensor(extra["example_knowledge_ids"], dtype=torch.long)
        if "knowledge_vectors" in extra:
            batch["knowledge_vectors"] = torch.tensor(extra["knowledge_vectors"], dtype=torch.float32)
        return batch
