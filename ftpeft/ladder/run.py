"""Running the ladder: parse, probe every layer, run the rungs cheapest first within the budget, resume, choose.

``run_ladder(argv)`` serves both ``ftpeft ladder`` and ``recipes/ladder.py``. Every rung is a real run of
the recipe's job function, in this process, on the same data and seeds, with the recipe's own flags: the
command printed for a rung reproduces it. A preempted ladder exits 75 and continues mid-rung when requeued
(``ftpeft.ladder.requeue``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import statistics
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ftpeft.core.config import RunArguments, parse_args
from ftpeft.core.errors import FtpeftError
from ftpeft.core.metrics import chosen_metric, metric_spec
from ftpeft.core.outputs import write_json
from ftpeft.core.preemption import clear_preempted, outer_flag, parse_signals, resume_argv
from ftpeft.core.settings import SETTINGS_FILE
from ftpeft.ladder.args import LADDER_FLAGS, LadderArguments
from ftpeft.ladder.probe import PROBE_C, PROBE_DIR, ProbeLayer, ProbeResult
from ftpeft.ladder.report import RungRow, choose, scenario, write_outputs
from ftpeft.ladder.requeue import PROGRESS_FILE, LadderProgress, LadderStops, rung_start_flags
from ftpeft.ladder.rungs import Rung, build_rungs, choose_ks, estimate_seconds, near_full_rungs
from ftpeft.tuning.args import EXACT_CACHE_DTYPE, TuningArguments

logger = logging.getLogger("ftpeft")
MANIFEST_FILE = "ladder_manifest.json"
RUNGS_DIR = "rungs"
IMAGE_FLAGS = ("--image_dir", "--labels_csv", "--image_column", "--pretrained_file", "--image_size")
# not the recipe's: --resume_from_checkpoint auto continues a requeued ladder (each rung seed resumes its own run)
OWN_FLAGS = (*LADDER_FLAGS, "output_dir", "overwrite_output_dir", "resume_from_checkpoint")
# The cost model's guess of a rung's length under --num_train_epochs auto, before any rung has run: its best
# evaluation within about 2 epochs, then the patience, about one epoch more (2 evaluations of a short epoch's 2, 3 of
# a longer epoch's 2 to 4). Each finished rung replaces the guess: later rungs are estimated at the median length
# that the finished ones really ran.
EPOCHS_TO_CONVERGE_GUESS = 3.0


@dataclasses.dataclass
class Modality:
    """What differs between a text and an image ladder: the recipe, its arguments, defaults and job."""

    name: str
    recipe: str
    argument_types: tuple
    defaults: dict[str, Any]


def modality_spec(name: str) -> Modality:
    from transformers import TrainingArguments

    if name == "image":
        from ftpeft.vision.args import ImageDataArguments, ImageModelArguments
        from ftpeft.vision.job import DEFAULTS

        types = (ImageModelArguments, ImageDataArguments, TuningArguments, RunArguments, TrainingArguments)
        return Modality("image", "recipes/image_cls.py", types, DEFAULTS)
    from ftpeft.text.args import ModelArguments, TextDataArguments
    from ftpeft.text.job import DEFAULTS

    types = (ModelArguments, TextDataArguments, TuningArguments, RunArguments, TrainingArguments)
    return Modality("text", "recipes/bert_cls.py", types, DEFAULTS)


def _values(argv: list[str], flag: str) -> list[str] | None:
    """The values given to ``flag`` (either spelling, with '=' or as following tokens), or None."""
    spellings = {f"--{flag}", f"--{flag.replace('_', '-')}"}
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        if name in spellings:
            if eq:
                return [value]
            rest = []
            for following in argv[i + 1 :]:
                if following.startswith("--"):
                    break
                rest.append(following)
            return rest
    return None


def infer_modality(argv: list[str]) -> str:
    """--modality if given; else image when a timm model name or an image data flag is given; else text."""
    given = _values(argv, "modality")
    if given and given[0] != "auto":
        return given[0]
    if any(_values(argv, flag[2:]) is not None for flag in IMAGE_FLAGS):
        return "image"
    models = _values(argv, "model_name_or_path")
    if models:
        import timm

        name = models[0]
        if name.startswith(("hf-hub:", "local-dir:", "timm/")) or timm.is_model(name):
            return "image"
    return "text"


def strip_flags(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the flags ``names`` and their values."""
    spellings = {f"--{n}" for n in names} | {f"--{n.replace('_', '-')}" for n in names}
    kept, skipping = [], False
    for token in argv:
        if token.startswith("--"):
            skipping = token.partition("=")[0] in spellings
            if skipping:
                continue
        elif skipping:
            continue
        kept.append(token)
    return kept


