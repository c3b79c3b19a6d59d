"""Which engine wraps the model (DDP, FSDP, DeepSpeed): the one the user asked for, or a clear error before any work.

accelerate decides the engine from what ``accelerate launch`` exports (ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED,
FSDP_*) and the devices it finds. When the two disagree it does not fail: accelerate 1.15 applies FSDP only to
GPU-like ranks and DeepSpeed only with ``use_cpu`` off, so an FSDP or ZeRO config with ``use_cpu`` silently trains
with plain DDP (both run on CPU ranks without it: ``config.deepspeed_on_cpu_ranks``, ``config.fsdp_on_cpu_ranks``).
``check_engine`` compares what was asked with what accelerate set up and refuses a mismatch, or a flag the engine
cannot run (``ENGINE_REFUSALS``: the frozen-prefix cache, LP-FT, gradual unfreezing, the ladder);
``EngineReport`` logs, once the Trainer has wrapped the model, the wrapper and what each rank holds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping

from transformers import TrainerCallback

from ftpeft.core.errors import FtpeftError
from ftpeft.core.trainer import peak_rss_mb

logger = logging.getLogger("ftpeft")

# accelerate turns these distributed types into FSDP when FSDP is asked for (AcceleratorState.__init__)
_FSDP_CAPABLE = {
    "MULTI_GPU",
    "MULTI_XPU",
    "MULTI_NPU",
    "MULTI_MLU",
    "MULTI_SDAA",
    "MULTI_MUSA",
    "MULTI_HPU",
    "MULTI_NEURON",
    "FSDP",
}


@dataclasses.dataclass(frozen=True)
class EngineRequest:
    """What the launch asked for: ``engine`` is FSDP, DEEPSPEED or None (plain data parallel)."""

    engine: str | None
    detail: str  # "FSDP version 2", "ZeRO stage 3"
    source: str  # where the request came from, for the error message


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes")


def asked_engine(training_args, environ: Mapping[str, str] | None = None) -> EngineRequest:
    """The engine the launch asked for: accelerate launch's exports first, then TrainingArguments' own fields."""
    environ = os.environ if environ is None else environ
    deepspeed_arg = getattr(training_args, "deepspeed", None)
    if _flag(environ, "ACCELERATE_USE_DEEPSPEED") or deepspeed_arg:
        stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        if stage is None and isinstance(deepspeed_arg, dict):
            stage = deepspeed_arg.get("zero_optimization", {}).get("stage")
        source = "the accelerate config" if _flag(environ, "ACCELERATE_USE_DEEPSPEED") else "--deepspeed"
        return EngineRequest("DEEPSPEED", f"ZeRO stage {stage if stage is not None else '?'}", source)
    fsdp_arg = getattr(training_args, "fsdp", None)
    if _flag(environ, "ACCELERATE_USE_FSDP") or fsdp_arg:
        version = environ.get("FSDP_VERSION") or str((training_args.fsdp_config or {}).get("version", 1))
        source = "the accelerate config" if _flag(environ, "ACCELERATE_USE_FSDP") else "--fsdp"
        return EngineRequest("FSDP", f"FSDP version {version}", source)
    return EngineRequest(None, "data parallel", "the launch")


def engine_mismatch(asked: EngineRequest, distributed_type: str) -> str | None:
    """Why accelerate's ``distributed_type`` cannot give the engine asked for, or None when it can."""
    if asked.engine == "FSDP" and distributed_type not in _FSDP_CAPABLE:
        where = (
            "a single process" if distributed_type == "NO" else "CPU ranks" if distributed_type == "MULTI_CPU" else ""
        )
        return (
            f"{asked.source} asks for FSDP ({asked.detail}) but accelerate set up {distributed_type}"
            f"{f' ({where})' if where else ''}: accelerate applies FSDP only to 2+ GPU-like ranks and would silently "
            "train without sharding; on CPU ranks drop use_cpu from the config (accelerate_configs/fsdp_cpu.yaml), "
            "or use accelerate_configs/cpu_ddp.yaml for DDP."
        )
    if asked.engine == "DEEPSPEED" and distributed_type != "DEEPSPEED":
        return (
            f"{asked.source} asks for DeepSpeed ({asked.detail}) but accelerate set up {distributed_type}: accelerate "
            "starts DeepSpeed only with use_cpu / ACCELERATE_USE_CPU off and would silently train with plain DDP; "
            "drop use_cpu from the config (CPU ranks: accelerate_configs/deepspeed_zero2_cpu.yaml), or use "
            "accelerate_configs/cpu_ddp.yaml for DDP."
        )
    return None


