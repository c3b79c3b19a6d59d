"""The docs' generated parts: flag tables from the argument dataclasses, the recipes' defaults, and the reference
table of measured figures, so that none of them is typed twice or goes stale.

    python scripts/gen_docs.py           # rewrite every generated block and benchmarks/results/reference.md
    python scripts/gen_docs.py --check   # exit 1 naming what differs (tests/test_docs.py checks the same)

A generated block in README.md, docs/**/*.md or benchmarks/README.md sits between two markers; everything between
them is replaced by what its NAME renders:

    <!-- generated:flags:TuningArguments:lora_r,lora_alpha -->  ...  <!-- /generated:flags:TuningArguments:lora_r,lora_alpha -->

- ``flags:CLASS[:field,field,...|:own]``: one row per field of an argument dataclass (flag, default, allowed values,
  help text): every field, the ones named, or those the class declares itself (not inherited);
- ``defaults:RECIPE``: the recipe's own defaults (its DEFAULTS dict) next to the library's (the dataclass field's
  or TrainingArguments');
- ``reference`` / ``reference:headline``: the rows of ``benchmarks/results/reference.md`` (all, or the headline
  ones).

``benchmarks/results/reference.md`` is built from ``benchmarks/results/*.json``: one current figure per setup
(recipe, data, size, epochs, seeds), with its date, machine and command. A results file in the shared schema
(``RESULTS_SCHEMA`` below) is read as it is; the files written before that schema are read through ``LEGACY``,
which says where each figure comes from. Figures that an older measurement quoted for the same setup are listed
under ``SUPERSEDED`` with the row that replaces them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = RESULTS / "reference.md"
BLOCK = re.compile(r"(<!-- generated:(?P<name>[^ ]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.DOTALL)

# The shared schema of a results file (new benchmarks write it; see benchmarks/README.md). One file holds one or more
# results; "headline" names the figure the reference table shows (default: the first of "figures").
RESULTS_SCHEMA = {
    "results": [
        {
            "setting": {
                "recipe": "str",
                "tuning": "str",
                "data": "str",
                "size": "str",
                "epochs": "str",
                "seeds": "str",
            },
            "date": "YYYY-MM-DD",
            "machine": "str: CPU/GPU, cores, torch version and threads",
            "load": "str or number: the load average, or 'idle' / 'shared with other jobs'",
            "command": "str: the command that reproduces it",
            "figures": {"name": "number or [mean, sd]"},
            "headline": "optional: the figure the reference table shows",
            "in_readme": "optional, default true: false keeps the result out of the README's headline rows",
            "note": "optional: one line a reader needs",
        }
    ]
}
REFERENCE_MACHINE = "x86_64, 2 CPU cores, no GPU, torch 2.14.1"  # the machine of every legacy results file


# --- flag and default tables --------------------------------------------------------------------------------------


def argument_classes() -> dict[str, type]:
    """Every argument dataclass a recipe or ``ftpeft`` command parses, by class name."""
    from ftpeft.core.config import RunArguments, SplitArguments
    from ftpeft.features.args import FeatureArguments, HeadArguments
    from ftpeft.knowledge.args import KnowledgeArguments
    from ftpeft.ladder.args import LadderArguments
    from ftpeft.predict.args import PredictArguments
    from ftpeft.search.args import SearchArguments
    from ftpeft.text.args import ModelArguments, TextDataArguments
    from ftpeft.tuning.args import TuningArguments
    from ftpeft.vision.args import ImageDataArguments, ImageModelArguments

    classes = (
        ModelArguments, TextDataArguments, SplitArguments, TuningArguments, SearchArguments, RunArguments,
        KnowledgeArguments, ImageModelArguments, ImageDataArguments, FeatureArguments, HeadArguments,
        LadderArguments, PredictArguments,
    )  # fmt: skip
    return {c.__name__: c for c in classes}


def shown(value: Any) -> str:
    """A default as a user types it on the command line."""
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(shown(v) for v in value) or "—"
    if isinstance(value, float):
        if value and abs(value) < 0.01:  # learning rates as people write them: 2e-3, not 0.002
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    if hasattr(value, "value"):  # an Enum of TrainingArguments
        return str(value.value)
    return str(value)


def cell(text: str) -> str:
    return f"`{text}`" if text not in ("—", "required") else text


def escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("%%", "%")  # argparse's %% is a percent sign


def field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def flags_table(class_name: str, names: list[str] | None = None) -> str:
    """One row per field of an argument dataclass: the flag, its default, what it accepts and its help text."""
    from ftpeft.core.validation import rule_text

    cls = argument_classes()[class_name]
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if names == ["own"]:  # the class's own fields, not those it inherits (SplitArguments has its own table)
        inherited = {
            f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)
        }
        fields = [f for f in fields if f.name not in inherited]
    elif names:
        by_name = {f.name: f for f in fields}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise KeyError(f"flags:{class_name}: no field(s) {unknown}")
        fields = [by_name[n] for n in names]
    rows = ["| flag | default | allowed | what it does |", "|---|---|---|---|"]
    for field in fields:
        allowed = rule_text(field.metadata) or ""
        rows.append(
            f"| `--{field.name}` | {cell(shown(field_default(field)))} | {escape(allowed)} "
            f"| {escape(field.metadata.get('help', ''))} |"
        )
    return "\n".join(rows)


def load_recipe(name: str):
    """recipes/NAME.py as a module (the generator may import recipes; ftpeft never does)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPE_DEFAULTS = {  # recipe -> (the name of its defaults dict, the argument classes it parses besides Trainer's)
    "bert_cls": ("DEFAULTS", ("ModelArguments", "TextDataArguments", "TuningArguments", "RunArguments")),
    "knowledge_cls": ("DEFAULTS", ("ModelArguments", "TextDataArguments", "TuningArguments", "RunArguments")),
    "image_cls": ("DEFAULTS", ("ImageModelArguments", "ImageDataArguments", "TuningArguments", "RunArguments")),
}


