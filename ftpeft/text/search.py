"""``--hp_search N`` for text classifiers: Optuna trials on the validation split, then one run of the best settings.

    metrics = search_then_train(parsed, parse)   # parsed: bert_cls's arguments; parse: its parser

Every trial builds its own model from a copy of the tuning arguments with the trial's values
(``ftpeft.search.study``). With ``--cache_frozen`` the frozen prefix is cached once, before the first trial,
and every trial trains its top k layers from that one cache (their frozen weights are checked to be the
cached ones). After the search the best trial's settings are written to a ``best.yaml``, parsed back with
the recipe's own parser, and trained once by ``train_classifier``: the model in the output dir is exactly
what ``--config best.yaml`` gives, and only it sees the test split.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftpeft.core.errors import FtpeftError

logger = logging.getLogger("ftpeft")


@dataclasses.dataclass
class SearchOutcome:
    study: Any  # optuna.Study
    space: Any  # ftpeft.search.space.SearchSpace
    best_config: dict[str, Any]  # what best.yaml holds
    wall_s: float
    metric: str = "accuracy"  # what the trials were scored by (--hp_search_metric, auto resolved)


def search_then_train(parsed, parse: Callable[[list[str]], Any], recipe: str = "bert_cls") -> dict[str, Any]:
    """Search, train the best settings once (validation, then test, as any run), write hp_search.md,
    hp_search.png and best.yaml next to the model; returns the final run's metrics plus the search's summary.

    The trials are kept in ``OUTPUT_DIR/hp_search_journal.log`` (Optuna's journal file). A preemption signal
    (``--preemption_signals``) during the search writes ``OUTPUT_DIR/.preempted`` and exits 75, as a run does;
    the same command with ``--resume_from_checkpoint auto`` runs only the trials left, then the final run (which
    itself resumes from its last checkpoint when it was the one preempted)."""
    from ftpeft.core.outputs import SEARCH_JOURNAL_FILE, check_output_dir
    from ftpeft.core.preemption import Preempted, SignalFlag, Stop, clear_preempted, parse_signals
    from ftpeft.search.report import BEST_FILE, search_summary, write_best_yaml, write_search_report
    from ftpeft.text.job import train_classifier

    model_args, data_args, tuning_args, search_args, run_args, training_args = parsed
    search_args.check_with(tuning_args, training_args)
    output_dir = Path(training_args.output_dir)
    journal = output_dir / SEARCH_JOURNAL_FILE
    continuing = training_args.resume_from_checkpoint == "auto"
    if journal.is_file() and not (continuing or run_args.overwrite_output_dir):
        raise FtpeftError(
            f"--output_dir {output_dir} holds the trials of a search ({SEARCH_JOURNAL_FILE}); pass "
            "--resume_from_checkpoint auto to continue it, --overwrite_output_dir to start afresh there, or choose "
            "another --output_dir."
        )
    # refuse a non-empty output dir now, not after the trials
    check_output_dir(training_args.output_dir, run_args.overwrite_output_dir, training_args.resume_from_checkpoint)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not continuing:  # --overwrite_output_dir: a new search, not the old one's trials
        journal.unlink(missing_ok=True)
    clear_preempted(output_dir)
    # --max_time bounds the search and its final run together: it counts from here
    flag = SignalFlag(parse_signals(run_args.preemption_signals), run_args.max_time_seconds)
    flag.install()
    try:
        outcome = search_classifier(
            model_args, data_args, tuning_args, search_args, training_args, parsed.resolved, run_args, flag
        )
        if flag.current():  # after the last trial's last check: the rerun goes straight to the final run
            raise Preempted(Stop(flag.current(), 0))
    except Preempted as preempted:
        leave_search(preempted.stop, output_dir, flag, search_args.hp_search)
    finally:
        flag.restore()
    summary = search_summary(outcome.study, outcome.space, outcome.metric)
    header = (
        f"best of {summary['trials']} trials ({summary['metric']} {summary['best_value']:.4f} on validation, "
        f"trial {summary['best_trial']}; trial 0, the given settings: {summary['given_value']})"
    )
    # a continued search's final run continues too: from its own last checkpoint, if it was the one preempted
    continued = ["--resume_from_checkpoint", "auto"] if continuing else []
    if flag.deadline is not None:  # the final run gets what the search left of --max_time
        continued += ["--max_time", f"{max(flag.deadline - time.monotonic(), 1.0):.1f}s"]
    with tempfile.TemporaryDirectory() as folder:  # parsed by the recipe's parser, as --config best.yaml would be
        write_best_yaml(Path(folder) / BEST_FILE, outcome.best_config, recipe, header)
        final = parse(["--config", str(Path(folder) / BEST_FILE), *continued])
    model_args, data_args, tuning_args, _, run_args, training_args = final
    logger.info("training the best settings once: %s", summary["best_values"])
    metrics = train_classifier(model_args, data_args, tuning_args, run_args, training_args, config=final.resolved)
    if training_args.process_index == 0:
        write_best_yaml(output_dir / BEST_FILE, outcome.best_config, recipe, header)
        write_search_report(output_dir, outcome.study, outcome.space, outcome.metric, outcome.wall_s)
    return {**metrics, "hp_search": {**summary, "wall_s": round(outcome.wall_s, 1)}}


def leave_search(stop, output_dir: Path, flag, n_trials: int) -> None:
    """A preempted search: ``OUTPUT_DIR/.preempted`` (the record a run writes, with the trials kept), the last line
    (which trial runs again, and the command that continues), exit 75. Nothing after the search runs."""
    import sys

    from ftpeft.core.config import command_line
    from ftpeft.core.outputs import SEARCH_JOURNAL_FILE, write_json
    from ftpeft.core.preemption import PREEMPTED_EXIT_CODE, PREEMPTED_FILE, preemption_record, resume_argv
    from ftpeft.search.study import finished_trials

    flag.ignore()
    journal = output_dir / SEARCH_JOURNAL_FILE
    done = finished_trials(journal)
    record = preemption_record(stop, command_line(resume_argv(sys.argv)))
    record.update({"trials_done": done, "trials": n_trials, "journal": str(journal.resolve())})
    write_json(output_dir / PREEMPTED_FILE, record)
    then = f"trial {done} runs again, then the rest" if done < n_trials else "the final run of the best trial follows"
    cause = "the --max_time cap" if record["reason"] == "max_time" else record["signal"]
    logger.warning(
        "preempted by %s during --hp_search: %d of %d trials done, kept in %s; %s; exit %d. Resume: the same "
        "command with --resume_from_checkpoint auto: %s",
        cause, done, n_trials, journal, then, PREEMPTED_EXIT_CODE, record["resume_command"],
    )  # fmt: skip
    raise SystemExit(PREEMPTED_EXIT_CODE)


def search_classifier(
    model_args, data_args, tuning_args, search_args, training_args, config, run_args=None, preemption=None
) -> SearchOutcome:
    """Run ``--hp_search`` trials of a text classifier on the train and validation splits only.

    Under ``--num_train_epochs auto`` (``run_args.auto_epochs``) each trial stops on validation
    ``--hp_search_metric`` and scores its best evaluation; best.yaml then trains the best trial's settings to that
    trial's best step (``--max_steps``, the same constant LR after the same warm-up), so the final model is that
    trial's trajectory cut where it was best."""
    from transformers import DataCollatorWithPadding, set_seed

    from ftpeft.core.lifecycle import setup_logging
    from ftpeft.core.metrics import chosen_metric, make_compute_metrics
    from ftpeft.core.outputs import SEARCH_JOURNAL_FILE
    from ftpeft.labels.loss import loss_weights
    from ftpeft.search.report import best_config
    from ftpeft.search.space import build_space
    from ftpeft.search.study import SearchTrainer, TrialModels, run_search, search_training_args
    from ftpeft.text.data import load_tokenized_data
    from ftpeft.text.modeling import load_sequence_classifier, resolve_model_path
    from ftpeft.text.pooling import checkpoint_pooling, resolve_pooling
    from ftpeft.text.windows import refuse_cache_with_windows
    from ftpeft.tuning.apply import apply_tuning

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise FtpeftError("--hp_search needs Optuna: pip install -e '.[tune]'.") from None
    tuning_args.require_supported("bert_cls", peft=True, cache=True)
    setup_logging(training_args)
    set_seed(training_args.seed)
    model_path = resolve_model_path(model_args)
    hub = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir}
    trained_with = checkpoint_pooling(model_path, **hub)
    data = load_tokenized_data(model_args, model_path, data_args, training_args)
    splits = {"train": data.tokenized["train"], "validation": data.tokenized["validation"]}  # never the test split
    refuse_cache_with_windows(data.windows, tuning_args.cache_frozen, "--hp_search --cache_frozen")
    target = data.target
    metric = chosen_metric(search_args.hp_search_metric, target.problem_type, "--hp_search_metric")

    def build(trial_tuning):
        """A fresh model tuned as ``trial_tuning`` says (the readout follows the trial's depth)."""
        pooling, _ = resolve_pooling(
            model_args.pooling, trained_with, trial_tuning.unfreeze_last_k, trial_tuning.use_peft
        )
        model, newly_initialised = load_sequence_classifier(model_args, model_path, data.label_names, pooling, target)
        return apply_tuning(model, trial_tuning, newly_initialised)

    given = build(tuning_args)  # the layer count bounds --unfreeze_last; with the cache, its prefix is cached
    space = build_space(
        search_args.fields(tuning_args.use_peft), tuning_args, training_args.learning_rate, given.layers.num_layers
    )
    logger.info("hp search space: %s", "; ".join(space.describe()))
    collator = DataCollatorWithPadding(data.tokenizer)
    plan = trial_plan(training_args, run_args, len(splits["train"]), metric, target.problem_type)
    with tempfile.TemporaryDirectory(prefix="ftpeft-trials-") as trial_dir:
        trial_args = search_training_args(training_args, trial_dir, plan, run_args)
        train_data, eval_data, wrap = splits["train"], splits["validation"], None
        if tuning_args.cache_frozen:
            train_data, eval_data, collator, wrap = shared_prefix_cache(
                given.model, tuning_args, splits, collator, trial_args
            )
        class_weights, pos_weight = loss_weights(
            target, tuning_args.class_weights, data_args.pos_weight, splits["train"]["labels"]
        )
        trainer = SearchTrainer(
            args=trial_args,
            trial_models=TrialModels(space, tuning_args, trial_args, build, wrap),
            train_dataset=train_data,
            eval_dataset=eval_data,
            data_collator=collator,
            compute_metrics=make_compute_metrics(data.label_names, target),
            processing_class=data.tokenizer,
            keep_all_columns=tuning_args.cache_frozen,
            class_weights=class_weights,
            target=target,
            pos_weight=pos_weight,
            plan=plan,
            preemption=preemption,
        )
        start = time.perf_counter()
        journal = Path(training_args.output_dir) / SEARCH_JOURNAL_FILE
        study = run_search(trainer, space, search_args.hp_search, metric, training_args.seed, journal)
        wall_s = time.perf_counter() - start
    best = best_config(config, study.best_trial.params)
    if plan is not None:
        best.update(stopping_point(study.best_trial, trial_args))
    return SearchOutcome(study, space, best, wall_s, metric)


