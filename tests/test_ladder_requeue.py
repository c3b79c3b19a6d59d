"""A ladder preempted and requeued (issue 26): "a ladder killed mid-rung, requeued -> same recommendation and rows as
an uninterrupted ladder".

One ladder (tiny BERT, rungs head_only and full, a checkpoint every 4 steps) is preempted by each signal of
``STOPS`` in turn, each time continued with --resume_from_checkpoint auto (what accelerate_configs/slurm/requeue.sh
adds), then requeued to its end. Signals come from this process at chosen points (``helpers.signal_at``).

| signal | the ladder |
|---|---|
| SIGTERM during the probe | finishes the probe, stops after it: exit 75, no rung run |
| SIGUSR1 while head_only evaluates its final model (its own flag has the signal) | head_only finishes, stops before full |
| SIGTERM after step 5 of full | full saves checkpoint-5 and exits 75, so does the ladder |
| none: the last requeue | full resumes from checkpoint-5; every row (validation and test scores, losses included) and |
|                        | the recommendation equal the uninterrupted ladder's; the spent seconds carried over          |
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import call_entry_point, load_recipe, signals_during_training
from safetensors.torch import save_file

from ftpeft.core.lifecycle import Run
from ftpeft.core.preemption import PREEMPTED_EXIT_CODE, PREEMPTED_FILE, SignalFlag, Stop, outer_flag, preemption_record
from ftpeft.ladder import run as ladder_run
from ftpeft.ladder.requeue import PROGRESS_FILE, LadderProgress, rung_start_flags

ladder = load_recipe("ladder")
RUNG_KEYS = ("name", "status", "val_accuracy", "val_macro_f1", "test_accuracy", "trainable_params", "val_scores",
             "test_scores")  # fmt: skip


def ladder_argv(model_dir, data_dir, out, *extra) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--train_file", str(data_dir / "train.csv"),
        "--validation_file", str(data_dir / "validation.csv"), "--test_file", str(data_dir / "test.csv"),
        "--output_dir", str(out), "--rungs", "head_only", "full", "--max_steps", "8", "--learning_rate", "5e-3",
        "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "4",
        "--time_budget", "10m", *extra,
    ]  # fmt: skip


def rows(result: dict) -> list[dict]:
    return [{key: row.get(key) for key in RUNG_KEYS} for row in result["rungs"]]


def rung_scores(out: Path) -> dict[str, dict]:
    """Every rung seed's validation and test metrics, losses included (equal only for equal weights), not timings."""
    return {
        p.name: {k: v for k, v in json.loads(p.read_text())["scores"].items() if not k.endswith(("runtime", "second"))}
        for p in sorted((out / "rungs").glob("*.json"))
    }


