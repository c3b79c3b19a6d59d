"""Runs that survive the cluster (issue 26): preemption signals, requeue, a lost rank, one writer per output dir.
(Sealed checkpoints and full disks: test_checkpoints.py.)

The fault table, each row run for real; signals at chosen points come from ``helpers.signal_at``, a test-only callback.
"Same end": the final (best) model, the last checkpoint's weights and trainer state (every evaluation, the best score,
the early-stopping counter), the stopping record and the validation/test metrics exactly equal an uninterrupted run's.

| fault | expected |
|---|---|
| SIGTERM after step 44 (1 process, in this one) | exit 75, checkpoint-44; resumed: the same end |
| SIGUSR1 during the evaluation at step 40 | abandoned, checkpoint-40 owes it; resumed: it runs first, the same end |
| SIGTERM at an evaluation's step (40); SIGUSR1 in the last evaluation | the same (the rerun ends at that evaluation) |
| SIGTERM twice, the second during the save | the same |
| SIGUSR1 before the first step | exit 75, no checkpoint; ``auto`` starts afresh: the same end |
| ``--enable_jit_checkpoint`` + SIGTERM | ftpeft's path: exit 75, no final save, test, card or push; the same end |
| ``--max_time 1.5s`` (a sleep at step 8: it passes there at the latest) | exit 75 at a checkpoint, reason max_time; |
|                                                                         | resumed: the same end                     |
| ``python`` recipe: a second run on its dir; SIGTERM from outside | refused in one line; exit 75, the log's last line |
|                                                                  | says how to resume; the same end                  |
| ``accelerate launch``, 1 process: SIGTERM to the launcher | forwarded; the rank saves within the launcher's 5 s |
| ``accelerate launch``, 2 ranks: SIGUSR1 to rank 1 alone in an evaluation, | every rank stops at the same step     |
| then to the launcher (it forwards it under PET_SIGNALS_TO_HANDLE)         | (all-reduce) both times; the same end |
| ``accelerate launch``, 2 ranks: rank 1 SIGKILLed in the save of | the launch exits non-zero within 120 s; the checkpoint |
| checkpoint-S (S seeded), after rank 0's trainer_state.json      | stays unsealed, auto resumes from S-8: the same end     |
| ``accelerate launch``, 2 ranks: rank 1 frozen (SIGSTOP) | the launch exits non-zero after --ddp_timeout (+ the launcher's 30 s) |
| a lock held by a live run; a stale lock | refused in one line, the dir untouched; taken over |
| the sbatch templates under stand-in srun/scancel/scontrol | requeued exactly once, only when stopped at a checkpoint |
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import (
    ROOT,
    accelerate_bin,
    assert_same_end,
    call_entry_point,
    load_recipe,
    signals_during_training,
    snapshot,
    subprocess_env,
    tiny_args,
    tiny_auto_args,
)

from ftpeft.core import lock as lock_module
from ftpeft.core.config import RANK_TIMEOUT_S, apply_rank_timeout, launch_defaults
from ftpeft.core.errors import FtpeftError
from ftpeft.core.lifecycle import PRE_TRAINING_FILES, Run
from ftpeft.core.lock import LOCK_FILE, OutputLock, read_holder
from ftpeft.core.outputs import SEAL_FILE, checkpoint_problem, resolve_resume
from ftpeft.core.preemption import CHECKPOINT_NOTE, PREEMPTED_EXIT_CODE, PREEMPTED_FILE, parse_signals, resume_argv

bert_cls = load_recipe("bert_cls")

# evaluations every 8 steps (one per epoch of 64 rows); the reference improves until step 32, its patience (2) runs out
# at step 48 and it stops there or after its cooldown; 8 evaluation batches of 2, so an evaluation is looked at after
# its 4th and 8th batch
STOPPING = ["--unfreeze-last", "all", "--learning_rate", "3e-3", "--head_lr", "3e-3", "--layer_decay", "1",
            "--seed", "3", "--early_stopping_patience", "2", "--eval_strategy", "epoch", "--auto_max_epochs", "8",
            "--per_device_eval_batch_size", "2", "--save_total_limit", "3"]  # fmt: skip
FINISHING_FILES = ("model.safetensors", "metrics.json", "README.md", "confusion_matrix.png")
WITH_SIGNALS = (
    "import helpers, json, sys; helpers.run_recipe_with_signals(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:])"
)


def auto_argv(model_dir, data_dir, out, *extra) -> list[str]:
    return tiny_auto_args(model_dir, data_dir, out, *STOPPING, *extra)


@pytest.fixture(scope="module")
def reference(tiny_bert_dir, text_csv_dir, tmp_path_factory):
    """The uninterrupted run, one process."""
    out = tmp_path_factory.mktemp("preemption") / "reference"
    outcome = call_entry_point(bert_cls.main, auto_argv(tiny_bert_dir, text_csv_dir, out))
    assert outcome.code == 0, outcome.stderr[-3000:]
    record = stop_record(out)
    assert record["converged"] and record["cooldown_start"] == 48  # patience ran out after the best at step 32
    # the saved model: step 32, or the annealed end of the cooldown where validation cannot tell them apart
    assert record["best_step"] in (32, record["stopped_step"]) and record["stopped_step"] % 8 == 0
    # a finished run lets go of its dir and of the signals
    assert not (out / LOCK_FILE).exists() and not (out / PREEMPTED_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    return out


def stop_record(out: Path) -> dict:
    return json.loads((out / "resolved_settings.json").read_text())["stopping"]["used"]


def last_checkpoint(out: Path) -> Path:
    return max(out.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))


def trained_state(out: Path) -> dict:
    """What must come out the same: the last checkpoint's trainer state (evaluations, best score, patience counter),
    and the stopping record."""
    state = json.loads((last_checkpoint(out) / "trainer_state.json").read_text())
    return {
        "checkpoint": last_checkpoint(out).name,
        "evaluations": [
            (entry["step"], entry["eval_accuracy"], entry["eval_loss"])
            for entry in state["log_history"]
            if "eval_loss" in entry
        ],
        "best": (state["best_metric"], state["best_global_step"]),
        "callbacks": state["stateful_callbacks"],  # the early-stopping counter among them
        "stop": {key: stop_record(out)[key] for key in ("stopped_step", "best_step", "best_metric", "converged")},
    }


def assert_same_run(reference: Path, resumed: Path) -> float:
    """The resumed run ends exactly where the uninterrupted one does, its last checkpoint's trainer state and weights
    included; returns the largest weight difference (0.0)."""
    assert trained_state(resumed) == trained_state(reference)
    return assert_same_end(
        reference, resumed, ("model.safetensors", f"{last_checkpoint(reference).name}/model.safetensors")
    )


def preempted(out: Path) -> dict:
    return json.loads((out / PREEMPTED_FILE).read_text())


# --- the fault table, one process, in this interpreter ---------------------------------------------------------------


def fault(name, signals, step, saved, owed, extra=(), slow=True):
    """A row: the signals, then where the run must stop (step, whether a checkpoint is saved, whether the checkpoint
    owes an evaluation) and extra flags."""
    return pytest.param(signals, extra, (step, saved, owed), id=name, marks=[pytest.mark.slow] if slow else [])


LAST = "the reference's last step"  # filled in from the reference run
TERM_AFTER_44 = [{"signal": "TERM", "at": "step_end", "step": 44}]
USR1_IN_EVAL_40 = [{"signal": "USR1", "at": "prediction", "step": 40, "batch": 2}]
TWICE = [*TERM_AFTER_44, {**TERM_AFTER_44[0], "at": "save"}]  # the second inside the save of checkpoint-44
FAULTS = [
    fault("sigterm-after-a-step", TERM_AFTER_44, 44, True, False, slow=False),
    fault("sigusr1-during-an-evaluation", USR1_IN_EVAL_40, 40, True, True, slow=False),
    fault("sigterm-at-an-evaluation-step", [{"signal": "TERM", "at": "step_end", "step": 40}], 40, True, True),
    fault("sigusr1-during-the-last-evaluation", [{**USR1_IN_EVAL_40[0], "step": LAST, "batch": 6}], LAST, True, True),
    fault("sigterm-twice-the-second-during-the-save", TWICE, 44, True, False),
    fault("sigusr1-before-the-first-step", [{"signal": "USR1", "at": "train_begin"}], 0, False, False),
    fault("enable-jit-checkpoint-and-sigterm", TERM_AFTER_44, 44, True, False, extra=("--enable_jit_checkpoint",)),
]


@pytest.mark.parametrize(("signals", "extra", "stop"), FAULTS)
def test_a_preempted_run_stops_at_a_checkpoint_and_resumes_to_the_same_end(
    reference, tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch, caplog, signals, extra, stop
):
    out = tmp_path / "run"
    last = stop_record(reference)["stopped_step"]
    signals = [{**entry, "step": last} if entry.get("step") == LAST else entry for entry in signals]
    stop = (last, *stop[1:]) if stop[0] == LAST else stop
    finishes = []
    finish = Run.finish
    monkeypatch.setattr(
        Run, "finish", lambda self, *args, **kwargs: finishes.append(1) or finish(self, *args, **kwargs)
    )
    with signals_during_training(signals):
        outcome = call_entry_point(bert_cls.main, auto_argv(tiny_bert_dir, text_csv_dir, out, *extra))
    assert outcome.code == PREEMPTED_EXIT_CODE, outcome.stderr[-3000:]
    step, saved, owed = stop
    record = preempted(out)
    assert (record["step"], record["signal"], record["evaluation_pending"]) == (
        step,
        f"SIG{signals[0]['signal']}",
        owed,
    )
    checkpoint = out / f"checkpoint-{step}"
    assert record["checkpoint"] == (str(checkpoint.resolve()) if saved else None)
    assert record["resume_command"].endswith("--resume_from_checkpoint auto")
    if saved:
        assert json.loads((checkpoint / CHECKPOINT_NOTE).read_text())["evaluation_pending"] is owed
        assert (checkpoint / "trainer_state.json").is_file()
    else:
        assert not list(out.glob("checkpoint-*"))
    # the run never reached its finishing steps: no final save, evaluation, test, card or push
    assert finishes == [] and not [name for name in FINISHING_FILES if (out / name).exists()]
    assert not (out / LOCK_FILE).exists()
    last_line = [r.getMessage() for r in caplog.records if r.name == "ftpeft"][-1]
    assert last_line.startswith(f"preempted by SIG{signals[0]['signal']} at step {step}: ") and "auto" in last_line

    resumed = call_entry_point(bert_cls.main, auto_argv(tiny_bert_dir, text_csv_dir, out, *extra,
                                                        "--resume_from_checkpoint", "auto"))  # fmt: skip
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert not (out / PREEMPTED_FILE).exists() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert assert_same_run(reference, out) == 0.0


def test_a_run_stopped_by_its_max_time_resumes_to_the_same_end(
    reference, tiny_bert_dir, text_csv_dir, tmp_path, caplog
):
    """--max_time 4s, counted from start_run; a 4 s sleep after step 8 makes it pass there at the latest (on a slow
    or busy machine earlier, but after step 1: a 1.5 s cap ran out during the setup beside a test run and a
    benchmark; where it stops varies, the end must not). No signal is sent; --preemption_signals none shows the cap
    does not need one. The resumed run gets its own 4 s: --max_time 10m lets it finish."""
    out = tmp_path / "run"
    capped = auto_argv(tiny_bert_dir, text_csv_dir, out, "--preemption_signals", "none", "--max_time", "4s")
    with signals_during_training([{"at": "step_end", "step": 8, "sleep": 4}]):
        outcome = call_entry_point(bert_cls.main, capped)
    assert outcome.code == PREEMPTED_EXIT_CODE, outcome.stderr[-3000:]
    record = preempted(out)
    assert (record["reason"], record["signal"]) == ("max_time", None) and 1 <= record["step"] <= 8
    assert record["checkpoint"] == str((out / f"checkpoint-{record['step']}").resolve())
    assert not [name for name in FINISHING_FILES if (out / name).exists()]
    last_line = [r.getMessage() for r in caplog.records if r.name == "ftpeft"][-1]
    assert last_line.startswith(f"preempted by the --max_time cap at step {record['step']}: checkpoint ")
    assert "auto (it gets its own --max_time): " in last_line and last_line.endswith("--resume_from_checkpoint auto")
    resumed = call_entry_point(bert_cls.main, auto_argv(tiny_bert_dir, text_csv_dir, out, "--max_time", "10m",
                                                        "--resume_from_checkpoint", "auto"))  # fmt: skip
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert not (out / PREEMPTED_FILE).exists()
    assert assert_same_run(reference, out) == 0.0


# --- through python and accelerate launch (separate processes) -------------------------------------------------------


def pause_at(step: int, tmp_path: Path, rank: int = 0) -> tuple[list[dict], Path, Path]:
    """A plan that holds training at ``step`` until the test creates the release file."""
    paused, release = tmp_path / "paused", tmp_path / "release"
    return (
        [{"at": "step_end", "step": step, "rank": rank, "pause_until": str(release), "paused": str(paused)}],
        paused,
        release,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"ended ({process.returncode}) before {path.name}"
        assert time.time() < deadline, f"no {path}"
        time.sleep(0.02)


def start(command: list[str], log: Path, **env) -> subprocess.Popen:
    pythonpath = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    return subprocess.Popen(command, cwd=ROOT, env=subprocess_env(PYTHONPATH=pythonpath, **env),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip


def with_signals(plan: list[dict], argv: list[str]) -> list[str]:
    return ["-c", WITH_SIGNALS, json.dumps(plan), "bert_cls", *argv]


@pytest.mark.slow
def test_python_recipe_refuses_a_second_writer_then_stops_on_sigterm(reference, tiny_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "run"
    plan, paused, release = pause_at(16, tmp_path)
    log = tmp_path / "run.log"
    process = start([sys.executable, *with_signals(plan, auto_argv(tiny_bert_dir, text_csv_dir, out))], log)
    wait_for(paused, process)
    lock_before = (out / LOCK_FILE).read_text()
    second = call_entry_point(bert_cls.main, auto_argv(tiny_bert_dir, text_csv_dir, out, "--overwrite_output_dir"))
    assert second.code == 2 and second.stderr.count("\n") == 1, second.stderr
    holder = read_holder(out / LOCK_FILE)
    assert f"is in use by another run (held by host {socket.gethostname()}, pid {process.pid}" in second.stderr
    assert holder.pid == process.pid and (out / LOCK_FILE).read_text() == lock_before  # the first run's lock stays
    process.send_signal(signal.SIGTERM)
    release.touch()
    assert process.wait(timeout=120) == PREEMPTED_EXIT_CODE, log.read_text()[-3000:]
    last = log.read_text().rstrip().splitlines()[-1]
    assert "WARNING ftpeft: preempted by SIGTERM at step 16: checkpoint " in last, last
    assert last.endswith("--resume_from_checkpoint auto") and "recipes/bert_cls.py" in last
    assert preempted(out)["step"] == 16 and not (out / LOCK_FILE).exists()
    resumed = call_entry_point(bert_cls.main, auto_argv(tiny_bert_dir, text_csv_dir, out, "--resume_from_checkpoint",
                                                        "auto"))  # fmt: skip
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert_same_run(reference, out)


@pytest.mark.slow
def test_accelerate_launch_of_one_process_forwards_sigterm_to_the_rank(
    reference, tiny_bert_dir, text_csv_dir, tmp_path
):
    """accelerate's one-process launcher sends its child SIGTERM and kills it 5 s later: the rank saves in time."""
    out = tmp_path / "run"
    plan, paused, release = pause_at(16, tmp_path)
    launch = [accelerate_bin(), "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu.yaml"),
              "--no_python", sys.executable]  # fmt: skip
    log = tmp_path / "launch.log"
    process = start([*launch, *with_signals(plan, auto_argv(tiny_bert_dir, text_csv_dir, out))], log)
    wait_for(paused, process)
    process.send_signal(signal.SIGTERM)  # to the launcher, not the rank
    release.touch()
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-3000:]  # the launcher's own code
    assert preempted(out)["step"] == 16 and preempted(out)["checkpoint"]
    resumed = call_entry_point(bert_cls.main, auto_argv(tiny_bert_dir, text_csv_dir, out, "--resume_from_checkpoint",
                                                        "auto"))  # fmt: skip
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert_same_run(reference, out)