def trial_plan(
    training_args, run_args, train_rows: int, metric: str, problem_type: str = "single_label_classification"
):
    """The trials' ``--num_train_epochs auto`` plan (None for a fixed length): they stop on the searched metric."""
    from ftpeft.core.metrics import metric_spec
    from ftpeft.core.stopping import plan_auto_epochs

    plan = plan_auto_epochs(training_args, run_args, train_rows, 0, problem_type) if run_args is not None else None
    if plan is None:
        return None
    spec = metric_spec(metric, "--hp_search_metric")
    return dataclasses.replace(plan, metric=spec.name, greater_is_better=spec.greater_is_better)


def stopping_point(trial, trial_args) -> dict[str, Any]:
    """The settings that retrain ``trial`` to its best evaluation: that many steps, on the trials' LR schedule."""
    from ftpeft.search.study import BEST_STEP_ATTR

    return {
        "max_steps": int(trial.user_attrs[BEST_STEP_ATTR]),
        "lr_scheduler_type": str(getattr(trial_args.lr_scheduler_type, "value", trial_args.lr_scheduler_type)),
        "warmup_steps": trial_args.warmup_steps,
    }


def shared_prefix_cache(model, tuning_args, splits, collator, training_args):
    """Cache the frozen prefix of ``model`` once; return (train index, validation index, collator, wrap), where
    ``wrap(trial_model)`` swaps a trial model's prefix out for the cache after checking its frozen weights are the
    cached ones (a trial samples only what trains above the boundary)."""
    from ftpeft.cache.prefix import (
        CachedPrefixModel,
        default_cache_root,
        frozen_fingerprint,
        prepare_cached_training,
    )

    k = tuning_args.unfreeze_last_k
    cache_root = tuning_args.activation_cache_dir or default_cache_root()
    cached_prefix = frozen_fingerprint(model, k)  # before preparing: that swaps the prefix out of ``model``
    _, cached, cached_collator, _ = prepare_cached_training(
        model, k, splits, collator, cache_root, tuning_args.cache_dtype, training_args.per_device_eval_batch_size,
        training_args,
    )  # fmt: skip

    def wrap(trial_model):
        if frozen_fingerprint(trial_model, k) != cached_prefix:
            raise FtpeftError("--hp_search --cache_frozen: a trial's frozen layers differ from the cached ones.")
        return CachedPrefixModel(trial_model, k)

    return cached["train"], cached["validation"], cached_collator, wrap