TRAINER_DEFAULT = "transformers' default"  # not its value: that moves with the installed transformers release


def library_defaults(class_names: tuple[str, ...]) -> dict[str, Any]:
    """Field name -> default, over the named argument classes (TrainingArguments' fields: TRAINER_DEFAULT)."""
    from transformers import TrainingArguments

    classes = argument_classes()
    defaults = {f.name: TRAINER_DEFAULT for f in dataclasses.fields(TrainingArguments) if f.init}
    for name in class_names:
        defaults.update({f.name: field_default(f) for f in dataclasses.fields(classes[name]) if f.init})
    return defaults


def defaults_table(recipe: str) -> str:
    """The recipe's own defaults next to the library's: what a bare command runs with, and what it replaces."""
    attribute, class_names = RECIPE_DEFAULTS[recipe]
    recipe_defaults = getattr(load_recipe(recipe), attribute)
    library = library_defaults(class_names)
    rows = [f"| setting | `{recipe}.py` default | library default |", "|---|---|---|"]
    for name, value in recipe_defaults.items():
        default = library.get(name, dataclasses.MISSING)
        rows.append(
            f"| `--{name}` | {cell(shown(value))} | {default if default == TRAINER_DEFAULT else cell(shown(default))} |"
        )
    return "\n".join(rows)


# --- the reference table of measured figures ----------------------------------------------------------------------


@dataclasses.dataclass
class Figure:
    """One current figure for one setup, and where it comes from."""

    setup: str
    recipe: str
    data: str
    size: str
    epochs: str
    seeds: str
    figure: str
    date: str
    machine: str
    command: str
    source: str
    headline: bool = False


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def pair(values: list[float]) -> str:
    return f"{values[0]:.3f} ± {values[1]:.3f}"


