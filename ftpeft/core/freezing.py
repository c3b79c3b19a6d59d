"""Where a model's embeddings, ordered layers, top (pooler / final norm) and head are -- and freezing by it.

Architecture knowledge lives here only, as data: ``ARCHITECTURES`` maps a transformers ``model_type`` to
its layout; timm models are read through timm's own ``group_matcher`` contract; anything else falls back
to the longest list of repeated blocks. ``unfreeze_last(model, k)`` is the one freezing entry point for
text and image models alike.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from ftpeft.core.errors import FtpeftError
from ftpeft.core.outputs import atomic_write_text


@dataclasses.dataclass(frozen=True)
class ArchitectureLayout:
    """Module paths relative to the base encoder (``model.base_model``)."""

    embeddings: tuple[str, ...]
    layers: str
    top: tuple[str, ...] = ()  # trained together with the top layer (pooler, final norm)
    # position ids that start after the padding index (RoBERTa-style): max_position_embeddings - this is the limit
    # of --max_seq_length; None: no absolute position embeddings (rotary), no limit
    position_offset: int | None = 0


_BERT_LIKE = ArchitectureLayout(embeddings=("embeddings",), layers="encoder.layer", top=("pooler",))
_ROBERTA_LIKE = dataclasses.replace(_BERT_LIKE, position_offset=2)

ARCHITECTURES: dict[str, ArchitectureLayout] = {
    "bert": _BERT_LIKE,
    "roberta": _ROBERTA_LIKE,
    "xlm-roberta": _ROBERTA_LIKE,
    "camembert": _ROBERTA_LIKE,
    "distilbert": ArchitectureLayout(embeddings=("embeddings",), layers="transformer.layer"),
    "electra": ArchitectureLayout(embeddings=("embeddings", "embeddings_project"), layers="encoder.layer"),
    # relative-position tables are shared by every layer, so they belong with the embeddings
    "deberta-v2": ArchitectureLayout(
        embeddings=("embeddings", "encoder.rel_embeddings", "encoder.LayerNorm", "encoder.conv"), layers="encoder.layer"
    ),
    "deberta": ArchitectureLayout(embeddings=("embeddings", "encoder.rel_embeddings"), layers="encoder.layer"),
    "mpnet": ArchitectureLayout(
        embeddings=("embeddings", "encoder.relative_attention_bias"), layers="encoder.layer", position_offset=2
    ),
    "modernbert": ArchitectureLayout(
        embeddings=("embeddings",), layers="layers", top=("final_norm",), position_offset=None
    ),
}

UNSUPPORTED: dict[str, str] = {
    "albert": "ALBERT shares one set of weights across all its layers, so 'the last k layers' do not exist; "
    "use --unfreeze_last 0 (head only), --unfreeze_last all, or --use_peft.",
}


@dataclasses.dataclass
class LayerMap:
    """Parameter names of a model, grouped bottom to top. Every parameter is in exactly one group."""

    embeddings: list[str]
    layers: list[list[str]]
    top: list[str]
    head: list[str]
    other: list[str]  # inside the backbone but in no group above; trained only with full fine-tuning
    source: str  # how the map was found: 'table:<model_type>', 'timm', 'generic:<path>'

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def depth_of(self) -> dict[str, int]:
        """Parameter name -> depth: 0 embeddings/other, 1..L layers, L+1 top and head."""
        depth = {name: 0 for name in self.embeddings + self.other}
        for index, names in enumerate(self.layers, start=1):
            depth.update({name: index for name in names})
        depth.update({name: self.num_layers + 1 for name in self.top + self.head})
        return depth


def _params_under(model: nn.Module, prefix: str) -> list[str]:
    dotted = prefix + "."
    return [name for name, _ in model.named_parameters() if name == prefix or name.startswith(dotted)]


def _module_path(model: nn.Module, target: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if module is target:
            return name
    return None


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def _underlying(model: nn.Module) -> nn.Module:
    """The transformers/timm model inside a peft wrapper (names then carry peft's prefixes)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _finish(model: nn.Module, embeddings, layers, top, head, source) -> LayerMap:
    assigned = set(embeddings) | {n for layer in layers for n in layer} | set(top) | set(head)
    other = [name for name, _ in model.named_parameters() if name not in assigned]
    return LayerMap(list(embeddings), [list(layer) for layer in layers], list(top), list(head), other, source)


def _timm_layer_map(model: nn.Module, prefix: str, inner: nn.Module) -> LayerMap:
    from timm.models import group_parameters

    groups = list(group_parameters(inner, inner.group_matcher(coarse=True)).values())
    groups = [[_join(prefix, name) for name in group] for group in groups]
    classifier = inner.get_classifier()
    classifier_path = _module_path(inner, classifier)
    head = _params_under(model, _join(prefix, classifier_path)) if classifier_path else []
    if head and set(head) <= set(groups[-1]):
        head = groups.pop()  # the last group is the head (may hold a pre-logits norm as well)
    else:
        groups = [[n for n in g if n not in head] for g in groups]
    embeddings, layers = groups[0], [g for g in groups[1:] if g]
    return _finish(model, embeddings, layers, [], head, "timm")


def _generic_block_list(base: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The longest ModuleList whose children all share one class: the repeated encoder blocks."""
    best = None
    for name, module in base.named_modules():
        repeated = isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(c) for c in module}) == 1
        if repeated and (best is None or len(module) > len(best[1])):
            best = (name, module)
    return best


def layer_map(model: nn.Module) -> LayerMap:
    """Find embeddings, ordered layers, top and head of a transformers, timm or peft-wrapped model."""
    inner = _underlying(model)
    inner_prefix = _module_path(model, inner) or ""
    if hasattr(inner, "group_matcher") and hasattr(inner, "get_classifier"):
        return _timm_layer_map(model, inner_prefix, inner)

    base = getattr(inner, "base_model", inner)
    base_prefix = _module_path(model, base) or ""
    head = [
        name
        for name, _ in model.named_parameters()
        if base_prefix and not (name.startswith(base_prefix + ".") or name == base_prefix)
    ]
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type in UNSUPPORTED:
        raise FtpeftError(f"--unfreeze_last: {UNSUPPORTED[model_type]}")
    layout = ARCHITECTURES.get(model_type)
    if layout is not None:
        layers_module = base.get_submodule(layout.layers)
        embeddings = [n for path in layout.embeddings for n in _params_under(model, _join(base_prefix, path))]
        layers = [_params_under(model, _join(base_prefix, f"{layout.layers}.{i}")) for i in range(len(layers_module))]
        top = [n for path in layout.top for n in _params_under(model, _join(base_prefix, path))]
        return _finish(model, embeddings, layers, top, head, f"table:{model_type}")

    found = _generic_block_list(base)
    if found is None:
        raise FtpeftError(
            f"--unfreeze_last: cannot find the encoder layers of model type '{model_type}' "
            f"({type(inner).__name__}); known types: {', '.join(sorted(ARCHITECTURES))}. "
            "Use --unfreeze_last all or --use_peft, or add the type to ftpeft.ARCHITECTURES."
        )
    path, blocks = found
    layers = [_params_under(model, _join(base_prefix, f"{path}.{i}")) for i in range(len(blocks))]
    embedding_paths = [n for n, m in base.named_modules() if isinstance(m, nn.Embedding)]
    embeddings = [n for p in embedding_paths for n in _params_under(model, _join(base_prefix, p))]
    return _finish(model, embeddings, layers, [], head, f"generic:{path}")


@dataclasses.dataclass
class FreezeReport:
    """What ``unfreeze_last`` left trainable, per group; printed, and saved as freeze_report.json."""

    spec: str
    source: str
    num_layers: int
    trainable_layers: list[int]  # 1-based, bottom to top
    groups: dict[str, dict[str, int]]  # group -> {"trainable": n, "total": n}
    trainable_params: int
    total_params: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / max(self.total_params, 1)

    def summary(self) -> str:
        lines = [
            (
                f"unfreeze_last={self.spec} ({self.source}, {self.num_layers} layers; trainable layers: "
                f"{self.trainable_layers or 'none'})"
            ),
            f"trainable params: {self.trainable_params:,} / {self.total_params:,} ({100 * self.trainable_fraction:.2f}%)",
        ]
        for group, counts in self.groups.items():
            lines.append(f"  {group:<12} {counts['trainable']:>12,} / {counts['total']:,}")
        return "\n".join(lines)

    def save(self, output_dir: str | Path) -> None:
        atomic_write_text(Path(output_dir, "freeze_report.json"), json.dumps(dataclasses.asdict(self), indent=2))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def freeze_report(model: nn.Module, spec: str, layers: LayerMap | None = None) -> FreezeReport:
    """Describe which parameters of ``model`` are trainable now, by group."""
    layers = layers or layer_map(model)
    params = dict(model.named_parameters())
    groups = {"embeddings": layers.embeddings, "other": layers.other, "top": layers.top, "head": layers.head}
    groups.update({f"layer_{i}": names for i, names in enumerate(layers.layers, start=1)})
    counts = {
        group: {
            "trainable": sum(params[n].numel() for n in names if params[n].requires_grad),
            "total": sum(params[n].numel() for n in names),
        }
        for group, names in groups.items()
        if names
    }
    trainable_layers = [i for i, names in enumerate(layers.layers, 1) if any(params[n].requires_grad for n in names)]
    trainable, total = count_parameters(model)
    return FreezeReport(spec, layers.source, layers.num_layers, trainable_layers, counts, trainable, total)


def trained_shares(model: nn.Module, layers: LayerMap | None = None) -> list[float]:
    """The share of ``model``'s parameters that ``--unfreeze_last k`` trains, for k = 0..num_layers (``all``
    trains 1.0). Reads sizes only: no ``requires_grad`` changes."""
    layers = layers or layer_map(model)
    sizes = {name: param.numel() for name, param in model.named_parameters()}
    total = max(sum(sizes.values()), 1)
    readout = sum(sizes[name] for name in layers.head + layers.top)
    per_layer = [sum(sizes[name] for name in names) for names in layers.layers]
    return [(readout + sum(per_layer[len(per_layer) - k :])) / total for k in range(len(per_layer) + 1)]


def unfreeze_last(
    model: nn.Module, k: int | None, train_embeddings: bool = False, layers: LayerMap | None = None
) -> FreezeReport:
    """Make only the top ``k`` layers (+ top + head) trainable; ``k=None`` trains everything.

    ``k=0`` trains the readout: the head and the top (a BERT pooler, ModernBERT's final norm). A pooler is
    the head's input: a sentence-embedding checkpoint's pooler was never trained as a readout, and frozen it
    leaves a head-only run at the majority class. Sets ``requires_grad`` on every parameter of ``model`` and
    returns what it did. ``layers`` is the model's layer map when the caller has it already.
    """
    if k is None:
        for param in model.parameters():
            param.requires_grad_(True)
        return freeze_report(model, "all", layers)
    layers = layers or layer_map(model)
    if k > layers.num_layers:
        raise FtpeftError(
            f"--unfreeze_last {k} is larger than the model's {layers.num_layers} layers; "
            f"use 0..{layers.num_layers} or 'all'."
        )
    trainable = set(layers.head) | set(layers.top)
    trainable |= {name for names in layers.layers[layers.num_layers - k :] for name in names}
    if train_embeddings:
        trainable |= set(layers.embeddings)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return freeze_report(model, str(k), layers)


def keep_frozen_norms_in_eval(model: nn.Module) -> list[str]:
    """Frozen BatchNorm layers keep their running statistics: they run in eval mode even under model.train().

    A forward pre-hook (not a module swap) so saved weights stay loadable by the stock architecture.
    Returns the names of the BatchNorm modules it pinned.
    """
    pinned = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.register_forward_pre_hook(_pin_eval)
                pinned.append(name)
    return pinned


def _pin_eval(module: nn.Module, _inputs) -> None:
    module.training = False


def keep_in_eval(modules: list[nn.Module]) -> None:
    """Run these modules in eval mode (no dropout, fixed norms) even under ``model.train()``."""
    for module in modules:
        for sub in module.modules():
            sub.register_forward_pre_hook(_pin_eval)