def fsdp_wrap_problem(asked: EngineRequest, environ: Mapping[str, str] | None = None) -> str | None:
    """Why the FSDP2 wrap policy of the accelerate config cannot shard the model, or None.

    With TRANSFORMER_BASED_WRAP and no class list accelerate wraps every class of the model's ``_no_split_modules``
    (BERT: ``BertEmbeddings`` and ``BertLayer``), then calls ``fully_shard`` on the word embeddings that their
    ``BertEmbeddings`` already sharded, and torch fails in ``DeviceMesh._concatenate``.
    """
    environ = os.environ if environ is None else environ
    if asked.engine != "FSDP" or asked.detail != "FSDP version 2":
        return None
    if environ.get("FSDP_AUTO_WRAP_POLICY") != "TRANSFORMER_BASED_WRAP" or environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP"):
        return None
    return (
        f"{asked.source} asks for FSDP version 2 with TRANSFORMER_BASED_WRAP but names no "
        "fsdp_transformer_layer_cls_to_wrap: accelerate then also wraps the embeddings of the model's "
        "_no_split_modules and torch's fully_shard fails ('TypeError: Invariant encountered: value was None'); "
        "name the layer class, e.g. fsdp_transformer_layer_cls_to_wrap: BertLayer (accelerate_configs/fsdp_cpu.yaml)."
    )


def fsdp_wrap_classes_missing(model, environ: Mapping[str, str] | None = None) -> str | None:
    """Why the FSDP config's fsdp_transformer_layer_cls_to_wrap names a class the model does not have, or None.

    accelerate looks the names up only when it wraps the model, inside train(), and fails there with a traceback
    ("Could not find the transformer layer class ..."); checked once the model is built, before any training.
    """
    environ = os.environ if environ is None else environ
    names = environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    if not _flag(environ, "ACCELERATE_USE_FSDP") or environ.get("FSDP_AUTO_WRAP_POLICY") != "TRANSFORMER_BASED_WRAP":
        return None
    present = {type(module).__name__ for module in model.modules()}
    missing = [name for name in names.split(",") if name and name not in present]
    if not missing:
        return None
    blocks = sorted(name for name in present if name.endswith(("Layer", "Block", "Bottleneck")))
    return (
        f"fsdp_transformer_layer_cls_to_wrap names {missing}, which this model does not have; name its repeated "
        f"blocks instead (this model's candidates: {', '.join(blocks) or 'none found'}), e.g. accelerate launch "
        f"--fsdp_transformer_layer_cls_to_wrap {','.join(blocks[:2]) or 'BLOCK'}."
    )


_DDP_INSTEAD = "launch with DDP (accelerate_configs/cpu_ddp.yaml on CPU ranks, multi_gpu.yaml on GPUs)"
# accelerate.Accelerator.__init__ raises it for every Trainer after the first once DeepSpeed is set up
_SECOND_TRAINER = (
    'accelerate refuses a second Trainer in one process once DeepSpeed is set up ("You cannot pass in a '
    '`deepspeed_plugin` when creating a second `Accelerator`")'
)
_HELD_LAYERS = {
    "DEEPSPEED": "it holds layers still by dropping their gradients just before optimizer.step(), but DeepSpeed "
    "steps inside backward (accelerate's DeepSpeedEngineWrapper.backward calls engine.step()), so AdamW would still "
    "decay the held layers and count their steps",
    "FSDP": "it holds layers still through hooks on the parameters it took before the Trainer wrapped the model, and "
    "fully_shard replaces those with DTensor shards (on 2 CPU ranks its hooks and weight checksums then saw tensors "
    "FSDP no longer trains)",
}
# flag -> engine -> why that engine cannot run it; a flag not named here (--class_weights) runs under every engine
ENGINE_REFUSALS: dict[str, dict[str, str]] = {
    "--cache_frozen": {
        "DEEPSPEED": "after training the cached frozen part is put back and the complete model is evaluated and "
        f"saved by a second Trainer, which {_SECOND_TRAINER}",
        "FSDP": "the cached model swaps the frozen bottom modules for their cached activations, which sharded "
        "parameters do not allow",
    },
    "--lp_ft": _HELD_LAYERS,
    "--gradual_unfreeze": _HELD_LAYERS,
    "ftpeft ladder": {
        "DEEPSPEED": f"its rungs are Trainers run one after another in one process, and {_SECOND_TRAINER}",
        "FSDP": "its LP-FT, gradual and cached rungs cannot run under FSDP (see --lp_ft), so its rungs would not "
        "compare",
    },
}


