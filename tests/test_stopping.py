"""--num_train_epochs auto: the plan (cadence, cap, direction), its refusals, and real runs that stop on validation,
keep the best checkpoint and resume with their patience counter."""

import json

import pytest
from helpers import load_recipe, tiny_auto_args

from ftpeft.core.stopping import unpack_rows

bert_cls = load_recipe("bert_cls")


def parsed(*argv: str):
    from transformers import TrainingArguments

    from ftpeft.core.config import RunArguments, parse_args

    return parse_args((RunArguments, TrainingArguments), ["--output_dir", "/tmp/unused", *argv])


@pytest.mark.parametrize(
    "epoch_steps, expected",
    [(1, 1), (3, 2), (16, 8), (49, 25), (50, 25), (74, 37), (75, 25), (113, 29), (1000, 250)],
)
def test_evaluation_cadence_follows_the_epoch_length(epoch_steps, expected):
    from ftpeft.core.stopping import evaluation_steps

    assert evaluation_steps(epoch_steps) == expected


@pytest.mark.parametrize(
    "argv, rows, expect, validation_rows",
    [
        # rows 640 / batch 8 -> 80 steps per epoch, 3 evaluations per epoch
        (
            [],
            640,
            {
                "eval_steps": 27,
                "max_steps": 1600,
                "metric": "accuracy",
                "greater": True,
                "sched": "constant_with_warmup",
            },
            0,
        ),
        (["--metric_for_best_model", "loss"], 640, {"metric": "loss", "greater": False}, 0),
        (["--metric_for_best_model", "eval_macro_f1"], 640, {"metric": "macro_f1", "greater": True}, 0),
        (["--auto_max_epochs", "2"], 640, {"max_steps": 160}, 0),
        (["--auto_max_steps", "100"], 640, {"max_steps": 100}, 0),
        (["--eval_strategy", "steps", "--eval_steps", "10"], 640, {"eval_steps": 10}, 0),
        (["--eval_strategy", "epoch"], 640, {"eval_steps": 80}, 0),
        (["--lr_scheduler_type", "linear"], 640, {"sched": "linear"}, 0),
        (["--gradient_accumulation_steps", "2"], 640, {"eval_steps": 20, "patience": 2}, 0),  # 40 steps per epoch
        # an epoch of under 50 steps: evaluated twice, with a patience of 2 evaluations unless one is given
        ([], 200, {"eval_steps": 13, "patience": 2}, 0),
        (["--early_stopping_patience", "3"], 200, {"eval_steps": 13, "patience": 3}, 0),
        (["--eval_strategy", "epoch"], 200, {"eval_steps": 25, "patience": 2}, 0),
        ([], 400, {"eval_steps": 25, "patience": 3}, 0),  # 50 steps
        (["--early_stopping_patience", "1"], 640, {"patience": 1}, 0),
        ([], 640, {"keep": "annealed"}, 0),
        # under 200 validation rows the patience doubles, unless one is given
        ([], 200, {"patience": 4}, 50),
        ([], 640, {"patience": 6}, 199),
        ([], 640, {"patience": 3}, 200),
        (["--early_stopping_patience", "3"], 200, {"patience": 3}, 50),
        (["--auto_keep", "best"], 640, {"keep": "best"}, 0),
    ],
)
def test_auto_resolves_cadence_cap_metric_and_schedule(argv, rows, expect, validation_rows):
    from ftpeft.core.settings import resolve_settings
    from ftpeft.core.stopping import auto_epoch_changes, plan_auto_epochs

    run_args, training_args = parsed(
        "--num_train_epochs", "auto", "--per_device_train_batch_size", "8", "--warmup_steps", "0.1", *argv
    )
    plan = plan_auto_epochs(training_args, run_args, rows, validation_rows)
    resolve_settings(training_args, auto_epoch_changes(training_args, run_args, plan))
    checks = {
        "eval_steps": training_args.eval_steps,
        "max_steps": training_args.max_steps,
        "metric": training_args.metric_for_best_model,
        "greater": training_args.greater_is_better,
        "sched": training_args.lr_scheduler_type.value,
        "patience": plan.patience,
        "keep": plan.keep,
    }
    assert {key: checks[key] for key in expect} == expect
    assert training_args.load_best_model_at_end and training_args.restore_callback_states_from_checkpoint
    assert training_args.save_steps == training_args.eval_steps  # a checkpoint at each evaluation
    assert training_args.warmup_steps == pytest.approx(max(1, -(-0.1 * plan.epoch_steps // 1)))  # 0.1 of one epoch


@pytest.mark.parametrize(
    "argv, auto",
    [
        (["--num_train_epochs", "auto"], True),
        (["--num_train_epochs", "AUTO"], True),
        (["--num_train_epochs", "3"], False),
        (["--num_train_epochs", "auto", "--max_steps", "5"], False),  # an explicit --max_steps wins
    ],
)
def test_only_auto_without_max_steps_plans_stopping(argv, auto):
    from ftpeft.core.stopping import plan_auto_epochs

    run_args, training_args = parsed(*argv)
    assert (plan_auto_epochs(training_args, run_args, 100) is not None) is auto
    assert training_args.num_train_epochs == (20.0 if "auto" in str(argv).lower() else 3.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_train_epochs", "auto", "--eval_strategy", "no"], "--num_train_epochs auto needs evaluations"),
        (["--num_train_epochs", "auto", "--metric_for_best_model", "bleu"], "--metric_for_best_model 'bleu': unknown"),
    ],
)
def test_refusals_name_the_flag(argv, message):
    from ftpeft.core.errors import FtpeftError
    from ftpeft.core.stopping import plan_auto_epochs

    with pytest.raises(FtpeftError, match=message):
        run_args, training_args = parsed(*argv)
        plan_auto_epochs(training_args, run_args, 100)


def test_num_train_epochs_refuses_other_words():
    from ftpeft.core.errors import FtpeftError

    with pytest.raises(FtpeftError, match="--num_train_epochs.*expected a number of epochs or 'auto', got 'many'"):
        parsed("--num_train_epochs", "many")


def test_the_registry_gives_each_metric_its_direction():
    from ftpeft.core.metrics import METRICS, metric_spec

    lower_is_better = {name for name, spec in METRICS.items() if not spec.greater_is_better}
    assert lower_is_better == {"loss", "hamming_loss", "rmse", "mae"}
    assert {name for name, spec in METRICS.items() if spec.needs_threshold} == {
        "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss"
    }  # fmt: skip
    assert metric_spec("eval_f1_pos").greater_is_better
    assert not metric_spec("eval_rmse_score").greater_is_better and metric_spec("spearman_tone").greater_is_better


def auto_argv(tiny_bert_dir, text_csv_dir, out, *extra):
    return tiny_auto_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "all", "--learning_rate", "3e-3",
                          "--head_lr", "3e-3", "--layer_decay", "1", "--seed", "3", *extra)  # fmt: skip


def test_an_auto_run_stops_on_validation_and_keeps_the_best_evaluation(tiny_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "run"
    metrics = bert_cls.main(
        auto_argv(tiny_bert_dir, text_csv_dir, out, "--early_stopping_patience", "2", "--auto_max_epochs", "12",
                  "--auto_cooldown", "0")
    )  # fmt: skip
    settings = json.loads((out / "resolved_settings.json").read_text())
    record = settings["stopping"]["used"]
    assert record["stopped_step"] <= 96 and record["best_step"] <= record["stopped_step"]
    if record["converged"]:  # stopped on patience: exactly 2 evaluations after the best
        assert record["stopped_step"] - record["best_step"] == 2 * record["plan"]["eval_steps"]
    assert settings["num_train_epochs"]["given"] == "auto"
    assert settings["num_train_epochs"]["used"] == record["best_epoch"]
    # the saved model is the best evaluation's: its validation accuracy is the best one seen
    assert metrics["eval_accuracy"] == pytest.approx(record["best_metric"])
    assert metrics["train_best_epoch"] == record["best_epoch"]


def test_an_auto_run_resumes_with_its_patience_counter_and_best_score(tiny_bert_dir, text_csv_dir, tmp_path):
    """Stopped after its 3rd checkpoint (step 12, evaluations every 4 steps) and resumed, an auto run ends exactly
    where the uninterrupted one does."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    extra = ("--early_stopping_patience", "2", "--auto_max_epochs", "6", "--save_total_limit", "10")
    reference = bert_cls.main(auto_argv(tiny_bert_dir, text_csv_dir, whole, *extra))
    bert_cls.main(auto_argv(tiny_bert_dir, text_csv_dir, part, *extra, "--auto_max_steps", "12"))
    # the capped run left checkpoint-12; resume it under the uncapped settings
    resumed = bert_cls.main(
        auto_argv(tiny_bert_dir, text_csv_dir, part, *extra, "--resume_from_checkpoint", str(part / "checkpoint-12"),
                  "--overwrite_output_dir")
    )  # fmt: skip
    stop = lambda out: json.loads((out / "resolved_settings.json").read_text())["stopping"]["used"]
    assert {k: stop(part)[k] for k in ("stopped_step", "best_step", "best_metric")} == {
        k: stop(whole)[k] for k in ("stopped_step", "best_step", "best_metric")
    }
    assert resumed["eval_accuracy"] == pytest.approx(reference["eval_accuracy"])
    assert resumed["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cpu_ddp.yaml", "fsdp_cpu.yaml"])
def test_an_auto_run_on_two_cpu_ranks_stops_on_every_rank_at_the_same_step(
    tiny_bert_dir, text_csv_dir, tmp_path, config
):
    """DDP and FSDP2: both ranks read the same gathered validation scores, so they stop together, and the saved
    model is the best evaluation's (its validation accuracy is the best one recorded)."""
    from helpers import ROOT, accelerate_bin, run

    out = tmp_path / "run"
    argv = auto_argv(tiny_bert_dir, text_csv_dir, out, "--early_stopping_patience", "1", "--auto_max_epochs", "4")
    launch = [accelerate_bin(), "launch", "--config_file", str(ROOT / "accelerate_configs" / config)]
    result = run([*launch, str(ROOT / "recipes" / "bert_cls.py"), *argv])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "resolved_settings.json").read_text())["stopping"]["used"]
    assert record["plan"]["epoch_steps"] == 4  # 64 rows, 2 ranks x batch 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_accuracy"] == pytest.approx(record["best_metric"])
    assert result.stdout.count("stopped at step") + result.stderr.count("stopped at step") >= 1


