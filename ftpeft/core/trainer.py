"""A stock ``transformers.Trainer`` with ftpeft's optimizer groups and classification-safe DDP settings."""

from __future__ import annotations

import contextlib
import functools
import logging
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import EvalPrediction, Trainer, TrainerCallback
from transformers.trainer_utils import EvalLoopOutput, denumpify_detensorize

from ftpeft.core.checkpoints import save_sealed
from ftpeft.core.class_weights import weighted_cross_entropy
from ftpeft.core.freezing import LayerMap
from ftpeft.core.param_groups import build_param_groups
from ftpeft.core.settings import derived_settings, resolve_settings
from ftpeft.core.windows import DOCUMENT_COLUMN, pool_windows

logger = logging.getLogger(__name__)

# prefixes that DDP/FSDP/activation-checkpoint wrappers put in front of parameter names
_WRAPPER_PREFIXES = ("module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if prefix in name:
                name = name.replace(prefix, "")
                changed = True
    return name


@contextlib.contextmanager
def _keep_last_batch(args):
    """--dataloader_drop_last is for training batches (a BatchNorm batch of one): evaluation and prediction score
    every example, or a validation set smaller than one batch would be scored on nothing."""
    drop_last = args.dataloader_drop_last
    args.dataloader_drop_last = False
    try:
        yield
    finally:
        args.dataloader_drop_last = drop_last


class FtpeftTrainer(Trainer):
    """Trainer whose optimizer uses ``build_param_groups`` (head LR, layer decay, no decay on biases/norms).

    ``keep_all_columns`` is for batches whose inputs ``forward()`` does not name (timm's ``forward(x)``,
    cached activations). ``class_weights`` (one weight per class id) makes the loss a class-weighted
    cross-entropy on the logits of any model (peft-wrapped, knowledge injection, cached prefix): the
    batch's weighted mean, which Trainer averages over gradient accumulation steps. The settings a
    classification run needs (``average_tokens_across_devices`` off: that option rescales the loss by the
    number of ranks, which is wrong for per-example losses) come from ``ftpeft.core.settings``; a recipe
    resolves them before building the Trainer, and used directly this class applies (and logs) whichever
    are still missing.

    Every checkpoint is sealed once all ranks have written it, and older ones are rotated away only after that
    (``ftpeft.core.checkpoints``); ``checkpoint_writers`` (each called with the checkpoint's folder, on the saving
    rank) add ftpeft's own files to a checkpoint before its seal.
    """

    def __init__(
        self,
        *args,
        head_lr: float | None = None,
        layer_decay: float = 1.0,
        adapter_lr: float | None = None,
        param_groups: list[dict] | None = None,
        layers: LayerMap | None = None,
        keep_all_columns: bool = False,
        class_weights: Sequence[float] | None = None,
        target=None,
        pos_weight: Sequence[float] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        resolve_settings(self.args, derived_settings(self.args, keep_all_columns=keep_all_columns))
        self.head_lr = head_lr
        self.layer_decay = layer_decay
        self.adapter_lr = adapter_lr
        self.layers = layers  # the model's layer map, when the caller already has it
        # groups built beforehand, e.g. on the complete model before --cache_frozen swapped its bottom out
        self.param_groups = param_groups
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        # label sets (BCE, --pos_weight) and numbers (MSE): the loss of the problem type, on the logits of any model
        self.problem_type = None if target is None or target.is_single_label else target.problem_type
        self.pos_weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32)
        if self.class_weights is not None or self.problem_type is not None:
            self.loss_is_scaled_for_ga = False  # a per-batch mean: Trainer divides it by the accumulation steps
        self.checkpoint_writers: list[Callable[[Path], None]] = []
        self._window_documents: list[int] | None = None  # the dataset being scored is windows of these texts

    @contextlib.contextmanager
    def _scoring(self, dataset):
        """While ``dataset`` is evaluated or predicted: the texts its windows came from, when it is windows."""
        columns = getattr(dataset, "column_names", None) or []
        self._window_documents = list(dataset[DOCUMENT_COLUMN]) if DOCUMENT_COLUMN in columns else None
        try:
            yield
        finally:
            self._window_documents = None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        with self._scoring(eval_dataset if eval_dataset is not None else self.eval_dataset):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test"):
        with self._scoring(test_dataset):
            return super().predict(test_dataset, ignore_keys, metric_key_prefix)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """Trainer's loop; on windows of texts (``DOCUMENT_COLUMN``), the predictions, labels and metrics are the
        texts', each the mean of its windows' logits (the loss stays the windows' mean)."""
        documents, compute_metrics = self._window_documents, self.compute_metrics
        if documents is None:
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        self.compute_metrics = None  # scored below, on the texts
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        finally:
            self.compute_metrics = compute_metrics
        if output.predictions is None:
            return output
        predictions, labels = pool_windows(output.predictions, output.label_ids, documents)
        metrics = dict(output.metrics)
        if compute_metrics is not None and labels is not None:
            scored = denumpify_detensorize(compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels)))
            prefix = f"{metric_key_prefix}_"
            metrics.update({key if key.startswith(prefix) else prefix + key: value for key, value in scored.items()})
        return EvalLoopOutput(predictions=predictions, label_ids=labels, metrics=metrics, num_samples=len(predictions))

    def _save_checkpoint(self, model, trial):
        save_sealed(self, trial, functools.partial(super()._save_checkpoint, model, trial), self.checkpoint_writers)

    def get_eval_dataloader(self, eval_dataset=None):
        with _keep_last_batch(self.args):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with _keep_last_batch(self.args):
            return super().get_test_dataloader(test_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (self.class_weights is None and self.problem_type is None) or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = self.classification_loss(logits, labels)
        return (loss, outputs) if return_outputs else loss

    def classification_loss(self, logits, labels):
        """Cross-entropy (class-weighted with ``class_weights``); BCE with logits for label sets (``pos_weight``);
        MSE for numbers."""
        if self.problem_type == "multi_label_classification":
            pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device, logits.dtype)
            return nn.functional.binary_cross_entropy_with_logits(
                logits, labels.to(logits.dtype).view_as(logits), pos_weight=pos_weight
            )
        if self.problem_type == "regression":
            return nn.functional.mse_loss(logits, labels.to(logits.dtype).view_as(logits))
        if self.class_weights is None:
            return nn.functional.cross_entropy(logits, labels)
        return weighted_cross_entropy(logits, labels, self.class_weights)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        if self.param_groups is not None:  # the same Parameter objects the wrapped model trains
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(self.param_groups, **optimizer_kwargs)
            return self.optimizer
        # groups are computed on the unwrapped model; wrapped parameter names are matched back by name
        groups = build_param_groups(
            self.model,
            self.args.learning_rate,
            head_lr=self.head_lr,
            layer_decay=self.layer_decay,
            weight_decay=self.args.weight_decay,
            adapter_lr=self.adapter_lr,
            layers=self.layers,
        )
        if opt_model is not self.model:
            by_name = {_strip_wrappers(n): p for n, p in opt_model.named_parameters()}
            for group in groups:
                group["params"] = [by_name[_strip_wrappers(n)] for n in group["param_names"]]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


class EpochTimer(TrainerCallback):
    """Wall time of every training epoch (the first one may include one-off work such as caching)."""

    def __init__(self):
        self.epoch_seconds: list[float] = []
        self._start = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.epoch_seconds.append(time.perf_counter() - self._start)


def run_metrics(train_result, epoch_timer: EpochTimer | None = None) -> dict:
    """Trainer's train metrics under train_* names, plus per-epoch wall times and peak memory."""
    metrics = {k if k.startswith("train_") else f"train_{k}": v for k, v in train_result.metrics.items()}
    if epoch_timer is not None:
        metrics["train_epoch_seconds"] = [round(t, 3) for t in epoch_timer.epoch_seconds]
    metrics["train_peak_rss_mb"] = round(peak_rss_mb(), 1)
    return metrics


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