def read(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def runs_of(name: str, config: str, seeds=(42, 43, 44)) -> list[dict]:
    return [r for r in read(name)["runs"] if r["config"] == config and r["seed"] in seeds]


def as_run_then(command: str) -> str:
    """A recipe command measured before --num_train_epochs auto (2026-12-06), with the one epoch it ran then."""
    if command.startswith(("python recipes/", "accelerate launch recipes/")) and "--num_train_epochs" not in command:
        return f"{command} --num_train_epochs 1"
    return command


TEXT_LRS = "--unfreeze_last {k}, lr 1e-3, head_lr 3e-3, layer_decay 0.65"  # partial_tuning's name of the defaults
SWEEP_SIZE = "2,000 demo tweets (1,600 train, 400 val), 1,000 test"


def partial_tuning_row(file: str, config: str, setup: str, recipe: str, size: str, epochs: str, date: str) -> Figure:
    runs = runs_of(file, config)
    return Figure(
        setup=setup, recipe=recipe, data="demo" if recipe != "image_cls" else "MNIST digits", size=size,
        epochs=epochs, seeds="42-44", date=date, machine=REFERENCE_MACHINE,
        figure=f"test acc {mean_sd([r['test_accuracy'] for r in runs])} (val {mean_sd([r['val_accuracy'] for r in runs])})",
        command=as_run_then(re.sub(r" --seed \d+$", " --seed 42", runs[0]["command"])), source=file,
    )  # fmt: skip


def legacy_partial_tuning() -> list[Figure]:
    return [
        partial_tuning_row("partial_tuning.json", TEXT_LRS.format(k=2), "top 2 layers, LR defaults", "bert_cls",
                           SWEEP_SIZE, "1", "2026-11-29"),
        partial_tuning_row("partial_tuning.json", TEXT_LRS.format(k="all"), "full fine-tuning, LR defaults",
                           "bert_cls", SWEEP_SIZE, "1", "2026-11-29"),
        partial_tuning_row("partial_tuning_knowledge.json", TEXT_LRS.format(k=2), "--inject add, top 2 layers",
                           "knowledge_cls", SWEEP_SIZE, "1", "2026-11-29"),
        dataclasses.replace(
            partial_tuning_row("partial_tuning_image.json", "--unfreeze_last all, lr 3e-3, head_lr 3e-3, layer_decay 1",
                               "full fine-tuning, LR defaults", "image_cls",
                               "2,000 MNIST digits (1,600 train, 400 val), 1,000 test", "2", "2026-11-29"),
            headline=True,
        ),
    ]  # fmt: skip


def legacy_lp_ft_gradual() -> list[Figure]:
    rows = {r["case"]: r for r in read("lp_ft_gradual.json")["rows"]}
    case = "--unfreeze-last all (full FT), 1 epoch"
    row = rows[case]
    return [
        Figure(
            setup="full fine-tuning, LR defaults, batch 8", recipe="bert_cls", data="demo",
            size="2,000 demo tweets (1,800 train, 200 val), 1,000 test", epochs="1", seeds="42-44",
            figure=f"test acc {pair(row['test_mean_sd'])} (val {pair(row['val_mean_sd'])})", date="2026-11-29",
            machine=REFERENCE_MACHINE, source="lp_ft_gradual.json",
            command="python benchmarks/lp_ft_gradual.py", headline=True,
        )
    ]  # fmt: skip


def legacy_lora() -> list[Figure]:
    final = {r["case"]: r for r in read("lora_defaults.json")["final"]}
    row = final["bare --use_peft (the text recipe's LRs for head and pooler)"]
    return [
        Figure(
            setup="LoRA r 8, query/value, LR defaults (pooler 1e-3, head 3e-3, adapters 2e-3)", recipe="bert_cls",
            data="demo", size="2,000 demo tweets (1,800 train, 200 val), 1,000 test", epochs="1", seeds="42-44",
            figure=f"test acc {pair(row['test_mean_sd'])} (val {pair(row['val_mean_sd'])})", date="2026-11-29",
            machine=REFERENCE_MACHINE, source="lora_defaults.json", command=as_run_then(row["command"]), headline=True,
        )
    ]  # fmt: skip


def legacy_readout() -> list[Figure]:
    runs = [r for r in read("readout.json")["runs"] if r["case"].startswith("head only, mean pooling")]
    return [
        Figure(
            setup="head only, mean-pooling readout", recipe="bert_cls", data="demo",
            size="2,000 demo tweets (1,800 train, 200 val), 1,000 test", epochs="1", seeds="42-44",
            figure=f"test acc {mean_sd([r['test_accuracy'] for r in runs])} "
            f"(val {mean_sd([r['val_accuracy'] for r in runs])})",
            date="2026-11-29", machine=REFERENCE_MACHINE, source="readout.json", headline=True,
            command=as_run_then(re.sub(r" --output_dir \S+ --overwrite_output_dir| --activation_cache_dir \S+", "", runs[0]["command"])),
        )
    ]  # fmt: skip


def legacy_class_weights() -> list[Figure]:
    rows = {r["case"]: r for r in read("class_weights.json")["rows"]}
    balanced, none = rows["balanced"], rows["none"]
    return [
        Figure(
            setup="top 2 layers, --class_weights balanced against none", recipe="bert_cls", data="demo",
            size="4,000 demo tweets (10% val), 1,000 test", epochs="1", seeds="42-44",
            figure=f"val macro-F1 {balanced['eval_macro_f1_mean']:.3f} against {none['eval_macro_f1_mean']:.3f}; "
            f"test macro-F1 {balanced['test_macro_f1_mean']:.3f} against {none['test_macro_f1_mean']:.3f}",
            date="2026-11-29", machine=REFERENCE_MACHINE, source="class_weights.json",
            command="python benchmarks/class_weights.py",
        )
    ]  # fmt: skip


EPOCH_SETS = {  # epochs.json's set names -> what the reference table calls the data and its size
    "tweets500": ("demo", "500 demo tweets"),
    "tweets500_val500": ("demo", "500 demo tweets, 500 validation"),
    "tweets4000": ("demo", "4,000 demo tweets"),
    "tweets16000": ("demo", "16,000 demo tweets"),
    "trec6": ("TREC-6 questions", "TREC-6"),
    "mnist": ("MNIST digits", "4,000 MNIST digits"),
    "mnist2000": ("MNIST digits", "2,000 training MNIST digits (400 val)"),
}
EPOCH_RUNGS = {("bert_cls", "head_only"): "head only", ("bert_cls", "last1"): "top layer",
               ("bert_cls", "last2"): "top 2 layers", ("bert_cls", "lora"): "LoRA",
               ("bert_cls", "full"): "full fine-tuning", ("image_cls", "head_only"): "head only",
               ("image_cls", "last1"): "last stage", ("image_cls", "last2"): "last 2 stages",
               ("image_cls", "full"): "full fine-tuning"}  # fmt: skip


def legacy_epochs() -> list[Figure]:
    results = read("epochs.json")
    figures = []
    for row in results["rows"]:
        data, size = EPOCH_SETS.get(row["set"], (row["set"], row["set"]))
        recipe = "image_cls" if data == "MNIST digits" else "bert_cls"
        figures.append(
            Figure(
                setup=f"{EPOCH_RUNGS[recipe, row['rung']]}: auto against the best of 1/2/4/8 epochs",
                recipe=recipe,
                data=data,
                size=size,
                epochs=f"auto (stopped at {row['auto_stopped_epoch']:.1f})",
                seeds=str(row["seed"]),
                figure=f"test acc {row['auto_test']:.3f} against {row['chosen_test']:.3f} at the chosen "
                f"{row['chosen_epochs']} ({row['test_gap_points']:+.1f} points, {row['steps_ratio']:.2f}x the steps)",
                date=row["date"],  # the auto run's (epochs.py dates the runs recorded before runs kept a date)
                machine=results["machine"],
                source="epochs.json",
                # the command that reruns this row (the results' own command is the last render's)
                command=f"python benchmarks/epochs.py --sets {row['set']} --rungs {row['rung']} --seeds {row['seed']} "
                "--only 1 2 4 8 auto",
            )
        )
    return figures


def flag_value(flags: list[str], flag: str, default: str) -> str:
    """The value after ``flag`` in a recorded command's ``flags``; ``default`` when it was not given."""
    return flags[flags.index(flag) + 1] if flag in flags else default


def legacy_ladder() -> list[Figure]:
    auto = read("ladder_text_auto.json")
    rungs = {r["name"]: r for r in auto["rungs"]}
    chosen = rungs[auto["recommended"]]
    figures = [
        Figure(
            setup=f"the ladder, every rung to its stopping point; recommended {auto['recommended']}",
            recipe="ladder", data="demo", size="2,000 demo tweets (1,800 train, 200 val), 1,000 test", epochs="auto",
            seeds="42", figure=f"recommended: val {chosen['val_accuracy']:.3f}, test {chosen['test_accuracy']:.3f}; "
            f"{auto['wall_seconds']:,.0f} s wall", date="2026-12-07", machine=REFERENCE_MACHINE + ", nothing else running (load 0.6 to 1.0)",
            source="ladder_text_auto.json", headline=True,
            command="OMP_NUM_THREADS=1 python recipes/ladder.py --demo_train_samples 2000 "
            "--per_device_train_batch_size 16 --time_budget 60m",
        )
    ]  # fmt: skip
    for setting in read("ladder.json"):
        figures.append(
            Figure(
                setup=f"the ladder's cost against one full fine-tuning run ({setting['setting']})", recipe="ladder",
                data="demo" if setting["setting"].startswith("text") else "MNIST digits",
                size=" ".join(setting["flags"]), epochs=flag_value(setting["flags"], "--num_train_epochs", "auto"),
                seeds=f"42 ({len(setting.get('pair_walls_s', [])) or 2} pairs)",
                figure=f"{setting['ladder_vs_full_wall']:.2f}x the wall time; recommended "
                f"{setting['recommended']} at {setting['recommended_vs_full_train']:.2f}x full FT's train time",
                date=setting.get("date", "2026-11-29"), machine=f"{REFERENCE_MACHINE}, load {setting.get('load_average_after', 'idle')} after",
                source="ladder.json", command=setting.get("command", "python benchmarks/ladder.py"),
            )
        )  # fmt: skip
    return figures


def legacy_speed() -> list[Figure]:
    overhead = [r["ratio"] for r in read("overhead.json")["rows"]]
    bench = read("benchmark.json")
    rows = {r["case"]: r for r in bench["rows"]}
    base = rows["plain Trainer, full FT (baseline)"]["train_samples_per_second"]
    k2 = rows["ftpeft --unfreeze-last 2"]["train_samples_per_second"]
    cache = read("image_cache.json")["summary"]
    return [
        Figure(
            setup="ftpeft's overhead: full fine-tuning against a plain Trainer, same batches", recipe="bert_cls",
            data="demo", size="2,000 demo tweets", epochs="100 steps x 4 pairs", seeds="42",
            figure=f"median {statistics.median(overhead):.3f}x the plain Trainer's speed", date="2026-11-29",
            machine=REFERENCE_MACHINE + ", idle", source="overhead.json", command="python benchmarks/overhead.py",
        ),
        Figure(
            setup="top 2 layers: training speed against a plain full fine-tuning Trainer", recipe="bert_cls",
            data="demo", size="2,000 demo tweets (10% val)", epochs="1", seeds="42",
            figure=f"{k2 / base:.2f}x the samples/s", date="2026-11-29", machine=bench["machine"] + ", idle",
            source="benchmark.json", command=bench["command"],
        ),
        Figure(
            setup="--cache_frozen, last 2 stages: epoch 2 against uncached", recipe="image_cls",
            data="MNIST digits", size="3,600 train digits, 64 px", epochs="2", seeds="42 (2 pairs)",
            figure=f"{cache['epoch2_ratio_mean']:.2f}x the samples/s; test acc {cache['test_accuracy_mean']['cached']:.3f} "
            f"against {cache['test_accuracy_mean']['uncached']:.3f}",
            date="2026-11-29", machine=REFERENCE_MACHINE + ", 1 thread per run", source="image_cache.json",
            command="python benchmarks/image_cache.py --threads 1",
        ),
    ]  # fmt: skip


def legacy_engines() -> list[Figure]:
    rows = read("engines.json")["rows"]
    ddp = next(r for r in rows if r["engine"].startswith("DDP"))
    return [
        Figure(
            setup="top 2 layers on 2 CPU ranks (DDP; FSDP2 and ZeRO-2/3 give the same)", recipe="bert_cls",
            data="demo", size="2,000 demo tweets (10% val), 1,000 test", epochs="1", seeds="42",
            figure=f"test acc {ddp['test_accuracy']:.3f}; {ddp['train_samples_per_second']:.1f} samples/s",
            date="2026-11-29", machine=REFERENCE_MACHINE + ", idle", source="engines.json", command=ddp["command"],
        )
    ]  # fmt: skip


def legacy_seq_length() -> list[Figure]:
    rows = read("seq_length.json")
    demo = rows[0]
    figures = [
        Figure(
            setup="--max_seq_length auto", recipe="bert_cls", data="demo", size=demo["set"], epochs="—",
            seeds="—", figure=f"{demo['auto']} tokens ({demo['cut_at_auto']:.1%} of texts cut)", date="2026-12-06",
            machine=REFERENCE_MACHINE, source="seq_length.json", command="python benchmarks/seq_length.py",
        )
    ]  # fmt: skip
    for row in (r for r in rows if r.get("long_texts") == "windows"):  # the defaults on texts longer than the model
        figures.append(
            Figure(
                setup="--max_seq_length auto --long_texts auto", recipe="bert_cls", data=row["set"],
                size=f"{row['set']}: {row['rows']:,} training texts", epochs="—", seeds="—",
                figure=f"windows of {row['auto']} tokens: {row['cut_at_default']:.1%} of texts cut "
                f"({row['cut_at_auto']:.1%} at {row['auto']} truncated), {row['windows_per_text']:.2f} windows per text",
                date="2026-12-06", machine=REFERENCE_MACHINE, source="seq_length.json",
                command="python benchmarks/seq_length.py",
            )
        )  # fmt: skip
    return figures


# where each figure of a results file written before the shared schema comes from (file -> reader)
LEGACY: dict[str, Callable[[], list[Figure]]] = {
    "partial_tuning.json": legacy_partial_tuning,
    "partial_tuning_knowledge.json": list,  # read with partial_tuning.json
    "partial_tuning_image.json": list,  # read with partial_tuning.json
    "lp_ft_gradual.json": legacy_lp_ft_gradual,
    "lora_defaults.json": legacy_lora,
    "readout.json": legacy_readout,
    "class_weights.json": legacy_class_weights,
    "epochs.json": legacy_epochs,
    "ladder_text_auto.json": legacy_ladder,
    "ladder.json": list,  # read with ladder_text_auto.json
    "overhead.json": legacy_speed,
    "benchmark.json": list,  # read with overhead.json
    "image_cache.json": list,  # read with overhead.json
    "engines.json": legacy_engines,
    "seq_length.json": legacy_seq_length,
    "scaling_note.json": list,  # a calculation from stated bandwidths, not a measurement
}

# the headline rows (README), in this order: the demo, then one setup at three depths of tuning, images, the ladder
HEADLINE_ORDER = [
    "demo_bare.json", "readout.json", "lora_defaults.json", "lp_ft_gradual.json", "partial_tuning_image.json",
    "ladder_text_auto.json",
]  # fmt: skip

# Older quotes of a setup that a row of the reference table replaces: (what was quoted, where, why it is not current)
SUPERSEDED = [
    ("bare demo command: test acc 0.904, macro-F1 0.880", "README, 2026-11-27",
     "before the demo's deduplication (25 test tweets had been seen in training); 1 epoch"),
    ("bare demo command: test acc 0.884, macro-F1 0.858", "README, 2026-11-29",
     "deduplicated demo at the old LRs (3e-4, head 1e-3, decay 0.8); 1 epoch"),
    ("bare demo command: test acc 0.883, macro-F1 0.855", "README, 2026-11-29",
     "the LR defaults, but 1 epoch: --num_train_epochs auto replaced it"),
    ("full fine-tuning, 2,000 tweets, 1 epoch: test acc 0.886 ± 0.007", "lora_defaults.json",
     "the old LRs (pooler 3e-4, decay 0.8, head 1e-3); see lp_ft_gradual.json's row at the LR defaults"),
    ("full fine-tuning, 2,000 tweets: test acc 0.877, and 0.872", "benchmark.json; ladder_text_auto.json",
     "one seed each, from a speed suite (1 epoch, batch 8) and a ladder rung (auto): not the 3-seed figure"),
    ("LoRA, 2,000 tweets, 1 epoch: test acc 0.880 ± 0.005, head LR 1e-3", "lora_defaults.json",
     "the sweep's config at the old pooler LR 3e-4; the LR defaults (head 3e-3) gave 0.885 ± 0.008"),
]  # fmt: skip


def schema_figures(path: Path) -> list[Figure]:
    """The results of a file in the shared schema."""
    figures = []
    for result in json.loads(path.read_text())["results"]:
        setting, values = result["setting"], result["figures"]
        name = result.get("headline") or next(iter(values))
        value = values[name]
        text = pair(value) if isinstance(value, list) else f"{value:.3f}" if isinstance(value, float) else str(value)
        figures.append(
            Figure(
                setup=setting["tuning"], recipe=setting["recipe"], data=setting["data"], size=setting["size"],
                epochs=str(setting["epochs"]), seeds=str(setting["seeds"]),
                figure=f"{name.replace('_', ' ')} {text}" + (f" ({result['note']})" if result.get("note") else ""),
                date=result["date"], machine=f"{result['machine']}, load {result['load']}", command=result["command"],
                source=path.name, headline=result.get("in_readme", True),
            )
        )  # fmt: skip
    return figures


def is_schema(path: Path) -> bool:
    data = json.loads(path.read_text())
    return isinstance(data, dict) and isinstance(data.get("results"), list)


def reference_figures() -> list[Figure]:
    """Every current figure, in the order of the results files."""
    figures = []
    for path in sorted(RESULTS.glob("*.json")):
        if is_schema(path):
            figures += schema_figures(path)
        elif path.name in LEGACY:
            figures += LEGACY[path.name]()
        else:
            raise KeyError(f"{path.name}: neither the shared schema nor in LEGACY (scripts/gen_docs.py)")
    recipes = ["bert_cls", "knowledge_cls", "image_cls", "ladder"]
    return sorted(figures, key=lambda f: (not f.headline, HEADLINE_ORDER.index(f.source) if f.source in HEADLINE_ORDER else len(HEADLINE_ORDER),
                                          recipes.index(f.recipe) if f.recipe in recipes else len(recipes)))  # fmt: skip


def reference_table(figures: list[Figure], columns: str = "full") -> str:
    if columns == "headline":
        rows = ["| setting | figure | date | hardware |", "|---|---|---|---|"]
        for f in figures:
            setting = f"`{f.recipe}` {f.setup}; {f.size}; epochs {f.epochs}; seeds {f.seeds}"
            rows.append(f"| {escape(setting)} | {escape(f.figure)} | {f.date} | {escape(f.machine)} |")
        return "\n".join(rows)
    rows = [
        "| recipe | setup | data, size | epochs | seeds | figure | date | machine | command | source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        rows.append(
            f"| `{f.recipe}` | {escape(f.setup)} | {escape(f.size)} | {escape(f.epochs)} | {f.seeds} "
            f"| {escape(f.figure)} | {f.date} | {escape(f.machine)} | `{escape(f.command)}` | {f.source} |"
        )
    return "\n".join(rows)


def reference_markdown() -> str:
    """benchmarks/results/reference.md: the figures to believe, one per setup, and what they replace."""
    superseded = ["| quoted | where | why it is not current |", "|---|---|---|"]
    superseded += [f"| {escape(q)} | {escape(w)} | {escape(y)} |" for q, w, y in SUPERSEDED]
    return "\n".join(
        [
            "# Reference figures: the current one per setup",
            "",
            "Generated by `python scripts/gen_docs.py` from `benchmarks/results/*.json`; do not edit by hand",
            "(`tests/test_docs.py` fails when this file differs from what the generator writes). Test accuracy is",
            "reported, never used to choose; mean ± sd over the seeds listed. A figure from another setup (size,",
            "epochs, seeds) is a different row, not a contradiction. The commands of runs measured before",
            "`--num_train_epochs auto` became the default (2026-12-06) carry the `--num_train_epochs 1` they ran with.",
            "",
            reference_table(reference_figures()),
            "",
            "## Older quotes of these setups, and why they are not current",
            "",
            "\n".join(superseded),
            "",
        ]
    )


# --- the blocks ---------------------------------------------------------------------------------------------------


def render(name: str) -> str:
    """What the block NAME holds (see the module docstring)."""
    kind, _, rest = name.partition(":")
    if kind == "flags":
        class_name, _, names = rest.partition(":")
        return flags_table(class_name, names.split(",") if names else None)
    if kind == "defaults":
        return defaults_table(rest)
    if kind == "reference":
        figures = reference_figures()
        if rest == "headline":
            return reference_table([f for f in figures if f.headline], columns="headline")
        return reference_table(figures)
    raise KeyError(f"unknown generated block {name!r}")


def regenerate(text: str) -> str:
    """``text`` with every generated block's body replaced by what its name renders now."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{render(m.group('name'))}\n{m.group(4)}", text)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md")), ROOT / "benchmarks" / "README.md"]


def stale() -> list[str]:
    """The files whose generated parts differ from what the generator writes now."""
    found = [
        str(p.relative_to(ROOT)) for p in documents() if p.is_file() and regenerate(p.read_text()) != p.read_text()
    ]
    if not REFERENCE.is_file() or REFERENCE.read_text() != reference_markdown():
        found.append(str(REFERENCE.relative_to(ROOT)))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Change nothing; exit 1 naming the stale files.")
    args = parser.parse_args(argv)
    if args.check:
        found = stale()
        for path in found:
            print(f"{path}: generated parts are stale; run python scripts/gen_docs.py")
        return 1 if found else 0
    REFERENCE.write_text(reference_markdown())
    for path in documents():
        if path.is_file() and (new := regenerate(path.read_text())) != path.read_text():
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
