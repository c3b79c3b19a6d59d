"""Model cards (README.md in the output dir and on the Hub) for every recipe."""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import Any

import yaml

from ftpeft.core.environment import environment, environment_line
from ftpeft.core.errors import redact
from ftpeft.core.outputs import atomic_write_text


@dataclasses.dataclass
class RunSummary:
    """Everything a card says about a run; recipes fill it, ``render_model_card`` turns it into markdown."""

    recipe: str
    base_model: str
    library_name: str  # transformers | peft | timm | sklearn
    pipeline_tag: str  # text-classification | image-classification
    command: str
    config: dict[str, Any]
    tuning: str  # human-readable freezing / LoRA spec
    trainable_params: int
    total_params: int
    dataset: str
    split_sizes: dict[str, int]
    label_names: list[str]
    metrics: dict[str, float]
    loading_snippet: str
    train_runtime_s: float | None = None
    hub_dataset: str | None = None  # a Hub dataset id, for the metadata header
    hardware: str = dataclasses.field(default_factory=lambda: hardware_description())
    environment: dict[str, Any] = dataclasses.field(default_factory=environment)  # versions (resolved_settings.json)
    tags: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    learning_curve: bool = False  # learning_curve.png sits next to the card
    data_quality: str = ""  # markdown table of the data report's counts (data_report.json)
    per_output_results: str = ""  # label sets and numbers: the per-label or per-target table (classification_report.md)


def hardware_description() -> str:
    """GPU name(s) or CPU, plus the accelerate distributed setup of this run."""
    import torch

    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        device = f"{torch.cuda.device_count()} x {', '.join(names)}"
    else:
        device = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    try:
        from accelerate import PartialState

        state = PartialState()
        distributed = f"{state.distributed_type.value}, {state.num_processes} process(es)"
    except Exception:  # accelerate not initialised (e.g. a plain sklearn run)  # noqa: BLE001
        distributed = "single process"
    config_file = os.environ.get("ACCELERATE_CONFIG_FILE")
    return f"{device}; accelerate: {distributed}" + (f" (config {config_file})" if config_file else "")


# the test metrics the Hub shows from the card's model-index (huggingface_hub's EvalResult), by what the run reports
INDEXED_METRICS = ("accuracy", "macro_f1", "map", "micro_f1", "rmse", "mae", "spearman", "pearson", "r2")


def eval_results(summary: RunSummary) -> list:
    """The card's model-index: one EvalResult per test metric (validation where the run had no test split), with
    the task and the dataset, as huggingface_hub's card classes write and the Hub reads them."""
    from huggingface_hub import EvalResult

    split = "test" if any(k.startswith("test_") for k in summary.metrics) else "eval"
    task = summary.pipeline_tag
    return [
        EvalResult(
            task_type=task,
            dataset_type=summary.hub_dataset or "custom",
            dataset_name=summary.dataset,
            dataset_split="test" if split == "test" else "validation",
            metric_type=name,
            metric_value=float(summary.metrics[f"{split}_{name}"]),
        )
        for name in INDEXED_METRICS
        if isinstance(summary.metrics.get(f"{split}_{name}"), (int, float))
    ]


def card_metadata(summary: RunSummary) -> dict[str, Any]:
    from huggingface_hub import ModelCardData

    results = eval_results(summary)
    data = ModelCardData(
        model_name=Path(summary.config.get("output_dir", "model")).name if results else None,
        eval_results=results or None,
        base_model=summary.base_model if "/" in summary.base_model and not Path(summary.base_model).exists() else None,
        library_name=summary.library_name,
        pipeline_tag=summary.pipeline_tag,
        tags=["ftpeft", summary.recipe, *summary.tags],
        datasets=[summary.hub_dataset] if summary.hub_dataset else None,
        metrics=sorted(
            {k.split("_", 1)[1] if k.startswith(("eval_", "test_")) else k for k in _headline(summary.metrics)}
        ),
    )
    return data.to_dict()


def _headline(metrics: dict[str, float]) -> dict[str, float]:
    return {
        k: v for k, v in metrics.items() if k.startswith(("eval_", "test_")) and k.split("_", 1)[1] in INDEXED_METRICS
    }


