"""Tiny text models and data built from configs, for tests (no Hub)."""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "boring", "terrible"]
FILLER = ["the", "film", "was", "a", "plot", "actor", "movie", "story", "very", "quite", "really", "and"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIALS + POSITIVE + NEGATIVE + FILLER


def make_tokenizer():
    """A word-level fast tokenizer with BERT-style [CLS] ... [SEP] and offsets."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def tiny_config(model_type: str, num_labels: int = 2, num_layers: int = 4):
    from transformers import AutoConfig

    common = {"vocab_size": len(VOCAB), "num_labels": num_labels, "pad_token_id": 0}
    if model_type == "distilbert":
        return AutoConfig.for_model(model_type, dim=32, n_layers=num_layers, n_heads=2, hidden_dim=37, **common)
    kw = dict(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=37, **common)
    if model_type == "electra":
        kw["embedding_size"] = 16
    if model_type == "modernbert":
        kw.update(bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3, global_attn_every_n_layers=2)
    if model_type in ("roberta", "xlm-roberta", "mpnet"):
        kw.update(max_position_embeddings=80)
    return AutoConfig.for_model(model_type, **kw)


def make_tiny_text_model(directory: Path, model_type: str = "bert", num_layers: int = 4) -> str:
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type, num_layers=num_layers))
    model.save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return str(directory)


def sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words)


def make_rows(n: int, seed: int, string_labels: bool = True) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        rows.append({"text": sentence(rng, label), "label": ("pos" if label else "neg") if string_labels else label})
    return rows


def make_text_files(directory: Path, fmt: str = "csv", sizes=(64, 16, 16), string_labels: bool = True) -> Path:
    import pandas as pd

    for split, n, seed in zip(("train", "validation", "test"), sizes, (1, 2, 3)):
        frame = pd.DataFrame(make_rows(n, seed, string_labels))
        path = directory / f"{split}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "json":
            path.write_text(frame.to_json(orient="records"))
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        elif fmt == "parquet":
            frame.to_parquet(path)
    return directory