CPU_DDP_LAUNCH = [accelerate_bin(), "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"),
                  "--no_python", sys.executable]  # fmt: skip


def launch_two_ranks(plan: list[dict], model_dir, data_dir, out: Path, log: Path, *extra, **env) -> subprocess.Popen:
    """``accelerate launch`` of bert_cls on 2 CPU ranks (gloo), batch 4 per rank, with ``plan``'s signals."""
    argv = auto_argv(model_dir, data_dir, out, "--per_device_train_batch_size", "4", *extra)
    return start([*CPU_DDP_LAUNCH, *with_signals(plan, argv)], log, **env)


def launched(plan: list[dict], model_dir, data_dir, out: Path, log: Path, *extra) -> tuple[int, str]:
    process = launch_two_ranks(plan, model_dir, data_dir, out, log, *extra)
    return process.wait(timeout=400), log.read_text()


@pytest.fixture(scope="module")
def two_rank_reference(tiny_bert_dir, text_csv_dir, tmp_path_factory):
    """The uninterrupted 2-rank run."""
    out = tmp_path_factory.mktemp("two_ranks") / "whole"
    code, log = launched([], tiny_bert_dir, text_csv_dir, out, out.parent / "whole.log")
    assert code == 0, log[-3000:]
    return out


@pytest.mark.slow
def test_two_ranks_stop_at_the_same_step_and_resume_to_the_same_end(
    two_rank_reference, tiny_bert_dir, text_csv_dir, tmp_path
):
    """2 CPU ranks (gloo): SIGUSR1 to rank 1 alone, during its evaluation at step 24; both ranks abandon it at the same
    batch (the all-reduce), save checkpoint-24 together, and the resumed run ends as an uninterrupted 2-rank run."""
    out = tmp_path / "run"
    usr1 = [{"signal": "USR1", "at": "prediction", "step": 24, "batch": 2, "rank": 1}]
    code, log = launched(usr1, tiny_bert_dir, text_csv_dir, out, tmp_path / "stopped.log")
    assert code == 1 and log.count("exitcode  : 75") == 2, log[-3000:]  # both ranks; the launcher turns 75 into 1
    assert (preempted(out)["step"], preempted(out)["evaluation_pending"]) == (24, True)
    assert {p.name for p in (out / "checkpoint-24").glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    code, log = launched([], tiny_bert_dir, text_csv_dir, out, tmp_path / "resumed.log", "--resume_from_checkpoint",
                         "auto")  # fmt: skip
    assert code == 0, log[-3000:]
    assert assert_same_run(two_rank_reference, out) == 0.0


LOST_RANK_BOUND_S = 120  # from the kill to the launcher's exit


@pytest.mark.slow
def test_a_rank_killed_while_saving_ends_the_launch_and_auto_resumes_from_the_last_sealed_checkpoint(
    two_rank_reference, tiny_bert_dir, text_csv_dir, tmp_path
):
    """Rank 1 is SIGKILLed inside the save of checkpoint-S (S drawn from a fixed seed): rank 0 has written its files
    and trainer_state.json, rank 1 not yet its RNG state. Rank 0, waiting for it, fails and the launcher ends within
    the bound; checkpoint-S stays unsealed (the structural checks alone would resume from it, without rank 1's RNG
    state), and ``auto`` resumes from checkpoint-(S-8) to the end of the uninterrupted run."""
    step = random.Random(26).choice([16, 24, 32, 40])
    out, paused, release = tmp_path / "run", tmp_path / "paused", tmp_path / "release"
    plan = [{"at": "save", "step": step, "rank": 1, "pause_until": str(release), "paused": str(paused)}]
    process = launch_two_ranks(plan, tiny_bert_dir, text_csv_dir, out, tmp_path / "killed.log")
    checkpoint = out / f"checkpoint-{step}"
    wait_for(paused, process)
    wait_for(checkpoint / "trainer_state.json", process)
    killed = time.monotonic()
    os.kill(int(paused.read_text()), signal.SIGKILL)
    code = process.wait(timeout=LOST_RANK_BOUND_S)
    print(f"lost rank: the launch exited {code} {time.monotonic() - killed:.1f} s after rank 1 was killed at {step}")
    assert code != 0 and not (out / PREEMPTED_FILE).exists()
    assert yaml.safe_load((out / "run_args.yaml").read_text())["ddp_timeout"] == RANK_TIMEOUT_S  # the launch default
    assert (checkpoint / "rng_state_0.pth").is_file() and not (checkpoint / "rng_state_1.pth").exists()
    assert "unsealed" in checkpoint_problem(checkpoint)
    unsealed = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, unsealed, ignore=shutil.ignore_patterns(SEAL_FILE))
    assert checkpoint_problem(unsealed) is None  # what the seal adds
    code, log = launched([], tiny_bert_dir, text_csv_dir, out, tmp_path / "resumed.log", "--resume_from_checkpoint",
                         "auto")  # fmt: skip
    assert code == 0, log[-3000:]
    assert f"skipping {checkpoint}: unsealed" in log
    assert assert_same_run(two_rank_reference, out) == 0.0