def send(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


@contextlib.contextmanager
def during_the_probe(patch: pytest.MonkeyPatch):
    probe = ladder_run.run_probe

    def probe_with_signal(*args):
        send(signal.SIGTERM)
        return probe(*args)

    patch.setattr(ladder_run, "run_probe", probe_with_signal)
    yield


@contextlib.contextmanager
def while_head_only_evaluates(patch: pytest.MonkeyPatch):
    finish = Run.finish

    def finish_with_signal(self, *args, **kwargs):
        if self.output_dir.name == "head_only-seed42":
            send(signal.SIGUSR1)  # the rung's own flag handles it now: the ladder must hear it too
        return finish(self, *args, **kwargs)

    patch.setattr(Run, "finish", finish_with_signal)
    yield


def after_step_5_of_full(patch: pytest.MonkeyPatch):
    return signals_during_training([{"signal": "TERM", "at": "step_end", "step": 5}], run="full-seed42")


# (how the signal comes, its name, the record's rung and where, the rung seeds finished after the stop)
STOPS = [
    (during_the_probe, "SIGTERM", None, "after the probe", []),
    (while_head_only_evaluates, "SIGUSR1", None, "before rung full, seed 42", ["head_only-seed42.json"]),
    (after_step_5_of_full, "SIGTERM", "full-seed42", "in rung full-seed42 at step 5: its checkpoint",
     ["head_only-seed42.json"]),
]  # fmt: skip


@pytest.mark.slow
def test_a_preempted_ladder_requeued_ends_with_the_uninterrupted_rows_and_recommendation(
    tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch, caplog
):
    reference = ladder.main(ladder_argv(tiny_bert_dir, text_csv_dir, tmp_path / "reference"))
    assert [row["status"] for row in reference["rungs"]] == ["done", "done"]

    out = tmp_path / "ladder"
    argv = ladder_argv(tiny_bert_dir, text_csv_dir, out)
    spent = 0.0
    for stop_number, (signal_comes, name, rung, where, finished) in enumerate(STOPS):
        caplog.clear()
        requeued = ["--resume_from_checkpoint", "auto"] if stop_number else []
        with pytest.MonkeyPatch.context() as patch, signal_comes(patch):
            outcome = call_entry_point(ladder.main, [*argv, *requeued])
        assert outcome.code == PREEMPTED_EXIT_CODE, outcome.stderr[-3000:]
        record = json.loads((out / PREEMPTED_FILE).read_text())
        assert set(preemption_record(Stop(signal.SIGTERM, 0), "")) | {"rung", "where"} == set(record)
        assert (record["signal"], record["rung"]) == (name, rung) and record["where"].startswith(where)
        assert record["resume_command"].endswith("--resume_from_checkpoint auto")
        # a preemption is never a failed row: the finished rung seeds only, each done
        results = sorted((out / "rungs").glob("*.json")) if (out / "rungs").is_dir() else []
        assert [p.name for p in results] == finished
        assert all(json.loads(p.read_text())["status"] == "done" for p in results)
        last_line = [r.getMessage() for r in caplog.records if r.name == "ftpeft"][-1]
        assert last_line.startswith(f"ladder preempted by {name} {where}") and last_line.endswith(
            record["resume_command"]
        )
        now_spent = json.loads((out / PROGRESS_FILE).read_text())["spent_seconds"]
        assert now_spent > spent  # each run's seconds add up: they count against --time_budget
        spent = now_spent
    assert record["checkpoint"] == str((out / "rungs" / "full-seed42" / "checkpoint-5").resolve())
    cut = json.loads((out / PROGRESS_FILE).read_text())["cut_seconds"]
    assert list(cut) == ["full-seed42"] and cut["full-seed42"] > 0  # the preempted try's wall seconds

    resumed_from = {}
    train = Run.train

    def train_noting_resume(self, trainer):
        resumed_from[self.output_dir.name] = self.resume_from
        return train(self, trainer)

    monkeypatch.setattr(Run, "train", train_noting_resume)
    final = call_entry_point(ladder.main, [*argv, "--resume_from_checkpoint", "auto"])
    assert final.code == 0, final.stderr[-3000:]
    assert resumed_from == {"full-seed42": record["checkpoint"]}  # head_only came from its JSON, full went on
    assert rows(final.result) == rows(reference) and final.result["recommended"] == reference["recommended"]
    assert rung_scores(out) == rung_scores(tmp_path / "reference")
    assert final.result["wall_seconds"] >= spent
    # the resumed rung's train seconds include its preempted try's: it does not look cheaper than it was
    full = json.loads((out / "rungs" / "full-seed42.json").read_text())
    assert full["train_seconds"] > cut["full-seed42"]
    assert json.loads((out / PROGRESS_FILE).read_text())["cut_seconds"] == {}
    assert not (out / PREEMPTED_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the ladder gave the signals back


# --- the parts, fast ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "continuing",
    [["--resume_from_checkpoint", "auto"], ["--resume-from-checkpoint", "auto"], ["--resume_from_checkpoint=auto"]],
)
def test_the_manifest_and_the_rungs_ignore_the_requeues_resume_flag(continuing):
    argv = ["--train_file", "t.csv", "--max_steps", "8", "--time_budget", "10m", "--output_dir", "out"]
    base_argv, manifest = ladder_run.ladder_manifest("text", argv)
    assert ladder_run.ladder_manifest("text", [*argv, *continuing]) == (base_argv, manifest)
    assert base_argv == ["--train_file", "t.csv", "--max_steps", "8"]


def test_a_ladder_refuses_a_checkpoint_path_to_resume_from(tmp_path):
    outcome = call_entry_point(ladder.main, ["--train_file", "t.csv", "--output_dir", str(tmp_path),
                                             "--resume_from_checkpoint", str(tmp_path / "checkpoint-4")])  # fmt: skip
    assert outcome.code == 2 and "a ladder takes only auto" in outcome.stderr


def write_checkpoint(folder: Path, complete: bool) -> None:
    folder.mkdir(parents=True)
    save_file({"weight": torch.zeros(2)}, folder / "model.safetensors")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))


@pytest.mark.parametrize(
    ("left", "flags"),
    [
        ({}, ["--overwrite_output_dir"]),  # never started
        ({"run_args.yaml": "", PREEMPTED_FILE: "{}"}, ["--overwrite_output_dir"]),  # stopped before its first save
        ({"model.safetensors": "", "metrics.json": "{}"}, ["--overwrite_output_dir"]),  # done, killed before its JSON
        ({"checkpoint-4": False}, ["--overwrite_output_dir"]),  # killed in its first save
        ({"checkpoint-4": True, PREEMPTED_FILE: "{}"}, ["--resume_from_checkpoint", "auto"]),  # preempted after it
    ],
    ids=["no-folder", "pre-training-files", "finished-without-checkpoint", "incomplete-checkpoint", "checkpoint"],
)
def test_an_unfinished_rung_seed_resumes_from_its_checkpoint_or_starts_afresh(tmp_path, left, flags):
    folder = tmp_path / "full-seed42"
    for name, content in left.items():
        if isinstance(content, bool):
            write_checkpoint(folder / name, content)
        else:
            folder.mkdir(exist_ok=True)
            (folder / name).write_text(content)
    assert rung_start_flags(folder) == flags


def test_the_seconds_spent_before_a_requeue_count_against_the_budget(tmp_path):
    before = LadderProgress(tmp_path / PROGRESS_FILE, 600.0, spent_before=100.0, caps={"full-seed42": 12})
    before.save()
    again = LadderProgress.load(tmp_path, 600.0)
    assert again.spent_before >= 100.0 and again.seconds_left() <= 500.0 and again.caps == {"full-seed42": 12}
    fresh_job = LadderProgress.load(tmp_path, 600.0, carry_spent=False)  # --time_budget auto: this job's time left
    assert fresh_job.seconds_left() > 599.0


def test_a_run_inside_the_ladder_passes_its_signals_on_and_gives_them_back():
    with outer_flag((signal.SIGUSR1,)) as ladder_flag:
        rung = SignalFlag((signal.SIGUSR1,))
        rung.install()
        send(signal.SIGUSR1)
        assert rung.received == ladder_flag.received == signal.SIGUSR1
        rung.restore()
        assert signal.getsignal(signal.SIGUSR1) == ladder_flag._record  # the rung gives it back to the ladder
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