def render_model_card(summary: RunSummary) -> str:
    header = yaml.safe_dump(card_metadata(summary), sort_keys=False).strip()
    metric_rows = "\n".join(
        f"| {k} | {v:.4f} |" for k, v in sorted(summary.metrics.items()) if isinstance(v, (int, float))
    )
    sizes = ", ".join(f"{split}: {n:,}" for split, n in summary.split_sizes.items())
    labels = ", ".join(summary.label_names[:50]) + (" ..." if len(summary.label_names) > 50 else "")
    runtime = f"{summary.train_runtime_s:.1f} s" if summary.train_runtime_s is not None else "n/a"
    pct = 100 * summary.trainable_params / max(summary.total_params, 1)
    notes = "".join(f"- {note}\n" for note in summary.notes)
    curve = "\n![learning curve](learning_curve.png)\n" if summary.learning_curve else ""
    data_quality = (
        f"\n## Data quality (data_report.json)\n\n{summary.data_quality.strip()}\n" if summary.data_quality else ""
    )
    per_output = f"\n{summary.per_output_results.strip()}\n" if summary.per_output_results else ""
    text = f"""---
{header}
---

# {Path(summary.config.get("output_dir", "model")).name}

Fine-tuned from `{summary.base_model}` with the ftpeft recipe `{summary.recipe}`.

## Load it

```python
{summary.loading_snippet.strip()}
```

## Training

- Command: `{summary.command}`
- Tuning: {summary.tuning}
- Trainable parameters: {summary.trainable_params:,} of {summary.total_params:,} ({pct:.2f}%)
- Data: {summary.dataset} ({sizes}); labels: {labels}
- Hardware: {summary.hardware}
- Software: {environment_line(summary.environment)}
- Training time: {runtime}
{notes}{data_quality}
## Results

| metric | value |
|---|---|
{metric_rows}
{per_output}{curve}
## Resolved configuration (re-run with `--config` on this block saved as YAML)

```yaml
{yaml.safe_dump(summary.config, sort_keys=True).strip()}
```
"""
    return redact(text)


def write_model_card(output_dir: str | Path, summary: RunSummary) -> Path:
    path = Path(output_dir) / "README.md"
    atomic_write_text(path, render_model_card(summary))
    return path


def adapter_label_kwargs(label_names: list[str]) -> dict:
    """What the base model needs to build the head an adapter was trained with (peft reloads the base
    checkpoint, whose config does not know the task's labels; a base with a head of another size gets a new one,
    which the adapter's saved head then replaces)."""
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
        "ignore_mismatched_sizes": True,
    }


def text_loading_snippet(
    output_dir: str,
    adapter: bool,
    label_names: list[str] | None = None,
    remote_code: bool = False,
    problem_type: str | None = None,
) -> str:
    """How to load a text run's model with the stack's own loaders (no ftpeft); ``remote_code``: the model is one of
    ftpeft's own architectures, whose code is saved with it (``ftpeft.hub_code``). Texts are cut where the run cut
    them (truncation=True: the saved tokenizer's model_max_length is the run's length); label sets and numbers show
    every output (top_k=None)."""
    if adapter:
        kwargs = adapter_label_kwargs(label_names or [])
        return (
            "from peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer\n"
            "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
            f'    "{output_dir}",\n'
            f"    num_labels={kwargs['num_labels']},\n"
            f"    id2label={kwargs['id2label']!r},\n"
            f"    label2id={kwargs['label2id']!r},\n"
            ")\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{output_dir}")\n'
            'logits = model(**tokenizer("great film", truncation=True, return_tensors="pt")).logits'
        )
    every_output = ", top_k=None" if problem_type in ("multi_label_classification", "regression") else ""
    return (
        "from transformers import pipeline\n"
        + f'classifier = pipeline("text-classification", model="{output_dir}"'
        + (", trust_remote_code=True)  # the model's code is saved with it\n" if remote_code else ")\n")
        + f'print(classifier("great film", truncation=True{every_output}))'
    )