@pytest.mark.parametrize(
    "warmup, start, length, expected",
    [
        (4, None, 0, {0: 0.0, 2: 0.5, 4: 1.0, 100: 1.0}),  # warm-up, then constant
        (0, 20, 10, {19: 1.0, 20: 1.0, 25: 0.5, 30: 0.0, 40: 0.0}),  # the cooldown's linear fall to 0
    ],
)
def test_the_lr_multiplier_warms_up_holds_then_cools_down(warmup, start, length, expected):
    from ftpeft.core.stopping import PlateauStopping

    stopper = PlateauStopping(patience=2, cooldown=0.2, eval_steps=5)
    stopper._warmup, stopper.cooldown_start, stopper.cooldown_steps = warmup, start, length
    assert {step: stopper.multiplier(step) for step in expected} == pytest.approx(expected)


def test_after_the_plateau_the_lr_anneals_to_zero_and_the_run_stops_at_the_end(tiny_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "run"
    bert_cls.main(
        auto_argv(tiny_bert_dir, text_csv_dir, out, "--early_stopping_patience", "1", "--auto_max_epochs", "12",
                  "--auto_cooldown", "0.5", "--logging_steps", "1", "--eval_strategy", "epoch")
    )  # fmt: skip
    record = json.loads((out / "resolved_settings.json").read_text())["stopping"]["used"]
    start = record["cooldown_start"]
    assert record["converged"] and start is not None
    # half the steps run so far, in whole evaluation intervals of 8 steps (one epoch)
    assert record["stopped_step"] - start == max(1, -(-start * 0.5 // 8)) * 8
    logged = json.loads((out / f"checkpoint-{record['stopped_step']}" / "trainer_state.json").read_text())
    rates = {entry["step"]: entry["learning_rate"] for entry in logged["log_history"] if "learning_rate" in entry}
    # the checkpoint carries the best evaluation's rows (the paired test after a resume): they score its accuracy
    best_rows = unpack_rows(logged["stateful_callbacks"]["PlateauStopping"]["attributes"]["best_rows"])
    assert best_rows.mean() == pytest.approx(logged["best_metric"])
    top = rates[start]  # the constant LR the plateau was reached at, then a linear fall to 0
    assert rates[record["stopped_step"]] < 0.2 * top and all(
        rates[step] >= rates[step + 1] for step in range(start, record["stopped_step"])
    )
    assert "annealed to 0" in record["reason"]


def test_a_run_resumed_from_its_last_checkpoint_stops_at_once(tiny_bert_dir, text_csv_dir, tmp_path):
    """Resumed from the checkpoint where the cooldown ended, the run takes one step at LR 0 (Trainer's loop checks the
    stop after a step), not another evaluation interval, and keeps the same saved model."""
    out = tmp_path / "run"
    extra = ("--early_stopping_patience", "1", "--auto_max_epochs", "12", "--auto_cooldown", "0.5")
    first = bert_cls.main(auto_argv(tiny_bert_dir, text_csv_dir, out, *extra))
    record = json.loads((out / "resolved_settings.json").read_text())["stopping"]["used"]
    last = out / f"checkpoint-{record['stopped_step']}"
    again = bert_cls.main(
        auto_argv(tiny_bert_dir, text_csv_dir, out, *extra, "--resume_from_checkpoint", str(last),
                  "--overwrite_output_dir")
    )  # fmt: skip
    resumed = json.loads((out / "resolved_settings.json").read_text())["stopping"]["used"]
    assert resumed["stopped_step"] == record["stopped_step"] + 1 and resumed["best_step"] == record["best_step"]
    assert again["eval_accuracy"] == pytest.approx(first["eval_accuracy"])


@pytest.mark.parametrize(
    "best, end, rows, keeps_end",
    [
        (0.94, 0.92, 50, True),  # 2 points below on 50 rows: within one standard error (3.4 points)
        (0.94, 0.90, 400, False),  # 4 points below on 400 rows: the earlier best is really better
        (0.90, 0.90, 400, True),  # a tie: Trainer would keep the earlier one; the annealed end is kept
        (0.90, 0.95, 400, False),  # better: Trainer's own choice is the end anyway
    ],
)
def test_the_end_of_the_cooldown_is_kept_when_validation_cannot_tell_it_from_the_best(best, end, rows, keeps_end):
    from types import SimpleNamespace

    from ftpeft.core.stopping import PlateauStopping

    stopper = PlateauStopping(patience=1, cooldown=0.2, eval_steps=5, metric="accuracy", validation_rows=rows)
    state = SimpleNamespace(best_metric=best, best_global_step=10, global_step=30)
    stopper._prefer_annealed(end, state)
    assert (stopper.annealed_choice is not None) == keeps_end
    assert (state.best_metric is None) == keeps_end  # then Trainer makes this evaluation the best


@pytest.mark.parametrize(
    "keep, end, saved_step",
    [
        ("annealed", 0.92, 30),  # the default: within one standard error on 50 rows, the end of the cooldown
        ("best", 0.92, 10),  # the best evaluation, as load_best_model_at_end keeps it
        ("best", 0.96, 30),  # better: the end is the best under either rule
        ("annealed", 0.96, 30),
    ],
)
def test_auto_keep_chooses_the_saved_model_at_the_end_of_the_cooldown(keep, end, saved_step):
    from types import SimpleNamespace

    from transformers import TrainerControl

    from ftpeft.core.stopping import PlateauStopping

    stopper = PlateauStopping(patience=1, cooldown=0.2, eval_steps=5, metric="accuracy", validation_rows=50, keep=keep)
    stopper.cooldown_start, stopper.cooldown_steps = 25, 5
    state = SimpleNamespace(best_metric=0.94, best_global_step=10, global_step=30)
    control = TrainerControl()
    stopper.on_evaluate(SimpleNamespace(metric_for_best_model="accuracy"), state, control, {"eval_accuracy": end})
    assert control.should_training_stop
    # Trainer's own check after on_evaluate: a None best, or a better value, makes this step the best
    trainer_takes_end = state.best_metric is None or end > state.best_metric
    assert (30 if trainer_takes_end else state.best_global_step) == saved_step


def rows_of(right: int, total: int, first: int = 0):
    """Per-row correctness: ``right`` rows right, starting at row ``first`` (wrapping), of ``total``."""
    import numpy as np

    correct = np.zeros(total, dtype=bool)
    correct[(first + np.arange(right)) % total] = True
    return correct


@pytest.mark.parametrize(
    "best_right, end_right, shift, keeps_end",
    [
        # 500 rows, the best 6 rows (1.2 points) ahead. Binomial error of either score: 2.0 points.
        (350, 344, 0, False),  # they disagree on 6 rows only: paired error 0.5 points, the best is really better
        (350, 344, 23, True),  # on 40 rows (23 against 17): paired error 1.3 points, within it
        (350, 350, 0, True),  # the same rows: a tie, the annealed end
        (350, 350, 25, True),  # equal scores, different rows: a tie
    ],
)
def test_the_annealed_end_and_the_best_are_compared_on_the_rows_where_they_disagree(
    best_right, end_right, shift, keeps_end
):
    from types import SimpleNamespace

    import numpy as np
    from transformers import EvalPrediction, TrainerControl

    from ftpeft.core.stopping import PlateauStopping, rows_correct

    stopper = PlateauStopping(patience=1, cooldown=0.2, eval_steps=5, metric="accuracy", validation_rows=500)
    labels = np.zeros(500, dtype=np.int64)
    args, state = SimpleNamespace(metric_for_best_model="accuracy"), SimpleNamespace(best_metric=None, global_step=10)
    for step, right in ((10, best_right), (30, end_right)):  # the best, then the end of the cooldown
        logits = np.stack([rows_of(right, 500, shift if step == 30 else 0), np.full(500, 0.5)], axis=1)
        stopper.rows_correct = rows_correct(EvalPrediction(predictions=logits, label_ids=labels))  # showing_rows
        state.global_step = step
        stopper.on_evaluate(args, state, TrainerControl(), {"eval_accuracy": right / 500})
        if step == 10:
            state.best_metric, state.best_global_step = right / 500, step  # Trainer's own check
            stopper.cooldown_start, stopper.cooldown_steps = 25, 5
    assert stopper.stopped and (stopper.annealed_choice is not None) == keeps_end
    if keeps_end:
        assert stopper.annealed_choice["test"] == "paired"
    else:
        assert state.best_metric == best_right / 500  # the earlier best stays the saved model


@pytest.mark.parametrize(
    "first, second, expected",  # (rows right, from row), of 100
    [
        ((10, 0), (10, 0), 0.0),  # the same rows right: no difference to measure
        ((10, 0), (4, 0), (6 - 36 / 100) ** 0.5 / 100),  # 6 rows only the first gets right
        ((10, 0), (10, 5), (10 - 0 / 100) ** 0.5 / 100),  # 5 each way: McNemar's 10 discordant rows
    ],
)
def test_paired_standard_error_counts_only_the_rows_where_two_models_disagree(first, second, expected):
    from ftpeft.core.metrics import paired_standard_error

    assert paired_standard_error(rows_of(first[0], 100, first[1]), rows_of(second[0], 100, second[1])) == pytest.approx(
        expected
    )


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 500])
def test_the_best_evaluations_rows_survive_the_checkpoint_as_json(rows):
    from ftpeft.core.stopping import pack_rows

    correct = rows_of(rows // 2 + 1, rows, 3)
    assert (unpack_rows(json.loads(json.dumps(pack_rows(correct)))) == correct).all()


@pytest.mark.parametrize(
    "rows, metric, warns",
    [
        (50, "eval_accuracy", True),  # one row is 2 points
        (199, "eval_macro_f1", True),
        (200, "eval_accuracy", False),
        (0, "eval_accuracy", False),  # unknown
        (50, "loss", False),  # not a share of rows
    ],
)
def test_a_small_validation_split_is_named_in_one_line(rows, metric, warns):
    from ftpeft.core.stopping import plan_auto_epochs, small_validation_warning

    run_args, training_args = parsed("--num_train_epochs", "auto", "--metric_for_best_model", metric)
    warning = small_validation_warning(plan_auto_epochs(training_args, run_args, 640, validation_rows=rows))
    assert (warning is not None) == warns
    if warns:
        assert f"validation has {rows} rows" in warning and "--validation_file" in warning and "\n" not in warning