class PeakRss:
    """Peak resident memory of this process while the block runs, sampled every 0.2 s (psutil)."""

    def __enter__(self):
        import psutil

        self.process, self.peak, self.done = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.done.wait(0.2)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak_mb = max(self.peak, self.process.memory_info().rss) / 2**20


def _main_decides(value):
    """Every rank takes the main process's decision (ranks time things differently)."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def prepare_output_dir(output_dir: Path, manifest: dict, overwrite: bool, is_main: bool) -> None:
    """A ladder's own dir is resumable: the same command continues it; a different one is refused as usual. The main
    process checks and prepares it and every rank takes its verdict: a rank that looked for itself could see the dir
    half-written by the main one (not empty, or its manifest not yet written) and refuse alone."""
    refusal = None
    if is_main:
        try:
            _check_and_prepare(output_dir, manifest, overwrite)
        except FtpeftError as error:
            refusal = str(error)
    refusal = _main_decides(refusal)
    if refusal is not None:
        raise FtpeftError(refusal)


def _check_and_prepare(output_dir: Path, manifest: dict, overwrite: bool) -> None:
    existing = output_dir / MANIFEST_FILE
    if existing.is_file():
        previous = json.loads(existing.read_text())
        if previous == manifest:
            logger.info("ladder: resuming in %s (finished rungs are kept)", output_dir)
            return
        if not overwrite:
            raise FtpeftError(
                f"--output_dir {output_dir} holds a ladder run with other arguments; pass --overwrite_output_dir "
                "to start afresh there, or choose another --output_dir."
            )
    elif output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        shown = ", ".join(sorted(p.name for p in output_dir.iterdir())[:5])
        raise FtpeftError(
            f"--output_dir {output_dir} is not empty ({shown}); pass --overwrite_output_dir to write into it, "
            "or choose another --output_dir."
        )
    if overwrite:
        for name in (RUNGS_DIR, PROBE_DIR):
            shutil.rmtree(output_dir / name, ignore_errors=True)
        (output_dir / PROGRESS_FILE).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(existing, manifest)


def parse_ladder_args(argv: list[str]) -> tuple[Modality, Any]:
    """The modality a ladder command runs, and its flags parsed: the recipe's dataclasses, then LadderArguments."""
    modality = modality_spec(infer_modality(argv))
    defaults = {**modality.defaults, "output_dir": "outputs/ladder"}
    return modality, parse_args((*modality.argument_types, LadderArguments), argv, defaults)


def ladder_manifest(modality: str, argv: list[str]) -> tuple[list[str], dict]:
    """(the recipe flags every rung gets, the manifest a rerun in the same dir must match to continue): the ladder's
    own flags, its output dir and --resume_from_checkpoint are not the recipe's."""
    base_argv = strip_flags(argv, OWN_FLAGS)
    ladder_flags = [t for t in argv if t not in base_argv and t not in strip_flags(argv, LADDER_FLAGS)]
    return base_argv, {"modality": modality, "recipe_flags": base_argv, "ladder_flags": ladder_flags}


