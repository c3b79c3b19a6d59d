"""One entry point for how much of a model trains: freezing depth or LoRA, new weights, the cache's rules.

``apply_tuning(model, tuning_args)`` finds the model's layer map once and passes it on (freezing, LoRA
placement, the freeze report, the optimizer's LR groups), so text, knowledge and image runs tune alike.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ftpeft.core.errors import FtpeftError
from ftpeft.core.freezing import FreezeReport, LayerMap, freeze_report, keep_frozen_norms_in_eval, layer_map
from ftpeft.core.freezing import unfreeze_last as freeze_all_but_top
from ftpeft.tuning.args import TuningArguments

logger = logging.getLogger("ftpeft")


@dataclasses.dataclass
class TuningReport:
    """What ``apply_tuning`` did: the model to train (peft-wrapped with LoRA), its layer map, and a report."""

    model: nn.Module
    layers: LayerMap  # of ``model`` as returned (peft renames parameters)
    freeze: FreezeReport
    description: str  # one line for the card
    pinned_norms: list[str]  # frozen BatchNorm layers kept in eval mode
    lora_config: object | None = None


def apply_tuning(
    model: nn.Module,
    tuning_args: TuningArguments,
    newly_initialised: Iterable[str] = (),
    then: Callable[[nn.Module], Any] | None = None,
) -> TuningReport:
    """Set ``requires_grad`` on every parameter of ``model`` as ``tuning_args`` say; return what trains.

    ``newly_initialised`` parameters (a new head, fusion modules) always train (with LoRA: as
    ``modules_to_save``). ``then(model)`` runs last, before the report: a capability's own rule, such as
    keeping a knowledge table frozen. With ``--use_peft`` the returned model is the peft wrapper.
    """
    from ftpeft.core.engine import fsdp_wrap_classes_missing
    from ftpeft.tuning.lora import apply_lora, build_lora_config

    wrap_problem = fsdp_wrap_classes_missing(model)  # accelerate would fail on it inside train(), after the run began
    if wrap_problem:
        raise FtpeftError(wrap_problem)
    newly_initialised = sorted(newly_initialised)
    k = tuning_args.unfreeze_last_k
    layers = layer_map(model)
    if tuning_args.cache_frozen and layers.source != "timm":  # timm models are checked on a real batch (cache.stages)
        from ftpeft.cache.prefix import check_cacheable

        check_cacheable(model, k)
    lora_config = None
    if tuning_args.use_peft:
        lora_config = build_lora_config(
            model,
            tuning_args.lora_r,
            tuning_args.lora_alpha,
            tuning_args.lora_dropout,
            tuning_args.lora_target_modules,
            tuning_args.lora_layers,
            k or 0,
            newly_initialised,
            layers,
        )
        model = apply_lora(model, lora_config)
        layers = layer_map(model)  # peft prefixes every name
        description = (
            f"LoRA r={tuning_args.lora_r} alpha={tuning_args.lora_alpha} on {sorted(lora_config.target_modules)}"
            f"; saved with it: {sorted(lora_config.modules_to_save)}"
        )
        spec = f"lora r={tuning_args.lora_r}, fully trained top layers={k or 0}"
    else:
        freeze_all_but_top(model, k, tuning_args.train_embeddings, layers)
        description = f"--unfreeze_last {tuning_args.unfreeze_last}"
        spec = str(tuning_args.unfreeze_last)
        for name, param in model.named_parameters():
            if name in newly_initialised:
                param.requires_grad_(True)
    if then is not None:
        then(model)
    pinned = keep_frozen_norms_in_eval(model)
    report = freeze_report(model, spec, layers)
    logger.info("%s", report.summary())
    if pinned:
        logger.info("BatchNorm layers pinned to eval mode: %d", len(pinned))
    return TuningReport(model, layers, report, description, pinned, lora_config)


def cached_model_param_groups(model: nn.Module, tuning: TuningReport, tuning_args: TuningArguments, training_args):
    """The optimizer's LR groups (head LR, layer decay, weight decay) computed on the complete ``model``, before a
    frozen-prefix cache swaps its bottom out: the cached model trains the same Parameter objects with them."""
    from ftpeft.core.param_groups import build_param_groups

    return build_param_groups(
        model,
        training_args.learning_rate,
        tuning_args.head_lr,
        tuning_args.layer_decay,
        training_args.weight_decay,
        layers=tuning.layers,
    )
