"""Tiny assets for the knowledge-injection tests: a 2-layer BERT, a WordPiece tokenizer, tables, data files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = [
    "the", "film", "was", "good", "bad", "great", "awful", "movie", "i", "liked", "hated", "it", "not",
    "very", "new", "york", "paris", "acme", "corp", "is", "a", "city", "and", "so", ":)", "!", ".", ",",
]  # fmt: skip
PIECES = ["un", "##believ", "##able", "##s"]  # "unbelievable" -> 3 pieces; "goods" -> good ##s
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TABLE_KEYS = ["good", "bad", "great", "awful", "unbelievable", "new york", "acme corp", ":)"]
TABLE_DIM = 4


def make_tokenizer(path: Path):
    """A fast WordPiece tokenizer (lower-casing, BERT pre-tokenisation, [CLS] $A [SEP] with offsets)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + PIECES)}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # keeps ":)" whole; punctuation words are in the vocab
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    tokenizer.save_pretrained(path)
    return tokenizer


def make_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BertModel + tokenizer saved to ``path`` (what --model_name_or_path points at)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = make_tokenizer(path)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return path


def table_vectors(keys=TABLE_KEYS, dim=TABLE_DIM, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(keys), dim)).astype(np.float32)


def write_glove(path: Path, keys=TABLE_KEYS, vectors=None, header=False) -> Path:
    """word2vec/GloVe text; multi-word keys are written tab-separated (the only way they fit in text)."""
    vectors = table_vectors(keys) if vectors is None else vectors
    lines = [f"{len(keys)} {vectors.shape[1]}"] if header else []
    for key, vector in zip(keys, vectors):
        values = [f"{v:.6f}" for v in vector]
        lines.append("\t".join([key, *values]) if " " in key else " ".join([key, *values]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_npy(path: Path, keys=TABLE_KEYS, vectors=None) -> Path:
    np.save(path, table_vectors(keys) if vectors is None else vectors)
    path.with_suffix(".txt").write_text("\n".join(keys) + "\n")
    return path


def write_safetensors(path: Path, keys=TABLE_KEYS, vectors=None) -> Path:
    from safetensors.numpy import save_file

    save_file(
        {"vectors": table_vectors(keys) if vectors is None else vectors}, str(path), metadata={"keys": json.dumps(keys)}
    )
    return path


TRAIN_TEXTS = [
    ("the film was good", "positive"),
    ("i liked it :) great movie", "positive"),
    ("very good film", "positive"),
    ("unbelievable film , great", "positive"),
    ("the movie was bad", "negative"),
    ("i hated it , awful", "negative"),
    ("not good , very bad", "negative"),
    ("awful film !", "negative"),
]


def entity_spans(text: str) -> list[dict]:
    """Spans of every table key (and one unknown entity 'paris') in ``text``, as an entity column holds them."""
    spans = []
    for key in TABLE_KEYS + ["paris"]:
        start = text.find(key)
        if start >= 0:
            spans.append({"start": start, "end": start + len(key), "key": key})
    return spans


def write_dataset(
    path: Path, repeat: int = 2, extra_texts: tuple[str, ...] = ("new york is a city and paris",)
) -> Path:
    """A jsonl file: text, label, entities (spans), entity_id (an ID) and features (3 floats) columns."""
    rows = []
    texts = TRAIN_TEXTS + [(t, "positive") for t in extra_texts]
    for i in range(repeat):
        for j, (text, label) in enumerate(texts):
            rows.append(
                {
                    "text": text,
                    "label": label,
                    "entities": entity_spans(text),
                    "entity_id": TABLE_KEYS[j % len(TABLE_KEYS)] if j % 3 else "not-in-table",
                    "features": [float(j), 0.5, -1.0 * i],
                }
            )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
