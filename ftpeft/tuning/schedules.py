"""Staged unfreezing inside one Trainer run: LP-FT (the readout first, then the layers) and gradual unfreezing (ULMFiT).

``staged_unfreezing(tuning_args, tuning)`` is a Trainer callback that holds the backbone groups still
until their stage starts, logs each switch, and writes ``unfreeze_schedule.json`` (the stages, and per-group
weight checksums at the start, at each switch and at every epoch end, compared across ranks).

How a group that has not unfrozen yet is held still, safely under DDP: every parameter that will ever train
keeps ``requires_grad=True`` and sits in the optimizer from the first step, so DDP's gradient buckets and the
layer-decay LR groups never change. Flipping ``requires_grad`` mid-run instead breaks DDP's reducer (it expects
the same gradients every step), and ``find_unused_parameters`` would cost a graph walk per step and still leave
the optimizer to decay the held weights. A held parameter's gradient is zeroed by a tensor hook as autograd
produces it, so DDP averages zeros and gradient clipping measures only what trains; just before
``optimizer.step()`` it is dropped (``grad = None``), so AdamW skips the parameter entirely: no weight decay, no
moment update, no step count. When the group unfreezes, Adam starts on it fresh, as a newly built optimizer would
(zero gradient with ``lr=0`` would instead count steps and bias-correct the first real update as if it were late).
BatchNorm layers of a held group run in eval mode, as frozen ones do, so their running statistics stay put too.
The cost: backward runs through the held layers (a truly frozen prefix would stop it earlier).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ftpeft.core.errors import FtpeftError
from ftpeft.core.freezing import LayerMap
from ftpeft.core.outputs import write_json
from ftpeft.tuning.args import TuningArguments

logger = logging.getLogger("ftpeft")

SCHEDULE_FILE = "unfreeze_schedule.json"


@dataclasses.dataclass(frozen=True)
class UnfreezeGroup:
    """A set of parameters that starts training together, named by the layer-map groups it covers."""

    label: str  # e.g. "layer_6", "embeddings"
    params: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Stage:
    """From ``start_step`` on (optimizer steps), ``groups`` (labels of UnfreezeGroups) start training."""

    start_step: int
    groups: tuple[str, ...]


def layer_groups(layers: LayerMap) -> dict[str, list[str]]:
    """Parameter names per layer-map group, named as in freeze_report.json (empty groups left out)."""
    groups = {"embeddings": layers.embeddings, "other": layers.other}
    groups.update({f"layer_{i}": names for i, names in enumerate(layers.layers, start=1)})
    groups.update({"top": layers.top, "head": layers.head})
    return {name: list(names) for name, names in groups.items() if names}


def readout(layers: LayerMap) -> tuple[str, ...]:
    """The groups that train from step 0, what ``--unfreeze_last 0`` trains: the head and the top that feeds it
    (a BERT pooler, ModernBERT's final norm; a sentence-embedding checkpoint's pooler was never trained as a readout)."""
    return ("head", "top") if layers.top else ("head",)


def unfreeze_order(
    layers: LayerMap, trainable: Iterable[str], always_trained: Iterable[str] = ()
) -> list[UnfreezeGroup]:
    """The backbone groups that will train, in the order they unfreeze: the top layer, each layer below it, then
    the embeddings (and anything else in the backbone).

    Only parameters in ``trainable`` (what ``apply_tuning`` left trainable) are in a group; the readout (head,
    top) and ``always_trained`` ones (new modules) train from step 0 and are in none.
    """
    held = set(trainable) - set(layers.head) - set(layers.top) - set(always_trained)
    candidates = [(f"layer_{index}", layers.layers[index - 1]) for index in range(layers.num_layers, 0, -1)]
    candidates.append(("embeddings" + (" + other" if layers.other else ""), layers.embeddings + layers.other))
    order = []
    for label, names in candidates:
        params = tuple(name for name in names if name in held)
        if params:
            order.append(UnfreezeGroup(label, params))
    return order


def lp_ft_stages(order: list[UnfreezeGroup], max_steps: int, lp_fraction: float, first=("head",)) -> list[Stage]:
    """The readout (``first``) alone for ``lp_fraction`` of ``max_steps`` (at least one step, and one left), then all."""
    switch = min(max(round(lp_fraction * max_steps), 1), max(max_steps - 1, 1))
    return [Stage(0, tuple(first)), Stage(switch, tuple(group.label for group in order))]


def default_unfreeze_every(groups: int, epoch_steps: int | None, max_steps: int) -> tuple[int, str]:
    """Steps between unfreezings, and why: one epoch (ULMFiT) when the run has an epoch for the head and for every
    group; otherwise the run split into equal stages, so that every group still gets its turn."""
    stages = groups + 1
    if epoch_steps and epoch_steps * stages <= max_steps:
        return epoch_steps, "one epoch per group"
    return max(max_steps // stages, 1), f"the run is shorter than {stages} epochs: {stages} equal stages"


def gradual_stages(order: list[UnfreezeGroup], every: int, first=("head",)) -> list[Stage]:
    """The readout (``first``) at step 0, then one more group every ``every`` steps, top layer first."""
    return [Stage(0, tuple(first))] + [Stage(every * i, (group.label,)) for i, group in enumerate(order, start=1)]


def steps_per_epoch(train_dataloader, gradient_accumulation_steps: int) -> int | None:
    """Optimizer steps in one epoch, counted as Trainer counts them (None without a dataloader length)."""
    try:
        batches = len(train_dataloader)
    except TypeError:
        return None
    return max(math.ceil(batches / gradient_accumulation_steps), 1)


def checksum(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 (first 16 hex digits) over the raw bytes of ``tensors``: equal only if bit-identical."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
    return digest.hexdigest()[:16]


class StagedUnfreezing(TrainerCallback):
    """Holds backbone groups still until their stage (see the module docstring for how), and records it all."""

    def __init__(
        self,
        mode: str,
        model: nn.Module,
        layers: LayerMap,
        order: list[UnfreezeGroup],
        unfreeze_last: str,
        lp_fraction: float | None = None,
        unfreeze_every: int | None = None,
        open_ended: bool = False,
    ):
        self.mode = mode  # "lp_ft" | "gradual_unfreeze"
        # --num_train_epochs auto: the run's length is open (its max_steps is only the cap), so LP-FT's readout
        # phase is --lp_fraction of one epoch (what the one-epoch default gave it), not of the cap
        self.open_ended = open_ended
        self.readout = readout(layers)
        self.order = order
        self.unfreeze_last = unfreeze_last
        self.lp_fraction = lp_fraction
        self.unfreeze_every = unfreeze_every
        params = dict(model.named_parameters())
        self.held_params = {group.label: [params[name] for name in group.params] for group in order}
        self.checked = {name: self._group_tensors(model, names) for name, names in layer_groups(layers).items()}
        self.held_norms = self._held_norms(model)
        self.stages: list[Stage] = []
        self.max_steps = self.every = self.epoch_steps = None
        self.pacing = ""  # why unfreezings are ``every`` steps apart
        self.stage_index = -1  # the stage in force; -1 before training
        self.unlock_stage: dict[str, int] = {}  # group label -> stage index that unfreezes it
        self.snapshots: list[dict[str, Any]] = []
        self._handles: list = []

    # --- setup ---------------------------------------------------------------------------------------------
    @staticmethod
    def _group_tensors(model: nn.Module, names: list[str]) -> list[torch.Tensor]:
        """The group's parameters, plus the buffers (BatchNorm statistics) of the modules that own them."""
        params = dict(model.named_parameters())
        owners = {name.rpartition(".")[0] for name in names}
        buffers = [b for n, b in model.named_buffers() if n.rpartition(".")[0] in owners]
        return [params[name] for name in names] + buffers

    def _held_norms(self, model: nn.Module) -> dict[str, list[nn.Module]]:
        ids = {label: {id(p) for p in params} for label, params in self.held_params.items()}
        norms: dict[str, list[nn.Module]] = {label: [] for label in ids}
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                own = [id(p) for p in module.parameters(recurse=False)]
                for label, members in ids.items():
                    if own and all(p in members for p in own):
                        norms[label].append(module)
        return norms

    def _held(self, label: str) -> bool:
        return self.stage_index < self.unlock_stage[label]

    def _zero_if_held(self, label: str):
        def hook(grad: torch.Tensor) -> torch.Tensor | None:
            return torch.zeros_like(grad) if self._held(label) else None

        return hook

    def _eval_if_held(self, label: str):
        def hook(module: nn.Module, _inputs) -> None:
            if self._held(label):
                module.training = False  # Trainer's model.train() before each step puts it back once unfrozen

        return hook

    # --- Trainer events ------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.max_steps = state.max_steps
        self.epoch_steps = steps_per_epoch(train_dataloader, args.gradient_accumulation_steps)
        if self.mode == "lp_ft":
            basis = self.epoch_steps if self.open_ended and self.epoch_steps else self.max_steps
            self.stages = lp_ft_stages(self.order, basis, self.lp_fraction, self.readout)
        else:
            if self.unfreeze_every:
                self.every, self.pacing = self.unfreeze_every, "--unfreeze_every"
            else:
                self.every, self.pacing = default_unfreeze_every(len(self.order), self.epoch_steps, self.max_steps)
            self.stages = gradual_stages(self.order, self.every, self.readout)
        self.unlock_stage = {label: i for i, stage in enumerate(self.stages) if i for label in stage.groups}
        for label, params in self.held_params.items():
            self._handles += [param.register_hook(self._zero_if_held(label)) for param in params]
            self._handles += [m.register_forward_pre_hook(self._eval_if_held(label)) for m in self.held_norms[label]]
        late = [stage for stage in self.stages if stage.start_step >= self.max_steps]
        for line in self._plan_lines():
            logger.info("%s", line)
        if late:
            shorter = f" or pass --unfreeze_every {max(self.max_steps // len(self.stages), 1)}" if self.every else ""
            logger.warning(
                "%s: %s will not unfreeze: the run ends at step %d; train longer%s.",
                self.mode,
                ", ".join(group for stage in late for group in stage.groups),
                self.max_steps,
                shorter,
            )
        self._enter_stage(state)
        self._snapshot("train_begin", state)

    def on_step_begin(self, args, state, control, **kwargs):
        if self._enter_stage(state):
            self._snapshot("unfreeze", state)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for label, params in self.held_params.items():
            if self._held(label):
                for param in params:
                    param.grad = None  # AdamW skips parameters without a gradient: no decay, no moments

    def on_epoch_end(self, args, state, control, **kwargs):
        self._snapshot("epoch_end", state)

    def on_train_end(self, args, state, control, **kwargs):
        self._snapshot("train_end", state)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if args.should_save:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            write_json(Path(args.output_dir) / SCHEDULE_FILE, self.record())

    # --- stages, snapshots, record -------------------------------------------------------------------------
    def _enter_stage(self, state) -> bool:
        """Move to the stage in force at ``state.global_step``; True (and a log line) when it changed."""
        index = max(i for i, stage in enumerate(self.stages) if stage.start_step <= state.global_step)
        if index == self.stage_index:
            return False
        self.stage_index = index
        if state.global_step > 0 or index > 0:
            logger.info(
                "%s: step %d (epoch %.2f): unfreezing %s; training now: %s",
                self.mode,
                state.global_step,
                state.epoch or 0.0,
                ", ".join(self.stages[index].groups),
                ", ".join(self.trainable_labels()),
            )
        return True

    def trainable_labels(self) -> list[str]:
        return [*self.readout] + [label for label in self.unlock_stage if not self._held(label)]

    def _snapshot(self, event: str, state) -> None:
        checksums = {name: checksum(tensors) for name, tensors in self.checked.items()}
        every_rank = [checksums]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            every_rank = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every_rank, checksums)
        self.snapshots.append(
            {
                "event": event,
                "step": state.global_step,
                "epoch": round(state.epoch or 0.0, 4),
                "trainable": self.trainable_labels(),
                "checksums": checksums,
                "ranks": len(every_rank),
                "ranks_identical": all(other == checksums for other in every_rank),
            }
        )

    def _stage_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "start_step": stage.start_step,
                "start_epoch": round(stage.start_step / self.epoch_steps, 4) if self.epoch_steps else None,
                "unfreezes": list(stage.groups),
                "reached": stage.start_step < (self.max_steps or 0),
            }
            for stage in self.stages
        ]

    def record(self) -> dict[str, Any]:
        """What unfreeze_schedule.json holds: settings, stages (planned and reached) and the snapshots."""
        return {
            "mode": self.mode,
            "unfreeze_last": self.unfreeze_last,
            "lp_fraction": self.lp_fraction,
            "lp_fraction_of": "one epoch (--num_train_epochs auto)" if self.open_ended else "the run",
            "unfreeze_every": self.every,
            "pacing": self.pacing,
            "steps_per_epoch": self.epoch_steps,
            "max_steps": self.max_steps,
            "groups": {group.label: list(group.params) for group in self.order},
            "stages": self._stage_rows(),
            "snapshots": self.snapshots,
            "how": "held groups keep requires_grad and their optimizer group; their gradients are zeroed "
            "(hook) and dropped before optimizer.step(), so AdamW skips them (no decay, no moments)",
        }

    def _plan_lines(self) -> list[str]:
        pacing = f"; one group every {self.every} steps ({self.pacing})" if self.every else ""
        lines = [
            f"{self.mode}: {len(self.stages)} stages over {self.max_steps} steps ({self.epoch_steps} per epoch{pacing})"
        ]
        for row in self._stage_rows():
            where = f"epoch {row['start_epoch']:.2f}" if row["start_epoch"] is not None else "no epoch length"
            never = "" if row["reached"] else " (after the last step: never)"
            lines.append(f"  step {row['start_step']} ({where}): {', '.join(row['unfreezes'])}{never}")
        return lines

    def describe(self, tuning: str) -> str:
        """The card's tuning line: ``tuning`` (the final state, e.g. '--unfreeze_last 2') and when each part began."""
        rows = self._stage_rows()
        if self.mode == "lp_ft":
            switch = rows[1]
            return (
                f"LP-FT (the readout, {' + '.join(self.readout)}, alone for {switch['start_step']} steps; then {tuning} "
                f"from step {switch['start_step']} of {self.max_steps}{_epoch(switch)})"
            )
        parts = [f"{' + '.join(self.readout)} from step 0"] + [
            f"{', '.join(row['unfreezes'])} at step {row['start_step']}{_epoch(row)}"
            for row in rows[1:]
            if row["reached"]
        ]
        never = [g for row in rows if not row["reached"] for g in row["unfreezes"]]
        tail = f"; never reached: {', '.join(never)}" if never else ""
        every = f"one group every {self.every} steps, {self.pacing}"
        return f"gradual unfreezing up to {tuning} ({every}: {'; '.join(parts)}{tail})"