def run_ladder(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, probe, run the rungs within the budget, choose on validation, write the ladder; returns ladder.json.
    A preemption signal stops it with exit 75; the same command with --resume_from_checkpoint auto continues it."""
    import sys

    from ftpeft.core.config import command_line

    argv = list(sys.argv[1:] if argv is None else argv)
    modality, parsed = parse_ladder_args(argv)
    *recipe_args, ladder_args = parsed
    training_args, run_args = recipe_args[4], recipe_args[3]
    if training_args.resume_from_checkpoint not in (None, "auto"):
        raise FtpeftError(
            f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: a ladder takes only auto (continue "
            "from its manifest; each unfinished rung resumes from its own last checkpoint)."
        )
    output_dir = Path(training_args.output_dir)
    base_argv, manifest = ladder_manifest(modality.name, argv)
    from ftpeft.core.engine import check_engine
    from ftpeft.core.lifecycle import setup_logging

    setup_logging(training_args)
    check_engine(training_args, ["ftpeft ladder"])  # before the probe: an engine that cannot run the rungs
    is_main = training_args.process_index == 0
    prepare_output_dir(output_dir, manifest, run_args.overwrite_output_dir, is_main)
    if is_main:
        clear_preempted(output_dir)  # a requeue reads it: it belongs to the stop this run continues
    # --time_budget auto is this job's time left: a requeued job's own, so what earlier jobs spent is not carried
    carry_spent = ladder_args.time_budget.strip().lower() != "auto"
    progress = LadderProgress.load(output_dir, ladder_args.budget_seconds, carry_spent)
    with outer_flag(parse_signals(run_args.preemption_signals)) as flag:
        stops = LadderStops(flag, progress, output_dir, command_line(resume_argv(sys.argv)), is_main)
        return climb(modality, recipe_args, ladder_args, base_argv, stops)


def climb(
    modality: Modality, recipe_args, ladder_args: LadderArguments, base_argv: list[str], stops: LadderStops
) -> dict[str, Any]:
    """The ladder in a prepared output dir: the probe, the rungs within the budget, the choice; returns ladder.json."""
    training_args, run_args = recipe_args[4], recipe_args[3]
    output_dir, is_main, progress = stops.output_dir, stops.is_main, stops.progress

    # --- 1. the transfer probe: one frozen pass, a regression per layer ----------------------------------
    cache_flags, cache_dtype = rung_cache(base_argv, recipe_args[2])
    probe, data_facts, num_layers, caches = run_probe(
        modality.name, recipe_args, ladder_args, output_dir, is_main, cache_dtype
    )
    metric = resolve_metric(ladder_args.metric, data_facts)
    best_probe = probe.best(metric)
    ks = choose_ks(num_layers, best_probe.depth, probe.num_layers)
    logger.info("ladder: best probe layer %s; last-k rungs k = %s", best_probe.name, ks)
    if is_main:
        progress.save()
    stops.check("after the probe")

    # --- 2. the rungs, cheapest first, within the budget ----------------------------------------------------
    # each rung stops on validation (--num_train_epochs auto, the recipes' default) unless an epoch count is given
    epochs = EPOCHS_TO_CONVERGE_GUESS if run_args.auto_epochs else training_args.num_train_epochs
    cached_ks = cached_depths(caches, num_layers, epochs)
    cache_scores = cache_dtype == EXACT_CACHE_DTYPE
    rungs = build_rungs(ladder_args.rung_names, num_layers, ks, cached_ks, cache_flags, cache_scores)
    skipped = near_full_rungs(rungs, data_facts.get("trained_share"), ladder_args.named_rungs)
    for name, why in skipped.items():
        logger.warning("ladder: %s skipped (%s)", name, why)
    skipped_rows = [
        RungRow(r.name, r.what, rung_command(modality, [*base_argv, *r.flags]), "skipped", skipped[r.name])
        for r in rungs
        if r.name in skipped
    ]
    rungs = [r for r in rungs if r.name not in skipped]
    if is_main:
        prune_prefix_caches(caches, {r.unfreeze_last for r in rungs if r.cached})
    rows_by_split = data_facts["rows"]
    built = set(caches.get("written", []))
    costs = {
        r.name: RungCost(r, probe.seconds_per_row, rows_by_split, r.unfreeze_last in built, run_args.auto_epochs)
        for r in rungs
    }
    estimates = {name: cost.seconds(epochs) for name, cost in costs.items()}
    learned = Learned(epochs)
    seeds = [training_args.seed + i for i in range(ladder_args.seeds)]
    rows: list[RungRow] = []
    if "probe_head" in ladder_args.rung_names:
        rows.append(probe_row(best_probe, probe, modality, base_argv, output_dir, data_facts))
    rows.extend(skipped_rows)
    steps_per_epoch = -(-rows_by_split.get("train", 0) // training_args.per_device_train_batch_size)
    for rung in sorted(rungs, key=lambda r: estimates[r.name]):
        row = run_rung(rung, seeds, modality, base_argv, costs[rung.name], learned, steps_per_epoch, stops)
        rows.append(row)
    order = {name: i for i, name in enumerate(ladder_args.rung_names)}
    rows.sort(key=lambda row: order.get(row.name, len(order)))

    # --- 3. choose on validation, write the ladder, print the command ------------------------------------------
    recommended, tolerance = choose(
        rows,
        metric,
        rows_by_split.get("validation", 0),
        ladder_args.tolerance,
        partial(bootstrap_se, output_dir, metric, best_probe),
    )
    extra = {
        "modality": modality.name,
        "seeds": seeds,
        "budget_seconds": ladder_args.budget_seconds,
        "wall_seconds": round(progress.spent, 1),  # with what earlier, preempted runs of this ladder spent
        "best_probe_layer": dataclasses.asdict(best_probe),
        "tolerance_method": "binomial standard error (a share)"
        if metric_spec(metric, "--metric").share or ladder_args.tolerance is not None
        else "bootstrap standard error of the best rung's validation rows (200 resamples)",
        "last_k": list(ks),
        "data": data_facts,
    }
    if recommended is not None:
        per_class = rows_by_split.get("train", 0) / max(data_facts["num_classes"], 1)
        extra["recommendation"] = (
            f"Recommended: **{recommended.name}** ({recommended.what}), validation {metric} "
            f"{recommended.score(metric):.4f} in {recommended.mean('train_seconds'):.1f} s of training. "
            + scenario(recommended, rows, metric, per_class, probe.num_layers - best_probe.depth, tolerance)
            + f"\n\n    {recommended.command}"
        )
    if is_main:
        write_outputs(output_dir, rows, recommended, tolerance, metric, extra)
        print(extra.get("recommendation", "no rung finished: see ladder.md for the reasons").replace("**", ""))
    return json.loads((output_dir / "ladder.json").read_text()) if is_main else {}


def resolve_metric(requested: str, data_facts: dict) -> str:
    """--metric, or for auto the default of the data's problem type (mAP for label sets, RMSE for numbers)."""
    return chosen_metric(requested, data_facts.get("problem_type", "single_label_classification"), "--metric")


def bootstrap_se(output_dir: Path, metric: str, best_probe: ProbeLayer, row: RungRow) -> float | None:
    """One bootstrap standard error of ``metric`` over a rung's validation rows (its first seed's saved validation
    outputs, ``ftpeft.labels.evaluation``; the probe head's from the probe); None where there are none (one class
    per row)."""
    from ftpeft.labels.evaluation import VALIDATION_OUTPUTS_FILE
    from ftpeft.labels.scores import bootstrap_standard_error
    from ftpeft.labels.target import load_target

    if row.name == "probe_head":
        return best_probe.val_standard_error

    for folder in sorted((output_dir / RUNGS_DIR).glob(f"{row.name}-seed*")):
        target = load_target(folder)
        if (folder / VALIDATION_OUTPUTS_FILE).is_file() and target is not None:
            saved = np.load(folder / VALIDATION_OUTPUTS_FILE)
            return bootstrap_standard_error(saved["outputs"], saved["labels"], target, metric)
    return None


def rung_cache(base_argv: list[str], tuning_args: TuningArguments) -> tuple[list[str], str]:
    """(flags a cached rung adds, its cache dtype): --cache_frozen in the user's --cache_dtype, else in float32,
    whose run scores validation and test from the cache as well (its frozen layers never run after the probe)."""
    if _values(base_argv, "cache_dtype"):
        return ["--cache_frozen"], tuning_args.cache_dtype
    return ["--cache_frozen", "--cache_dtype", EXACT_CACHE_DTYPE], EXACT_CACHE_DTYPE


def cached_depths(caches: dict, num_layers: int, epochs: float) -> set[int]:
    """The depths k whose rung trains with --cache_frozen: those the probe's pass cached (text), and at 2 or more
    epochs every depth the model allows (a cache built by the run itself pays from the second epoch on)."""
    written = set(caches.get("written", []))
    if epochs < 2 or not caches:
        return written
    return written | set(caches.get("cacheable", range(num_layers)))


def prune_prefix_caches(caches: dict, keep: set[int]) -> None:
    """Delete the caches the probe wrote for depths no rung trains at (they live in the user's cache root)."""
    for k, directories in caches.get("built", {}).items():
        if int(k) not in keep:
            for directory in directories:
                shutil.rmtree(directory, ignore_errors=True)


def rung_command(modality: Modality, argv: list[str]) -> str:
    shown = strip_flags(argv, ("overwrite_output_dir",))
    return f"accelerate launch {modality.recipe} {shlex.join(shown)}"


@dataclasses.dataclass
class RungCost:
    """A rung's cost model: predicted seconds of one run for a given number of epochs (``estimate_seconds``)."""

    rung: Rung
    seconds_per_row: float
    rows: dict[str, int]
    cache_built: bool
    open_ended: bool  # --num_train_epochs auto: the length is learned, not given

    def seconds(self, epochs: float) -> float:
        return estimate_seconds(self.rung, self.seconds_per_row, self.rows, epochs, self.cache_built)


@dataclasses.dataclass
class Learned:
    """What the finished rungs taught the cost model: how their wall time compared with the estimate at the
    length they really ran (``ratios``), and, under --num_train_epochs auto, that length (``epochs``)."""

    guess: float
    ratios: list[float] = dataclasses.field(default_factory=list)
    epochs: list[float] = dataclasses.field(default_factory=list)

    @property
    def calibration(self) -> float:
        return statistics.median(self.ratios) if self.ratios else 1.0

    @property
    def expected_epochs(self) -> float:
        return statistics.median(self.epochs) if self.epochs else self.guess

    def estimate(self, cost: RungCost) -> float:
        return cost.seconds(self.expected_epochs if cost.open_ended else self.guess) * self.calibration

    def learn(self, cost: RungCost, wall: float, stopped_epoch: float | None) -> None:
        epochs = stopped_epoch if cost.open_ended and stopped_epoch is not None else self.guess
        self.ratios.append(wall / max(cost.seconds(epochs), 1e-6))
        if cost.open_ended and stopped_epoch is not None:
            self.epochs.append(stopped_epoch)


def budget_steps(cost: RungCost, learned: Learned, seconds_left: float, steps_per_epoch: int) -> int:
    """The optimizer steps an open-ended rung may run in ``seconds_left``: its one-off and final costs first, then
    the per-epoch cost of the calibrated model. The rung stops there, marked not converged, if validation is still
    improving."""
    per_epoch = (cost.seconds(2.0) - cost.seconds(1.0)) * learned.calibration
    fixed = cost.seconds(0.0) * learned.calibration
    epochs = max(seconds_left - fixed, 0.0) / max(per_epoch, 1e-9)
    return max(1, int(epochs * max(steps_per_epoch, 1)))


def run_rung(
    rung: Rung,
    seeds: list[int],
    modality: Modality,
    base_argv: list[str],
    cost: RungCost,
    learned: Learned,
    steps_per_epoch: int,
    stops: LadderStops,
) -> RungRow:
    """Run (or take from an earlier, killed or preempted ladder) every seed of one rung; a refusal becomes the row's
    reason. Under --num_train_epochs auto each seed stops on validation, or at the steps the budget leaves it. A seed
    an earlier ladder left unfinished resumes from its last complete checkpoint."""
    runs_dir = stops.output_dir / RUNGS_DIR
    argv_of = {
        seed: [*base_argv, *rung.flags, "--seed", str(seed), "--output_dir", str(runs_dir / f"{rung.name}-seed{seed}")]
        for seed in seeds
    }
    row = RungRow(rung.name, rung.what, rung_command(modality, argv_of[seeds[0]]), "done")
    row.estimated_seconds = round(learned.estimate(cost), 1)
    for seed in seeds:
        result_file = runs_dir / f"{rung.name}-seed{seed}.json"
        if result_file.is_file():
            result = json.loads(result_file.read_text())
        else:
            stops.check(f"before rung {rung.name}, seed {seed}")
            needed, seconds_left = learned.estimate(cost), stops.progress.seconds_left()
            if _main_decides(needed > seconds_left):
                row.status, row.reason = "skipped", f"estimated {needed:.0f} s > {max(seconds_left, 0):.0f} s left"
                logger.warning("ladder: %s skipped (%s)", rung.name, row.reason)
                break
            folder = runs_dir / f"{rung.name}-seed{seed}"
            start_flags = _main_decides(rung_start_flags(folder))
            resuming = "--resume_from_checkpoint" in start_flags
            argv = [*argv_of[seed], *start_flags]
            budget_cap = None
            if cost.open_ended:  # a rung that would outrun the budget stops at its share of it, marked so
                caps = stops.progress.caps  # a resumed seed keeps the cap it started with: the same run to its end
                if not (resuming and folder.name in caps):
                    caps[folder.name] = _main_decides(budget_steps(cost, learned, seconds_left, steps_per_epoch))
                    if stops.is_main:
                        stops.progress.save()
                budget_cap = caps[folder.name]
                argv = [*argv, "--auto_max_steps", str(budget_cap)]
            logger.warning(
                "ladder: %s, seed %d (estimated %.0f s, %.0f s left)%s", rung.name, seed, needed, seconds_left,
                "; resuming from its last checkpoint" if resuming else "",
            )  # fmt: skip
            start = time.perf_counter()
            with stops.rung_seed(folder):  # a preemption during it stops the ladder: exit 75
                result = run_one(modality, argv)
            wall = time.perf_counter() - start
            if result["status"] == "done":
                if folder.name in stops.progress.cut_seconds:  # its preempted tries count as its training
                    result["train_seconds"] += stops.progress.cut_seconds.pop(folder.name)
                if not resuming:  # a resumed seed's wall time is a part of its run's
                    learned.learn(cost, wall, result.get("stopped_epoch"))
                if result.get("converged") is False:
                    capped_by_budget = budget_cap is not None and result.get("stopped_step", 0) >= budget_cap
                    result["stop_note"] = (
                        f"the budget's {budget_cap} steps" if capped_by_budget else "the --auto_max_epochs cap"
                    ) + f", validation still improving at epoch {result['stopped_epoch']:g}"
            if Path(runs_dir).parent.is_dir() and stops.is_main:
                write_json(result_file, result)
                stops.progress.save()
        if result["status"] != "done":
            row.status, row.reason = result["status"], result["reason"]
            break
        if result.get("eval_accuracy") is not None:  # one class per row
            row.val_accuracy.append(result["eval_accuracy"])
            row.val_macro_f1.append(result["eval_macro_f1"])
            if result.get("test_accuracy") is not None:
                row.test_accuracy.append(result["test_accuracy"])
        else:  # label sets and numbers: every metric of the problem type
            row.add_scores(result.get("scores", {}), "eval")
            row.add_scores(result.get("scores", {}), "test")
        row.train_seconds.append(result["train_seconds"])
        row.trainable_params = result["trainable_params"]
        row.peak_rss_mb = max(row.peak_rss_mb or 0.0, result["peak_rss_mb"])
        row.converged.append(result.get("converged"))
        if result.get("best_epoch") is not None:
            row.best_epoch.append(result["best_epoch"])
            row.stopped_epoch.append(result["stopped_epoch"])
        row.stop_note = result.get("stop_note", row.stop_note)
    return row


def run_one(modality: Modality, argv: list[str]) -> dict[str, Any]:
    """One run of the recipe's job in this process; its metrics, or why it could not run. A preempted run's exit
    (SystemExit 75, a BaseException) is not a failure: it passes through to the ladder."""
    parsed = None
    try:
        parsed = parse_args(modality.argument_types, argv, modality.defaults)
        job = _job(modality.name)
        with PeakRss() as rss:
            metrics = job(*parsed, config=parsed.resolved)
    except FtpeftError as error:
        return {"status": "failed", "reason": str(error)}
    except Exception as error:  # a rung that crashes is a row with its reason, not the end of the ladder
        logger.exception("ladder: rung failed")
        return {"status": "failed", "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    freeze = Path(parsed[4].output_dir) / "freeze_report.json"
    settings_file = Path(parsed[4].output_dir) / SETTINGS_FILE
    stop = json.loads(settings_file.read_text()).get("stopping", {}).get("used") if settings_file.is_file() else None
    return {
        "status": "done",
        **({key: stop[key] for key in ("converged", "best_epoch", "stopped_epoch", "stopped_step")} if stop else {}),
        "eval_accuracy": metrics.get("eval_accuracy"),
        "eval_macro_f1": metrics.get("eval_macro_f1") if "eval_accuracy" in metrics else None,
        "test_accuracy": metrics.get("test_accuracy"),
        "scores": {
            k: v for k, v in metrics.items() if k.startswith(("eval_", "test_")) and isinstance(v, (int, float))
        },
        "output_dir": str(parsed[4].output_dir),
        "train_seconds": metrics["train_runtime"],
        "trainable_params": json.loads(freeze.read_text())["trainable_params"] if freeze.is_file() else None,
        "peak_rss_mb": round(rss.peak_mb, 1),
    }


def _job(modality: str):
    if modality == "image":
        from ftpeft.vision.job import train_image_classifier

        return train_image_classifier
    from ftpeft.text.job import train_classifier

    return train_classifier


# --- the probe ------------------------------------------------------------------------------------------------


def run_probe(modality: str, recipe_args, ladder_args, output_dir: Path, is_main: bool, cache_dtype: str):
    """(ProbeResult, data facts, trainable-group count, the frozen-prefix caches it wrote (text)) — computed once;
    a resumed ladder reads it back."""
    from accelerate import PartialState

    from ftpeft.ladder.probe import name_layers, save_transfer_curve

    saved = output_dir / PROBE_DIR / "probe.json"
    with PartialState().main_process_first():
        if not saved.is_file():
            if modality == "text":
                result, facts, num_layers, caches = probe_text(recipe_args, cache_dtype, ladder_args.metric)
            else:
                result, facts, num_layers, caches = probe_images(recipe_args, ladder_args.metric)
            name_layers(result.layers, result.num_layers, modality)
            if is_main:
                payload = {"probe": dataclasses.asdict(result), "data": facts, "num_layers": num_layers}
                write_json(saved, {**payload, "prefix_caches": caches})
                save_transfer_curve(output_dir, result, modality, resolve_metric(ladder_args.metric, facts))
    payload = json.loads(saved.read_text())
    probe = payload["probe"]
    probe["layers"] = [ProbeLayer(**layer) for layer in probe["layers"]]
    return ProbeResult(**probe), payload["data"], payload["num_layers"], payload.get("prefix_caches", {})


def probe_text(recipe_args, cache_dtype: str, metric: str = "auto"):
    from transformers import AutoModel, DataCollatorWithPadding

    from ftpeft.core.artifacts import loading_model
    from ftpeft.core.freezing import layer_map, trained_shares
    from ftpeft.ladder.precache import plan_prefix_caches
    from ftpeft.ladder.probe import probe_layers, text_layer_features
    from ftpeft.text.data import load_tokenized_data
    from ftpeft.text.modeling import check_max_seq_length, resolve_model_path

    model_args, data_args, _, _, training_args = recipe_args
    model_path = resolve_model_path(model_args)
    check_max_seq_length(model_args, model_path, data_args.max_seq_length)
    # --max_seq_length auto resolves here from the train split, and again in each rung: the same number for the same
    # seed (same split, same tokenizer), so the rungs tokenise as the probe did and reuse its prefix caches
    data = load_tokenized_data(model_args, model_path, data_args, training_args)
    with loading_model(model_path):
        model = AutoModel.from_pretrained(model_path).eval()
    collator = DataCollatorWithPadding(data.tokenizer)
    groups = layer_map(model)
    num_layers = groups.num_layers
    caches = plan_prefix_caches(recipe_args, model_path, data, model, collator, num_layers, cache_dtype)
    start = time.perf_counter()
    features = {}
    for split, dataset in data.tokenized.items():
        with caches.writing(split, dataset) as on_batch:  # the head-only and last-k rungs' frozen-prefix caches
            features[split] = text_layer_features(
                model, dataset, collator, training_args.per_device_eval_batch_size, on_batch
            )
    seconds = time.perf_counter() - start - caches.write_seconds
    labels = {split: np.asarray(dataset["labels"]) for split, dataset in data.tokenized.items()}
    if data.windows:  # a text's features are the mean of its windows' (as its rungs score the mean of their logits)
        features, labels = pooled_text_features(features, labels, data.tokenized)
    facts = {"problem_type": data.target.problem_type}
    layers = probe_layers(features, labels, training_args.seed, data.target, resolve_metric(metric, facts))
    rows = {split: len(dataset) for split, dataset in data.tokenized.items()}
    depth = features["train"]["mean"].shape[1] - 1
    result = ProbeResult(layers, depth, seconds, sum(rows.values()), {"hidden": features["train"]["mean"].shape[2]})
    facts = {
        "rows": rows,
        "num_classes": len(data.label_names),
        "label_names": data.label_names,
        "problem_type": data.target.problem_type,
        "trained_share": trained_shares(model, groups),
    }
    return result, facts, num_layers, caches.describe()


def pooled_text_features(features: dict, labels: dict, tokenized) -> tuple[dict, dict]:
    """Per split, window features and labels -> one row per text (``pool_windows`` over ``DOCUMENT_COLUMN``)."""
    from ftpeft.core.windows import DOCUMENT_COLUMN, pool_windows

    pooled_features, pooled_labels = {}, {}
    for split, dataset in tokenized.items():
        documents, pooled_features[split] = dataset[DOCUMENT_COLUMN], {}
        for kind, values in features[split].items():  # each kind pooled once; the labels come with it
            pooled_features[split][kind], pooled_labels[split] = pool_windows(values, labels[split], documents)
    return pooled_features, pooled_labels


def probe_images(recipe_args, metric: str = "auto"):
    from ftpeft.core.freezing import layer_map, trained_shares
    from ftpeft.ladder.probe import image_stage_features, probe_layers
    from ftpeft.vision.data import TransformedImages, build_transforms, load_image_classification_data
    from ftpeft.vision.models import create_timm_model, resolve_image_model

    model_args, data_args, _, _, training_args = recipe_args
    name, weights = resolve_image_model(model_args.model_name_or_path, model_args.pretrained_file, data_args.is_demo)
    data = load_image_classification_data(data_args, training_args.seed, model_args.cache_dir)
    model = create_timm_model(name, len(data.label_names), model_args.pretrained, weights, model_args.cache_dir)
    _, eval_transform, _ = build_transforms(model, data_args)
    start = time.perf_counter()
    features = {
        split: image_stage_features(model, TransformedImages(images, eval_transform), 64)
        for split, images in data.splits.items()
    }
    seconds = time.perf_counter() - start
    labels = {split: np.asarray(images.labels) for split, images in data.splits.items()}
    target = getattr(data, "target", None)
    facts = {"problem_type": target.problem_type} if target is not None else {}
    layers = probe_layers(features, labels, training_args.seed, target, resolve_metric(metric, facts))
    rows = {split: len(images) for split, images in data.splits.items()}
    widths = features["train"]["widths"].tolist()
    # the module each stage's features came from, so the probe_head command extracts that stage again
    modules = {str(depth): info["module"] for depth, info in enumerate(model.feature_info)}
    result = ProbeResult(
        layers, len(widths) - 1, seconds, sum(rows.values()), {"widths": widths, "stage_modules": modules}
    )
    groups = layer_map(model)
    facts = {
        "rows": rows,
        "num_classes": len(data.label_names),
        "label_names": data.label_names,
        "trained_share": trained_shares(model, groups),
    }
    if target is not None:
        facts["problem_type"] = target.problem_type
    return result, facts, groups.num_layers, {}


def keep_flags(argv: list[str], names: set[str]) -> list[str]:
    """The flags of ``argv`` named in ``names`` (with their values); the rest dropped."""
    others = {token.partition("=")[0][2:].replace("-", "_") for token in argv if token.startswith("--")} - names
    return strip_flags(argv, tuple(others))


def probe_feature_layer(best: ProbeLayer, probe: ProbeResult, modality: str) -> str:
    """extract_features.py's --layer for the probe's best layer: a hidden-state index (text), or the timm stage's
    module name (the module the probe hooked) or pre_logits (images); "" when unknown (an older probe.json)."""
    if modality == "text":
        return str(best.depth)
    if best.depth == probe.num_layers:
        return "pre_logits"
    return (probe.feature_dims.get("stage_modules") or {}).get(str(best.depth), "")


def probe_row(
    best: ProbeLayer, probe: ProbeResult, modality: Modality, base_argv: list[str], output_dir: Path, facts
) -> RungRow:
    """The cheapest rung: logistic regression on the best probe layer's frozen features."""
    from ftpeft.features.args import FeatureArguments
    from ftpeft.vision.args import ImageDataArguments

    # extract_features.py takes the data flags (and the model) the ladder was given
    accepted = {f.name for t in (FeatureArguments, ImageDataArguments) for f in dataclasses.fields(t)}
    model = keep_flags(base_argv, accepted - {"layer", "pooling", "feature_dir", "modality"})
    layer = probe_feature_layer(best, probe, modality.name)
    extract = [
        "python", "recipes/extract_features.py", "--modality", modality.name, *model,
        *(["--layer", layer] if layer else []), "--pooling", best.pooling, "--feature_dir", str(output_dir / "features"),
    ]  # fmt: skip
    numbers = facts.get("problem_type") == "regression"
    head_flags = ["--head", "ridge"] if numbers else ["--head", "logreg", "--regularization_c", f"{PROBE_C:g}"]
    head = ["python", "recipes/train_head.py", "--features_dir", str(output_dir / "features"), *head_flags,
            "--output_dir", str(output_dir / "probe_head")]  # fmt: skip
    widths = probe.feature_dims.get("widths")
    width = probe.feature_dims.get("hidden") or (widths[best.depth] if widths else 0)
    row = RungRow(
        "probe_head",
        f"{'ridge' if numbers else 'logistic regression'} on frozen {best.name} features",
        f"{shlex.join(extract)} && {shlex.join(head)}",
        "done",
        val_accuracy=[best.val_accuracy] if best.val_accuracy is not None else [],
        val_macro_f1=[best.val_macro_f1] if best.val_macro_f1 is not None else [],
        test_accuracy=[best.test_accuracy] if best.test_accuracy is not None else [],
        val_scores={k: [v] for k, v in best.val_scores.items()},
        test_scores={k: [v] for k, v in best.test_scores.items()},
        # its cost: the frozen pass over the data (shared by every probe layer) plus this layer's fit
        train_seconds=[round(probe.forward_seconds + best.fit_seconds, 2)],
        trainable_params=(width + 1) * max(facts["num_classes"], 2),
    )
    return row
