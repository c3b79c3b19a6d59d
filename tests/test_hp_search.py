"""--hp_search N: every trial's optimizer and model use the sampled values (not only TrainingArguments'), the frozen-
prefix cache is built once for all trials, best.yaml reruns, the test split is scored once, bad combinations are
refused before any work."""

import re

import pytest
import yaml
from helpers import TEXT_RUN_FILES, load_recipe, tiny_args, tiny_auto_args

from ftpeft.core.errors import FtpeftError
from ftpeft.text.job import TEXT_LR_DEFAULTS

optuna = pytest.importorskip("optuna")

bert_cls = load_recipe("bert_cls")
SEARCH_FILES = {"hp_search.md", "hp_search.png", "best.yaml"}
NUM_LAYERS = 4  # the tiny BERT of helpers.make_tiny_text_model
LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


@pytest.fixture
def restore_signals():
    """A search stopped in this process ignores the preemption signals on its way out (as a run does); the handlers
    are put back for the next test (and its subprocesses, which would inherit the ignoring)."""
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def restore():
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    yield restore
    restore()


@pytest.fixture
def trial_records(monkeypatch):
    """What each trial's Trainer really trained: the trial's params, its model, its optimizer (recorded when
    Trainer creates it, after the trial's values were applied)."""
    from ftpeft.search.study import SearchTrainer

    records, create = [], SearchTrainer.create_optimizer

    def recording(self, model=None):
        optimizer = create(self, model)
        lrs = group_lr_by_name(self.model, optimizer)  # now: the scheduler changes them as it steps
        records.append({"params": dict(self._trial.params), "model": self.model, "lrs": lrs})
        return optimizer

    monkeypatch.setattr(SearchTrainer, "create_optimizer", recording)
    return records


def group_lr_by_name(model, optimizer) -> dict[str, float]:
    """Parameter name -> the LR of the optimizer group holding that Parameter object."""
    lr_of = {id(param): group["lr"] for group in optimizer.param_groups for param in group["params"]}
    return {name: lr_of[id(param)] for name, param in model.named_parameters() if id(param) in lr_of}


def expected_lr(name: str, used: dict) -> float:
    if "classifier" in name:
        return used["head_lr"]
    if "lora_" in name:
        return used["lora_lr"]
    layer = LAYER.search(name)
    depth = int(layer.group(1)) + 1 if layer else 0 if "embeddings" in name else NUM_LAYERS + 1  # pooler: the top
    return used["learning_rate"] * used["layer_decay"] ** (NUM_LAYERS + 1 - depth)


def check_trial_used_its_values(record: dict, given) -> None:
    _, _, tuning_args, _, _, training_args = given
    used = {
        "learning_rate": training_args.learning_rate,
        "head_lr": tuning_args.head_lr,
        "layer_decay": tuning_args.layer_decay,
        "lora_lr": tuning_args.lora_lr,
        "lora_r": tuning_args.lora_r,
        "lora_alpha": tuning_args.lora_alpha,
        "unfreeze_last": tuning_args.unfreeze_last,
        **record["params"],
    }
    model, lrs = record["model"], record["lrs"]
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert set(lrs) == trainable  # the optimizer holds exactly what trains
    for name, lr in lrs.items():
        assert lr == pytest.approx(expected_lr(name, used), rel=1e-9), name
    k = NUM_LAYERS if used["unfreeze_last"] == "all" else int(used["unfreeze_last"])
    if tuning_args.use_peft:
        ranks = {(m.r["default"], m.lora_alpha["default"]) for m in model.modules() if hasattr(m, "lora_A")}
        assert ranks == {(used["lora_r"], used["lora_alpha"])}
    trained_layers = {int(LAYER.search(n).group(1)) for n in trainable if LAYER.search(n) and "lora_" not in n}
    assert trained_layers == set(range(NUM_LAYERS - k, NUM_LAYERS))
    assert any("embeddings" in name for name in trainable) == (used["unfreeze_last"] == "all")