@pytest.mark.slow
def test_a_rank_that_stops_answering_ends_the_launch_after_the_process_group_timeout(
    tiny_bert_dir, text_csv_dir, tmp_path
):
    """Rank 1 frozen (SIGSTOP: a hung node, which no launcher sees die) after step 2: rank 0 waits in its next
    collective for --ddp_timeout (10 s here; ftpeft's launches default to RANK_TIMEOUT_S), then fails; the launcher
    stops rank 1 (SIGTERM, then SIGKILL after its 30 s grace) and exits non-zero."""
    out, paused, release = tmp_path / "run", tmp_path / "paused", tmp_path / "release"
    plan = [{"at": "step_end", "step": 2, "rank": 1, "pause_until": str(release), "paused": str(paused)}]
    process = launch_two_ranks(plan, tiny_bert_dir, text_csv_dir, out, tmp_path / "hung.log", "--ddp_timeout", "10")
    wait_for(paused, process)
    frozen = time.monotonic()
    rank = int(paused.read_text())
    os.kill(rank, signal.SIGSTOP)
    try:
        code = process.wait(timeout=LOST_RANK_BOUND_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rank, signal.SIGKILL)
    waited = time.monotonic() - frozen
    print(f"hung rank: the launch exited {code} {waited:.1f} s after rank 1 froze (--ddp_timeout 10)")
    log = (tmp_path / "hung.log").read_text()
    assert code != 0 and waited >= 10 and "Timed out" in log, log[-3000:]


