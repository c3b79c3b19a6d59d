"""TrainingArguments that ftpeft derives rather than takes as given: resolved once, in the open.

Each rule says which field changes, to what, and why. ``resolve_settings`` applies the rules that fire,
logs each change, and returns them; the run writes them to ``resolved_settings.json`` so a reader sees
what really ran (``run_args.yaml`` stays the arguments as given, which rerun with ``--config``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

logger = logging.getLogger("ftpeft")
SETTINGS_FILE = "resolved_settings.json"


@dataclasses.dataclass(frozen=True)
class SettingChange:
    field: str
    given: Any
    used: Any
    why: str


def derived_settings(
    training_args, *, keep_all_columns: bool = False, push_at_end: bool = False
) -> list[SettingChange]:
    """The changes ftpeft's runs need on ``training_args``; pure, nothing is applied."""
    import torch

    wanted: list[tuple[str, Any, str]] = [
        # Trainer multiplies a loss that accepts loss kwargs by the number of ranks: wrong for a per-example loss
        ("average_tokens_across_devices", False, "per-example classification loss: no token averaging across ranks"),
    ]
    if not torch.cuda.is_available():
        wanted.append(("dataloader_pin_memory", False, "pinning needs an accelerator; without one it only warns"))
    if keep_all_columns:
        wanted.append(("remove_unused_columns", False, "the batches carry inputs forward() does not name"))
    if push_at_end:
        wanted.append(("push_to_hub", False, "ftpeft pushes once, after the run is saved locally"))
    checkpointing_kwargs = dict(training_args.activation_checkpointing_kwargs or {})
    if training_args.activation_checkpointing and "use_reentrant" not in checkpointing_kwargs:
        # reentrant checkpointing drops the parameter gradients of a block whose inputs do not require grad,
        # which is what frozen bottom layers feed the first trained one
        why = "non-reentrant checkpointing keeps gradients flowing above frozen layers (stated, not left to defaults)"
        wanted.append(("activation_checkpointing_kwargs", {**checkpointing_kwargs, "use_reentrant": False}, why))
    if training_args.hub_token is not None:
        wanted.append(("hub_token", None, "the token is kept out of TrainingArguments (never written anywhere)"))
    changes = []
    for field, used, why in wanted:
        given = getattr(training_args, field)
        if given != used:
            shown = "***" if field == "hub_token" else given
            changes.append(SettingChange(field, shown, used, why))
    return changes


def resolve_settings(training_args, changes: list[SettingChange]) -> dict[str, dict[str, Any]]:
    """Apply ``changes`` to ``training_args`` (the one place ftpeft changes them), log each, return a record."""
    record = {}
    for change in changes:
        setattr(training_args, change.field, change.used)
        logger.info("setting %s: %r -> %r (%s)", change.field, change.given, change.used, change.why)
        record[change.field] = {"given": change.given, "used": change.used, "why": change.why}
    return record
