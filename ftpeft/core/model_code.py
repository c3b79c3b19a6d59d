"""ftpeft's own transformers architectures travel as code: registered with the Auto classes for ftpeft itself, and
saved as a file next to the weights (``ftpeft.hub_code``) for everyone else.

The classes of ``ftpeft.hub_code`` call ``register_for_auto_class``, so every ``save_pretrained`` -- the final save,
Trainer's checkpoints, merged/ -- copies their module and writes ``auto_map``. ``CheckpointFiles`` adds what a
checkpoint needs beside the weights (a knowledge model's keys), and ``ship_model_code`` gives a folder saved before
ftpeft shipped code its module, for ``ftpeft push``.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger("ftpeft")
CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


def register_auto(model_type: str, config_class: type, model_class: type) -> None:
    """Make AutoConfig / AutoModelForSequenceClassification know ``model_type`` (idempotent): ftpeft then loads its
    own models without ``trust_remote_code``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        AutoConfig.register(model_type, config_class)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForSequenceClassification.register(config_class, model_class)
    except ValueError:
        pass


def shipped_module(folder: str | Path):
    """The ``ftpeft.hub_code`` module a saved model folder's config.json names by its model_type; None for a stock
    model (or a folder without config.json)."""
    from ftpeft.hub_code import SHIPPED_MODULES

    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    name = SHIPPED_MODULES.get(model_type)
    return importlib.import_module(f"ftpeft.hub_code.{name}") if name else None


def ship_model_code(folder: str | Path) -> list[str]:
    """Make a saved model of one of ftpeft's own types loadable without ftpeft: when its folder lacks the module file
    or config.json's ``auto_map`` (a run saved before ftpeft shipped code), write them. Returns the names of the files
    written; [] for a stock model or a folder that has both."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.dynamic_module_utils import custom_object_save

    module = shipped_module(folder)
    if module is None:
        return []
    folder = Path(folder)
    filename = Path(module.__file__).name
    stored = json.loads((folder / "config.json").read_text())
    if (folder / filename).is_file() and "AutoModelForSequenceClassification" in stored.get("auto_map", {}):
        return []
    config = AutoConfig.from_pretrained(folder)  # ftpeft's class: importing the module registered it
    model_class = AutoModelForSequenceClassification._model_mapping[type(config)]
    custom_object_save(config, folder, config=config)  # the module file, auto_map's AutoConfig
    config.auto_map[model_class._auto_class] = f"{model_class.__module__.rsplit('.', 1)[-1]}.{model_class.__name__}"
    config.save_pretrained(folder)
    logger.info("%s: wrote %s and config.json's auto_map (it loads without ftpeft)", folder, filename)
    return [filename, "config.json"]


class CheckpointFiles(TrainerCallback):
    """Puts into every checkpoint what it needs beside Trainer's files, so a checkpoint loads (and predicts) as the
    final model does: ``files`` (name -> text, e.g. a knowledge model's keys) and, for a model of ftpeft's own types
    whose code is missing there, that code (``ship_model_code``)."""

    def __init__(self, files: dict[str, str] | None = None):
        self.files = dict(files or {})

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        from ftpeft.core.outputs import atomic_write_text

        checkpoint = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}-{state.global_step}"
        if not checkpoint.is_dir():
            return
        for name, text in self.files.items():
            atomic_write_text(checkpoint / name, text)
        ship_model_code(checkpoint)