FORWARD_PROBE = """
import os, pathlib, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
folder = pathlib.Path(sys.argv[1])
(folder / f"ready-{os.environ['RANK']}").write_text(str(os.getpid()))
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.01)
if got:
    time.sleep(1.0)  # a save that takes a while: the launcher must wait for it
    (folder / f"saved-{os.environ['RANK']}").touch()
sys.exit(75)
"""


@pytest.mark.slow
@pytest.mark.parametrize("forward", [True, False], ids=["PET_SIGNALS_TO_HANDLE-with-SIGUSR1", "torchrun-default"])
def test_a_two_rank_launcher_forwards_sigusr1_only_when_asked_to(tmp_path, forward):
    """How a signal reaches the ranks of ``accelerate launch --multi_gpu`` (torchrun's agent; its ranks run in their own
    sessions, so a signal to the launcher's process group misses them): told to handle SIGUSR1
    (PET_SIGNALS_TO_HANDLE, as the SLURM templates set it) the agent forwards it to every rank and waits for them
    (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default), then exits 128 + 10; by default SIGUSR1 kills it outright and
    the ranks never hear of it."""
    launch = [accelerate_bin(), "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"),
              "--no_python", sys.executable, "-c", FORWARD_PROBE, str(tmp_path)]  # fmt: skip
    env = {"PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"} if forward else {}
    process = start(launch, tmp_path / "launch.log", **env)
    ready = [tmp_path / f"ready-{rank}" for rank in (0, 1)]
    for path in ready:
        wait_for(path, process, timeout=120)
    process.send_signal(signal.SIGUSR1)
    code = process.wait(timeout=120)
    saved = sorted(p.name for p in tmp_path.glob("saved-*"))
    if forward:
        assert (code, saved) == (128 + signal.SIGUSR1, ["saved-0", "saved-1"]), (tmp_path / "launch.log").read_text()
        return
    assert code == -signal.SIGUSR1 and saved == []
    for path in ready:  # the orphaned ranks: this test's own processes
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(path.read_text()), signal.SIGKILL)