SEARCH_CASES = {  # the top layers with the default fields: test_best_yaml_reruns_...
    "LoRA: + lora_r, lora_alpha, lora_lr": pytest.param(
        ["--use_peft", "--unfreeze-last", "0"], marks=pytest.mark.slow
    ),  # the fast lane keeps the cache test below, which runs the same search code
    "depth": pytest.param(["--hp_search_fields", "unfreeze_last", "head_lr", "layer_decay"], marks=pytest.mark.slow),
}


@pytest.mark.parametrize("extra", SEARCH_CASES.values(), ids=SEARCH_CASES.keys())
def test_each_trial_trains_with_its_sampled_values(tiny_bert_dir, text_csv_dir, tmp_path, trial_records, extra):
    from ftpeft.text.search import search_then_train

    argv = tiny_args(tiny_bert_dir, text_csv_dir, tmp_path / "run", "--hp_search", "4", "--seed", "3", *extra)
    parsed = bert_cls.parse(argv)
    metrics = search_then_train(parsed, bert_cls.parse)

    trials = trial_records[:4]  # then the final run's optimizer, which is no trial's
    assert [sorted(r["params"]) for r in trials] == [sorted(trials[0]["params"])] * 4
    assert len({tuple(sorted(r["params"].items())) for r in trials}) == 4  # four different settings
    for record in trials:
        check_trial_used_its_values(record, parsed)
    assert parsed.resolved == bert_cls.parse(argv).resolved  # the parsed arguments were not changed
    assert vars(parsed[2]) == vars(bert_cls.parse(argv)[2])
    # trial 0 is the settings as given
    given = {**TEXT_LR_DEFAULTS, "lora_r": 8, "lora_alpha": 16, "lora_lr": 2e-3, "unfreeze_last": "all"}
    assert trials[0]["params"] == {name: given[name] for name in trials[0]["params"]}
    assert metrics["hp_search"]["trials"] == 4 and "test_accuracy" in metrics