def _epoch(row: dict[str, Any]) -> str:
    return f", epoch {row['start_epoch']:.2f}" if row["start_epoch"] is not None else ""


def staged_unfreezing(
    tuning_args: TuningArguments, tuning, always_trained: Iterable[str] = (), open_ended: bool = False
) -> StagedUnfreezing | None:
    """The LP-FT / gradual-unfreezing callback for a Trainer when ``tuning_args`` ask for one (else None).

    ``tuning`` is ``apply_tuning``'s report (its model, as tuned, and layer map): call this right after it, before
    anything (``--cache_frozen``) moves parts of the model. ``always_trained`` are parameters that train from step 0
    besides the head (new modules such as knowledge fusion). ``open_ended``: the run stops on validation
    (``--num_train_epochs auto``), so LP-FT's readout phase is measured in epochs. Add the result with
    ``trainer.add_callback``.
    """
    if not (tuning_args.lp_ft or tuning_args.gradual_unfreeze):
        return None
    mode = "lp_ft" if tuning_args.lp_ft else "gradual_unfreeze"
    trainable = [name for name, param in tuning.model.named_parameters() if param.requires_grad]
    order = unfreeze_order(tuning.layers, trainable, always_trained)
    if not order:
        raise FtpeftError(f"--{mode}: nothing in the backbone trains with --unfreeze_last {tuning_args.unfreeze_last}.")
    return StagedUnfreezing(
        mode,
        tuning.model,
        tuning.layers,
        order,
        tuning_args.unfreeze_last,
        lp_fraction=tuning_args.lp_fraction if tuning_args.lp_ft else None,
        unfreeze_every=tuning_args.unfreeze_every,
        open_ended=open_ended,
    )