def refused_flags(asked: EngineRequest, flags: Iterable[str] = ()) -> str | None:
    """Why one of ``flags`` (e.g. "--cache_frozen", "ftpeft ladder") cannot run under the asked engine, or None."""
    for flag in flags:
        why = ENGINE_REFUSALS.get(flag, {}).get(asked.engine or "")
        if why:
            engine = "FSDP" if asked.engine == "FSDP" else f"DeepSpeed {asked.detail}"
            drop = "" if flag.startswith("ftpeft ") else f"drop {flag} or "
            return f"{flag} cannot run under {engine}: {why}; {drop}{_DDP_INSTEAD}."
    return None


def zero3_save_problem(asked: EngineRequest, environ: Mapping[str, str] | None = None) -> str | None:
    """ZeRO-3 without gather-on-save: the final save would not be a model that from_pretrained/timm can load."""
    environ = os.environ if environ is None else environ
    if asked.engine != "DEEPSPEED" or asked.detail != "ZeRO stage 3" or asked.source != "the accelerate config":
        return None
    if _flag(environ, "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"):
        return None
    return (
        "DeepSpeed ZeRO stage 3 keeps a piece of each parameter on each rank, and the final save gathers them only "
        "with zero3_save_16bit_model: true in the accelerate config (as accelerate_configs/deepspeed_zero3_cpu.yaml "
        "has); set it, or use ZeRO stage 2."
    )


def check_engine(training_args, flags: Iterable[str] = ()) -> EngineRequest:
    """Refuse (FtpeftError, exit 2) an engine accelerate will not give, or a flag it cannot run; log the engine."""
    asked = asked_engine(training_args)
    state = training_args.distributed_state
    distributed_type = "NO" if state is None else str(state.distributed_type).split(".")[-1]
    reason = (
        engine_mismatch(asked, distributed_type)
        or fsdp_wrap_problem(asked)
        or zero3_save_problem(asked)
        or refused_flags(asked, flags)
    )
    if reason:
        raise FtpeftError(reason)
    if training_args.process_index == 0:
        wraps = asked.detail if asked.engine else ("DDP" if training_args.world_size > 1 else "no wrapper")
        logger.info(
            "engine: %s wraps the model (accelerate: %s, %d process(es))",
            wraps,
            distributed_type,
            training_args.world_size,
        )
    return asked


def local_parameter_bytes(model) -> tuple[int, int]:
    """(bytes of parameters this rank holds, bytes of the full parameters); DTensor shards count their local part."""
    held = full = 0
    for param in model.parameters():
        # a ZeRO-3 parameter is empty between uses: its shard is ds_tensor and its full size ds_numel
        local = param
        if hasattr(param, "ds_tensor"):
            local = param.ds_tensor
        elif hasattr(param, "to_local"):
            local = param.to_local()
        held += local.numel() * local.element_size()
        full += getattr(param, "ds_numel", param.numel()) * param.element_size()
    return held, full


def optimizer_groups(optimizer) -> str:
    """Each group of the live optimizer: its LR (as given, before warm-up scales it), weight decay, tensor count
    and element count (a DTensor shard counts its full parameter, so every rank and one process read the same)."""
    return "; ".join(
        f"lr {group.get('initial_lr', group['lr']):.3g} wd {group['weight_decay']:g} "
        f"tensors {len(group['params'])} elements {sum(param.numel() for param in group['params']):,}"
        for group in optimizer.param_groups
    )


class EngineReport(TrainerCallback):
    """At the start of training, logs the class that wraps the model, the parameter bytes each rank holds and the
    optimizer groups it steps (taken from the optimizer after accelerate prepared it)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.wrapper: str | None = None
        self.held_bytes: int | None = None
        self.full_bytes: int | None = None
        self.optimizer_groups: str | None = None

    def on_train_end(self, args, state, control, **kwargs):
        if args.world_size > 1:  # each rank's own high-water mark: what sharding saves shows per process
            logger.warning("rank %d: peak RSS %.0f MiB", args.process_index, peak_rss_mb())

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            self.optimizer_groups = optimizer_groups(optimizer)
            logger.warning("rank %d: optimizer groups: %s", args.process_index, self.optimizer_groups)
        wrapped = self.trainer.model_wrapped
        self.wrapper = type(wrapped).__name__
        self.held_bytes, self.full_bytes = local_parameter_bytes(wrapped)
        logger.warning(
            "rank %d: model wrapped by %s; holds %s of %s parameter bytes (%.0f%%)",
            args.process_index,
            self.wrapper,
            f"{self.held_bytes:,}",
            f"{self.full_bytes:,}",
            100 * self.held_bytes / max(self.full_bytes, 1),
        )