def test_launches_of_several_ranks_default_to_the_rank_timeout_and_the_flag_wins(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch_defaults({"ddp_timeout", "seed"}) == {}  # one process: no process group to time out
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch_defaults({"ddp_timeout", "seed"}) == {"ddp_timeout": RANK_TIMEOUT_S} and RANK_TIMEOUT_S == 600
    assert apply_rank_timeout(()) is None  # no TrainingArguments, or no process group: nothing to set


# --- flags, resume and the lock ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "signals"),
    [("TERM,USR1", (signal.SIGTERM, signal.SIGUSR1)), (" sigusr1 , term ", (signal.SIGUSR1, signal.SIGTERM)),
     ("none", ()), ("INT", (signal.SIGINT,)), ("KILL", None), ("TERM,NOPE", None), ("", None)],
)  # fmt: skip
def test_preemption_signals_parse_or_name_the_flag(text, signals):
    if signals is None:
        with pytest.raises(FtpeftError, match="--preemption_signals"):
            parse_signals(text)
    else:
        assert parse_signals(text) == signals


def test_bad_preemption_or_time_cap_flags_exit_2_in_one_line_before_any_work(
    tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    ladder = load_recipe("ladder")
    for main, extra, message in (
        (bert_cls.main, ["--preemption_signals", "STOP"], "error: --preemption_signals 'STOP': STOP is not a signal "),
        (bert_cls.main, ["--enable_jit_checkpoint", "--preemption_signals", "none"], "error: --enable_jit_checkpoint "),
        (bert_cls.main, ["--max_time", "0"], "error: --max_time '0': use a positive duration such as 90s, 20m or 1.5h"),
        (bert_cls.main, ["--max_time", "auto"], "error: --max_time auto: not inside a SLURM job (no SLURM_JOB_ID)"),
        (ladder.main, ["--time_budget", "auto"], "error: --time_budget auto: not inside a SLURM job (no SLURM_JOB_ID)"),
    ):
        outcome = call_entry_point(main, tiny_args(tiny_bert_dir, text_csv_dir, tmp_path / "out", *extra))
        assert outcome.code == 2 and outcome.stderr.startswith(message) and outcome.stderr.count("\n") == 1
        assert not (tmp_path / "out").exists()


def test_the_resume_command_replaces_any_resume_flag():
    assert resume_argv(["r.py", "--resume_from_checkpoint", "x", "--seed", "1"]) == [
        "r.py", "--seed", "1", "--resume_from_checkpoint", "auto"]  # fmt: skip
    assert resume_argv(["r.py", "--resume-from-checkpoint=x"]) == ["r.py", "--resume_from_checkpoint", "auto"]


@pytest.mark.parametrize(
    ("files", "starts_afresh"),
    [((), True), (sorted(PRE_TRAINING_FILES), True), ((".preempted", "run_args.yaml", LOCK_FILE), True),
     (("run_args.yaml", "notes.txt"), False), (("checkpoint-8",), False)],
)  # fmt: skip
def test_auto_starts_afresh_only_in_a_dir_of_pre_training_files(tmp_path, files, starts_afresh):
    """A run preempted before its first checkpoint leaves only what it wrote before training (and .preempted): the
    requeued run with --resume_from_checkpoint auto starts afresh, deleting nothing; anything else is refused."""
    for name in files:
        (tmp_path / name).write_text("{}")
    before = snapshot(tmp_path)
    if starts_afresh:
        assert resolve_resume("auto", tmp_path, PRE_TRAINING_FILES) is None
    else:
        with pytest.raises(FtpeftError, match="no complete checkpoint"):
            resolve_resume("auto", tmp_path, PRE_TRAINING_FILES)
    assert snapshot(tmp_path) == before


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def write_lock(directory: Path, host: str, pid: int, age_s: float, process_start: float | None = None) -> Path:
    path = directory / LOCK_FILE
    holder = {"host": host, "pid": pid, "started": "2026-01-01T00:00:00+00:00", "process_start": process_start}
    path.write_text(json.dumps(holder))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


LOCKS = [  # holder, heartbeat age (s), taken over
    ("another host, heartbeat 5 s ago", "gpu-elsewhere", "pid", 5, False),
    ("another host, heartbeat stopped 2 min ago", "gpu-elsewhere", "pid", 120, True),
    ("this host, a dead pid", "here", "dead", 5, True),
    ("this host, a live pid (even with an old heartbeat: a stopped process)", "here", "live", 120, False),
    ("this host, the pid now of another process", "here", "reused", 5, True),
    ("this process: an earlier in-process run that did not let go", "here", "self", 5, True),
]


@pytest.mark.parametrize(("host", "who", "age", "taken"), [case[1:] for case in LOCKS], ids=[case[0] for case in LOCKS])
def test_a_live_lock_is_refused_and_a_stale_one_taken_over(tmp_path, live_process, host, who, age, taken):
    from ftpeft.core.lock import process_start_time

    host = socket.gethostname() if host == "here" else host
    pid = {"pid": 4242, "dead": dead_pid(), "live": live_process.pid, "reused": live_process.pid, "self": os.getpid()}[
        who
    ]
    start = {"live": process_start_time(live_process.pid), "reused": 1.0}.get(who)
    path = write_lock(tmp_path, host, pid, age, start)
    before = (path.read_text(), path.stat().st_mtime)
    if not taken:
        with pytest.raises(FtpeftError, match=r"is in use by another run \(held by host ") as refused:
            OutputLock.acquire(tmp_path)
        assert "\n" not in str(refused.value)
        assert (path.read_text(), path.stat().st_mtime) == before
        return
    lock = OutputLock.acquire(tmp_path)
    assert read_holder(path).pid == os.getpid() and read_holder(path).host == socket.gethostname()
    lock.release()
    assert not path.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_the_heartbeat_keeps_the_lock_fresh_and_release_removes_only_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    lock = OutputLock.acquire(tmp_path)
    path = tmp_path / LOCK_FILE
    os.utime(path, (time.time() - 300, time.time() - 300))
    deadline = time.time() + 10
    while time.time() - path.stat().st_mtime > 60:
        assert time.time() < deadline, "no heartbeat"
        time.sleep(0.02)
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")  # a run elsewhere is refused while it beats
    with pytest.raises(FtpeftError, match="in use by another run"):
        OutputLock.acquire(tmp_path)
    monkeypatch.undo()
    path.unlink()  # taken over by someone else: release leaves the new holder's lock alone
    write_lock(tmp_path, "gpu-elsewhere", 7, 0)
    lock.release()
    assert read_holder(path).host == "gpu-elsewhere"


def test_a_recipe_refuses_a_held_dir_in_one_line_and_takes_over_a_stale_lock(
    tiny_bert_dir, text_csv_dir, tmp_path, live_process
):
    from ftpeft.core.lock import process_start_time

    out = tmp_path / "out"
    out.mkdir()
    write_lock(out, socket.gethostname(), live_process.pid, 0, process_start_time(live_process.pid))
    before = snapshot(out)
    held = call_entry_point(bert_cls.main, tiny_args(tiny_bert_dir, text_csv_dir, out, "--overwrite_output_dir"))
    assert held.code == 2 and held.stderr.count("\n") == 1 and "is in use by another run" in held.stderr
    assert snapshot(out) == before
    write_lock(out, "gpu-elsewhere", 4242, 120)  # a requeued job's old lock, on another host
    taken = call_entry_point(bert_cls.main, tiny_args(tiny_bert_dir, text_csv_dir, out))
    assert taken.code == 0, taken.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and not (out / LOCK_FILE).exists()


# --- the SLURM templates: requeue, under stand-in srun / scancel / scontrol / accelerate ------------------------------

SBATCH = sorted((ROOT / "accelerate_configs" / "slurm").glob("*.sbatch"))
PARALLEL_SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done  # srun's own options
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
FAKE_ACCELERATE = """#!{python}
# a node's launcher and its ranks: FAKE_RUN says how the run ends
import os, pathlib, signal, sys, time
open(os.environ["LAUNCH_LOG"], "a").write(" ".join(sys.argv[1:]) + "\\n")
mode = os.environ["FAKE_RUN"]
if mode != "preempted":
    sys.exit({{"finished": 0, "crashed": 1, "exit75": 75}}[mode])
stopped = []
signal.signal(signal.SIGUSR1, lambda *_: stopped.append(1))  # the ranks handle USR1 (their bash ignores it)
with open(os.environ["RANK_PIDS"], "a") as pids:
    pids.write(f"{{os.getpid()}}\\n")
deadline = time.time() + 30
while not stopped and time.time() < deadline:
    time.sleep(0.01)
pathlib.Path(sys.argv[sys.argv.index("--output_dir") + 1], ".preempted").write_text("{{}}")
sys.exit(1)  # accelerate's launcher turns the ranks' 75 into 1
"""
FAKE_SCANCEL = """#!/bin/bash
echo "scancel $*" >> "$SLURM_LOG"
while read -r pid; do kill -USR1 "$pid"; done < "$RANK_PIDS"
"""
FAKE_SCONTROL = """#!/bin/bash
if [ "$1" = show ]; then printf "gpu07\\ngpu08\\n"; else echo "scontrol $*" >> "$SLURM_LOG"; fi
"""
REQUEUE = [  # how the run ends, requeued rerun, expected exit, expected scancel/scontrol calls
    ("finished", False, 0, []),
    ("crashed", False, 1, []),
    ("preempted", False, 1, ["scancel --signal=USR1 4242", "scontrol requeue 4242"]),
    ("exit75", False, 75, ["scontrol requeue 4242"]),
    ("finished", True, 0, []),
]


@pytest.mark.parametrize("template", SBATCH, ids=lambda p: p.stem)
@pytest.mark.parametrize(("run", "rerun", "code", "calls"), REQUEUE, ids=[f"{r[0]}{'-rerun' * r[1]}" for r in REQUEUE])
def test_sbatch_template_requeues_once_only_when_the_run_stopped_at_a_checkpoint(
    template, run, rerun, code, calls, tmp_path
):
    text = template.read_text()
    assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"srun": PARALLEL_SRUN, "accelerate": FAKE_ACCELERATE.format(python=sys.executable),
             "scancel": FAKE_SCANCEL, "scontrol": FAKE_SCONTROL}  # fmt: skip
    for name, body in fakes.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    out, pids, slurm_log, launches = tmp_path / "out", tmp_path / "pids", tmp_path / "slurm.log", tmp_path / "launches"
    out.mkdir()
    pids.touch()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
           "SLURM_JOB_ID": "4242", "FAKE_RUN": run, "RANK_PIDS": str(pids), "SLURM_LOG": str(slurm_log),
           "LAUNCH_LOG": str(launches), **({"SLURM_RESTART_COUNT": "1"} if rerun else {})}  # fmt: skip
    job = subprocess.Popen(["bash", str(template), "--unfreeze-last", "2", "--output_dir", str(out)], cwd=ROOT, env=env)
    if run == "preempted":  # what `#SBATCH --signal=B:USR1@300` does: USR1 to the batch shell alone, while srun runs
        deadline = time.time() + 20
        while len(pids.read_text().split()) < 2:
            assert job.poll() is None and time.time() < deadline
            time.sleep(0.01)
        job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=20) == code
    assert (slurm_log.read_text().splitlines() if slurm_log.exists() else []) == calls
    resume = "--resume_from_checkpoint auto"
    assert all(
        line.endswith(f"--output_dir {out}{' ' + resume if rerun else ''}")
        for line in launches.read_text().splitlines()
    )
