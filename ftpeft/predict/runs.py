"""Which kind of ftpeft output directory a path is, told from its files, and the settings it was trained with."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ftpeft.core.errors import FtpeftError, first_line

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
# what each kind of run leaves in its --output_dir (the first match wins, in this order)
KINDS = {
    "head": "head.skops or head.safetensors + head_config.json (recipes/train_head.py)",
    "adapter": "adapter_config.json without merged/ (bert_cls --use_peft)",
    "knowledge": "config.json of model_type ftpeft-knowledge + knowledge_keys.txt (knowledge_cls)",
    "timm": "timm's config.json with an architecture (image_cls)",
    "text": "a transformers config.json + tokenizer (bert_cls, or merged/ of a LoRA run)",
}


@dataclasses.dataclass
class SavedRun:
    """A finished run: its kind, the folder with the weights, and its arguments (run_args.yaml; {} if absent)."""

    kind: str
    run_dir: Path
    model_dir: Path  # run_dir, or run_dir/merged for a merged LoRA run
    settings: dict[str, Any]

    def setting(self, name: str, default: Any = None) -> Any:
        return self.settings.get(name, default)


def read_run_settings(run_dir: Path) -> dict[str, Any]:
    """The run's run_args.yaml (a merged/ folder reads its parent's); {} when the folder has none."""
    import yaml

    from ftpeft.core.lifecycle import RUN_ARGS_FILE
    from ftpeft.tuning.lora import MERGED_DIR

    candidates = [run_dir / RUN_ARGS_FILE]
    if run_dir.name == MERGED_DIR:
        candidates.append(run_dir.parent / RUN_ARGS_FILE)
    for path in candidates:
        if path.is_file():
            try:
                settings = yaml.safe_load(path.read_text()) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as error:
                raise FtpeftError(f"{path}: not valid YAML ({first_line(error)}).") from None
            if not isinstance(settings, dict):
                raise FtpeftError(f"{path}: expected a mapping of flag names to values.")
            return settings
    return {}


def detect_run(run_dir: str | Path) -> SavedRun:
    """Tell the kind of ``run_dir`` from its files (see KINDS); anything else is one line saying what was expected."""
    from ftpeft.core.artifacts import read_json_file
    from ftpeft.features.heads import SKOPS_FILE, TORCH_FILE
    from ftpeft.knowledge.model import MODEL_TYPE
    from ftpeft.tuning.lora import MERGED_DIR

    path = Path(run_dir)
    if not path.is_dir():
        raise FtpeftError(f"{path}: no such directory; pass the --output_dir of a finished ftpeft run.")
    settings = read_run_settings(path)
    if (path / SKOPS_FILE).is_file() or (path / TORCH_FILE).is_file():
        return SavedRun("head", path, path, settings)
    model_dir = path
    if (path / ADAPTER_CONFIG).is_file():
        if not (path / MERGED_DIR / MODEL_CONFIG).is_file():
            return SavedRun("adapter", path, path, settings)
        model_dir = path / MERGED_DIR  # the same model without peft at inference
    if not (model_dir / MODEL_CONFIG).is_file():
        expected = "; ".join(KINDS.values())
        raise FtpeftError(f"{path}: not an ftpeft output dir (is the run finished?). Expected one of: {expected}.")
    config = read_json_file(model_dir / MODEL_CONFIG, "a saved model")
    if config.get("model_type") == MODEL_TYPE:
        return SavedRun("knowledge", path, model_dir, settings)
    if "architecture" in config:
        return SavedRun("timm", path, model_dir, settings)
    if "model_type" in config:
        return SavedRun("text", path, model_dir, settings)
    raise FtpeftError(
        f"{model_dir / MODEL_CONFIG}: neither a transformers config (model_type) nor a timm one (architecture)."
    )