@pytest.mark.slow
def test_best_yaml_reruns_the_best_trial_and_the_report_lists_every_trial(
    tiny_bert_dir, text_csv_dir, tmp_path, trial_records
):
    out = tmp_path / "run"
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "2", "--hp_search", "3",
                     "--eval_strategy", "steps", "--eval_steps", "1")  # fmt: skip
    metrics = bert_cls.main(argv)
    for record in trial_records[:3]:  # learning_rate, head_lr and layer_decay reached every trial
        check_trial_used_its_values(record, bert_cls.parse(argv))
    names = {p.name for p in out.iterdir()}
    assert SEARCH_FILES | TEXT_RUN_FILES <= names
    best = metrics["hp_search"]["best_values"]
    rerun = bert_cls.parse(["--config", str(out / "best.yaml")])
    _, _, tuning_args, search_args, _, training_args = rerun
    assert search_args.hp_search is None  # the rerun trains once
    assert (training_args.learning_rate, tuning_args.head_lr, tuning_args.layer_decay) == pytest.approx(
        (best["learning_rate"], best["head_lr"], best["layer_decay"])
    )
    assert yaml.safe_load((out / "run_args.yaml").read_text()) == rerun.resolved  # the final model is that rerun
    report = (out / "hp_search.md").read_text()
    rows = [line for line in report.splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == 3 and f"| {metrics['hp_search']['best_trial']} (best) |" in report
    assert all(row.split("|")[-3].strip() == "2" for row in rows if "complete" in row)  # evaluated at steps 1, 2
    assert "test" not in "".join(rows)
    assert "test_accuracy" in metrics and "eval_accuracy" in metrics  # the final model: validation, then test once


def test_cache_is_built_once_and_every_trial_trains_from_it(
    tiny_bert_dir, text_csv_dir, tmp_path, trial_records, monkeypatch
):
    from ftpeft.cache import prefix

    builds, build_store = [], prefix.build_store
    monkeypatch.setattr(prefix, "build_store", lambda *a, **kw: builds.append(a[4]) or build_store(*a, **kw))
    cache = tmp_path / "cache"
    argv = tiny_args(tiny_bert_dir, text_csv_dir, tmp_path / "run", "--unfreeze-last", "2", "--hp_search", "3",
                     "--cache_frozen", "--activation_cache_dir", str(cache))  # fmt: skip
    metrics = bert_cls.main(argv)
    assert len(builds) == 2 and len(list(cache.iterdir())) == 2  # train + validation, once for all (and the final run)
    trials = trial_records[:3]
    assert all(isinstance(r["model"], prefix.CachedPrefixModel) for r in trials)
    assert len({id(r["model"].model) for r in trials}) == 3  # a fresh model per trial, on the one cache
    for record in trials:
        used = record["params"]
        lrs = {round(lr, 12) for lr in record["lrs"].values()}
        lr, decay = used["learning_rate"], used["layer_decay"]
        assert lrs == {round(x, 12) for x in (used["head_lr"], lr, lr * decay, lr * decay**2)}
    assert "test_accuracy" in metrics


REFUSED = {
    "depth with the cache": (
        ["--unfreeze-last", "2", "--cache_frozen", "--hp_search", "2", "--hp_search_fields", "unfreeze_last"],
        "--hp_search_fields unfreeze_last cannot be used with --cache_frozen",
    ),
    "LoRA fields without LoRA": (["--hp_search", "2", "--hp_search_fields", "lora_r"], "LoRA fields need --use_peft"),
    "fields without a search": (["--hp_search_fields", "head_lr"], "--hp_search_fields only makes sense with"),
    "no trials": (["--hp_search", "0"], "--hp_search must be >= 1"),
    "unknown field": (["--hp_search", "2", "--hp_search_fields", "dropout"], "--hp_search_fields must be"),
    "staged unfreezing": (["--hp_search", "2", "--lp_ft", "--unfreeze-last", "2"], "cannot be combined with --lp_ft"),
    "resuming another checkpoint": (
        ["--hp_search", "2", "--resume_from_checkpoint", "elsewhere/checkpoint-4"],
        "a search continues only from its own output dir",
    ),
}


@pytest.mark.parametrize("extra,message", REFUSED.values(), ids=REFUSED.keys())
def test_bad_search_settings_are_refused_before_any_work(tmp_path, extra, message, monkeypatch):
    import ftpeft.text.search

    monkeypatch.setattr(ftpeft.text.search, "search_classifier", lambda *a, **kw: pytest.fail("searched"))
    argv = ["--output_dir", str(tmp_path / "run"), "--model_name_or_path", str(tmp_path / "never-read"), *extra]
    with pytest.raises(FtpeftError, match=re.escape(message)):
        bert_cls.main(argv)


def test_auto_trials_stop_on_validation_and_the_final_run_trains_to_the_best_trials_best_step(
    tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch
):
    """Under --num_train_epochs auto each trial is scored by its best evaluation (not its last), and best.yaml
    trains the best trial's settings for exactly as many steps as that trial took to its best evaluation."""
    import json

    from ftpeft.search.study import BEST_STEP_ATTR, SearchTrainer

    seen = []  # per trial: its evaluations (step, accuracy) and the objective the study got
    train = SearchTrainer.train

    def recording(self, *args, trial=None, **kwargs):
        result = train(self, *args, trial=trial, **kwargs)
        seen.append({"evaluations": list(self.evaluations), "objective": self.objective})
        return result

    monkeypatch.setattr(SearchTrainer, "train", recording)
    out = tmp_path / "run"
    argv = tiny_auto_args(tiny_bert_dir, text_csv_dir, out, "--hp_search", "2", "--seed", "3",
                          "--early_stopping_patience", "1", "--auto_max_epochs", "4")  # fmt: skip
    metrics = bert_cls.main(argv)
    assert len(seen) == 2
    for trial in seen:
        assert trial["objective"] == max(value for _, value in trial["evaluations"])
        assert len(trial["evaluations"]) <= 4  # at most the cap: 4 epochs, one evaluation each
    best_yaml = yaml.safe_load((out / "best.yaml").read_text())
    best = metrics["hp_search"]["best_trial"]
    best_step = next(step for step, value in seen[best]["evaluations"] if value == seen[best]["objective"])
    assert best_yaml["max_steps"] == best_step and best_yaml["lr_scheduler_type"] == "constant_with_warmup"
    state = json.loads((out / "resolved_settings.json").read_text())
    assert state["num_train_epochs"]["used"] == f"{best_step} steps"  # --max_steps wins over auto: a fixed run
    assert BEST_STEP_ATTR == "best_step"


@pytest.mark.slow
def test_a_preempted_search_continues_with_the_trials_it_had_left_and_chooses_the_same_best_trial(
    tiny_bert_dir, text_csv_dir, tmp_path, trial_records, monkeypatch, restore_signals
):
    """SIGTERM during trial 2 of 4: exit 75, OUTPUT_DIR/.preempted, no final run; the same command with
    --resume_from_checkpoint auto runs trials 2 and 3 only (0 and 1 come from the journal), with the values and
    the best trial of an uninterrupted search."""
    import json
    import os
    import signal

    from ftpeft.core.outputs import SEARCH_JOURNAL_FILE
    from ftpeft.core.preemption import PREEMPTED_EXIT_CODE, PREEMPTED_FILE
    from ftpeft.search.study import SearchTrainer

    def search(out, *extra):
        return bert_cls.main(tiny_args(tiny_bert_dir, text_csv_dir, out, "--hp_search", "4", "--seed", "5", *extra))

    whole = search(tmp_path / "whole")
    uninterrupted = [(r["params"], r["lrs"]) for r in trial_records[:4]]
    trial_records.clear()

    create = SearchTrainer.create_optimizer  # the recording one: a signal as trial 2 starts training

    def signalling(self, model=None):
        if self._trial.number == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return create(self, model)

    monkeypatch.setattr(SearchTrainer, "create_optimizer", signalling)
    out = tmp_path / "preempted"
    with pytest.raises(SystemExit) as stopped:
        search(out)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # on its way out, as a stopped run
    restore_signals()
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    record = json.loads((out / PREEMPTED_FILE).read_text())
    assert (record["signal"], record["trials_done"], record["trials"]) == ("SIGTERM", 2, 4)
    assert record["resume_command"].endswith("--resume_from_checkpoint auto")
    assert {p.name for p in out.iterdir()} == {SEARCH_JOURNAL_FILE, PREEMPTED_FILE}  # no final run, no report
    with pytest.raises(FtpeftError, match="holds the trials of a search"):  # the same command, not continued
        search(out)

    monkeypatch.setattr(SearchTrainer, "create_optimizer", create)
    trial_records.clear()
    continued = search(out, "--resume_from_checkpoint", "auto")
    assert [(r["params"], r["lrs"]) for r in trial_records[:2]] == uninterrupted[2:]  # trials 2 and 3 only
    assert len(trial_records) == 2  # no other trial ran
    assert continued["hp_search"] == {**whole["hp_search"], "wall_s": continued["hp_search"]["wall_s"]}
    settings = {
        name: yaml.safe_load((folder / "best.yaml").read_text())
        for name, folder in (("a", out), ("b", tmp_path / "whole"))
    }
    assert {**settings["a"], "output_dir": None} == {**settings["b"], "output_dir": None}
    assert not (out / PREEMPTED_FILE).exists()


def test_max_time_ends_the_search_like_a_preemption(
    tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch, restore_signals
):
    """--max_time bounds the search too: once it has passed (here: the clock jumps as trial 1 starts), the search
    stops as on a signal, with reason max_time; trial 0 stays done in the journal."""
    import json
    import types

    import ftpeft.core.preemption
    from ftpeft.core.preemption import PREEMPTED_EXIT_CODE, PREEMPTED_FILE
    from ftpeft.search.study import SearchTrainer

    create, clock = SearchTrainer.create_optimizer, ftpeft.core.preemption.time

    def jumping(self, model=None):
        if self._trial.number == 1:
            later = types.SimpleNamespace(**{**vars(clock), "monotonic": lambda: clock.monotonic() + 7200})
            monkeypatch.setattr(ftpeft.core.preemption, "time", later)
        return create(self, model)

    monkeypatch.setattr(SearchTrainer, "create_optimizer", jumping)
    out = tmp_path / "capped"
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--hp_search", "3", "--max_time", "1h")
    with pytest.raises(SystemExit) as stopped:
        bert_cls.main(argv)
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    record = json.loads((out / PREEMPTED_FILE).read_text())
    assert (record["reason"], record["signal"], record["trials_done"]) == ("max_time", None, 1)
