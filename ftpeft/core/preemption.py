"""Preemption: a signal (SLURM's time limit, a spot instance's notice) stops training at a complete checkpoint; the run
exits 75 and ``--resume_from_checkpoint auto`` continues it to the same end as an uninterrupted run.

    guard = PreemptionGuard.start(run_args.preemption_signals, resume_command)   # start_run: handlers set a flag
    result = guard.train(trainer, resume_from, output_dir)                        # Run.train: trainer.train, or exit 75

How a stop goes:

- The handler of each ``--preemption_signals`` signal (default TERM, USR1) records the first one and does nothing
  else; a second signal changes nothing, so it cannot cut a save short.
- ``PreemptionCallback`` reads the flag after every optimizer step and every ``PREDICTION_STEPS_PER_CHECK``
  evaluation batches, and the ranks agree with an all-reduce (max): every rank stops at the same step.
- After a step it cancels that step's evaluation and lets Trainer save checkpoint-N (``should_save``,
  ``should_training_stop``). During an evaluation it abandons the evaluation and saves checkpoint-N with the RNG state
  from before it. Either way the checkpoint notes the evaluation it skipped (``CHECKPOINT_NOTE``, written inside the
  save, before its seal: ``ftpeft.core.checkpoints``) and the resumed run runs it first, at step N: the best score,
  the early-stopping patience (both in trainer_state.json) and the RNG then go on as in an uninterrupted run; the
  checkpoint saved again after that evaluation replaces the old one only once it is sealed.
- Rank 0 writes ``OUTPUT_DIR/.preempted`` (JSON: step, checkpoint, signal, resume command), the file a requeue script
  reads because launchers eat exit codes; every rank exits ``PREEMPTED_EXIT_CODE``; the log's last line says where
  the run stopped and how to resume it. The run never reaches ``Run.finish``: no final save, test, card or push.
- ``--max_time`` (a wall-time cap, from ``start_run``) goes through this same path: once the cap has passed, the flag
  reads as set (``MAX_TIME_STOP``) where it is checked, and the all-reduce makes every rank stop at the same step
  even though each looks at its own clock. ``.preempted`` says ``"reason": "max_time"`` (``"signal": null``); a
  resumed run gets the cap anew, counted from its own start.
- A process that starts runs one after another (the ladder's rungs) holds the signals in ``outer_flag`` for its whole
  life: each run's flag passes on what it receives and gives the signals back when the run ends, and the process
  stops at its own safe points (``ftpeft.ladder.requeue``).
- transformers' ``--enable_jit_checkpoint`` goes through this same path: its own callback is removed, because it
  decides on one rank's signal alone, saves from inside a step, and then lets ``train()`` return as if training had
  finished (ftpeft would go on to save, score test and push).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from ftpeft.core.errors import FtpeftError
from ftpeft.core.outputs import CHECKPOINT_PREFIX, write_json

logger = logging.getLogger("ftpeft")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): stopped at a checkpoint, run it again to continue
PREEMPTED_FILE = ".preempted"  # OUTPUT_DIR/.preempted: where the run stopped and how to resume it
CHECKPOINT_NOTE = "ftpeft_preemption.json"  # in a checkpoint a preemption saved: the evaluation it skipped
DEFAULT_SIGNALS = "TERM,USR1"
PREDICTION_STEPS_PER_CHECK = 4  # evaluation batches between two looks at the flag (one small all-reduce each)
MAX_TIME_STOP = 256  # the flag once --max_time has passed: no signal has this number (signals stop below 65)
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


def parse_signals(text: str) -> tuple[signal.Signals, ...]:
    """``--preemption_signals``: comma-separated names (TERM, SIGUSR1, ...), or 'none' for no handling."""
    names = [part.strip().upper() for part in str(text).split(",") if part.strip()]
    if names == ["NONE"]:
        return ()
    parsed = []
    for name in names or [""]:
        found = getattr(signal, "SIG" + name.removeprefix("SIG"), None) if name else None
        if not isinstance(found, signal.Signals) or found in _UNCATCHABLE:
            raise FtpeftError(
                f"--preemption_signals {text!r}: {name or 'nothing'} is not a signal a run can catch; give names "
                "such as TERM,USR1, or none."
            )
        if found not in parsed:
            parsed.append(found)
    return tuple(parsed)


def resume_argv(argv: list[str]) -> list[str]:
    """``argv`` with ``--resume_from_checkpoint auto`` in place of any value it had: the command that continues."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in ("--resume_from_checkpoint", "--resume-from-checkpoint"):
            skip = True
        elif not token.startswith(("--resume_from_checkpoint=", "--resume-from-checkpoint=")):
            kept.append(token)
    return [*kept, "--resume_from_checkpoint", "auto"]


# the handlers the process had before any run installed its own (restored when a run ends)
_ORIGINAL_HANDLERS: dict[signal.Signals, Any] = {}


class SignalFlag:
    """The first preemption signal received (0: none yet), or ``MAX_TIME_STOP`` once the ``max_time_s`` cap, counted
    from the flag's creation, has passed. The signals' handler only records them."""

    def __init__(self, signals: tuple[signal.Signals, ...], max_time_s: float | None = None):
        self.signals = signals
        self.received = 0
        self.leaving = False  # stopped: the signals are ignored until the process exits
        self.deadline = None if max_time_s is None else time.monotonic() + max_time_s

    def _record(self, signum, frame) -> None:
        if not self.received:  # a second signal (the launcher's forward, a repeated scancel) changes nothing
            self.received = signum
        for outer in _OUTER_FLAGS:  # a run inside another (a ladder's rung): the outer one hears it too
            outer.received = outer.received or signum

    def current(self) -> int:
        """The stop this rank asks for now: the first signal, else ``MAX_TIME_STOP`` once the cap passed, else 0."""
        if not self.received and self.deadline is not None and time.monotonic() >= self.deadline:
            self.received = MAX_TIME_STOP
        return self.received

    def install(self) -> bool:
        """Handle the signals (main thread only; returns whether it could)."""
        try:
            for sig in self.signals:
                previous = signal.signal(sig, self._record)
                _ORIGINAL_HANDLERS.setdefault(sig, previous)
        except ValueError:  # not the main thread
            logger.warning("--preemption_signals: not handled (training runs outside the main thread)")
            return False
        return True

    def ignore(self) -> None:
        """A stopped run on its way out ignores the signals to the end: once a rank has exited, a launcher signals
        the others, and Python gives its handlers back to the default action (death) while it shuts down."""
        try:
            for sig in self.signals:
                signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread: it never handled them either
            return
        self.leaving = True

    def restore(self) -> None:
        """Give the signals back to the handlers the process had before (not on the way out: see ``ignore``)."""
        if self.leaving:
            return
        for sig in self.signals:
            if sig in _ORIGINAL_HANDLERS and signal.getsignal(sig) == self._record:
                signal.signal(sig, _ORIGINAL_HANDLERS.pop(sig))


def agreed_signal(local: int, device) -> int:
    """The signal any rank received (0: none), the same on every rank: an all-reduce (max) when torch.distributed
    runs, so that all ranks stop at the same step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return local
    value = torch.tensor([local], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def rng_snapshot() -> dict[str, Any]:
    """The RNG states Trainer saves with a checkpoint (python, numpy, torch CPU and CUDA)."""
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.random.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.random.set_rng_state_all(state["cuda"])


@dataclasses.dataclass
class Stop:
    """Where the ranks agreed to stop: the signal, the optimizer step, whether that step's evaluation is still owed,
    and the checkpoint to resume from (None: none yet, the run starts afresh)."""

    signum: int
    step: int
    evaluation_pending: bool = False
    checkpoint: str | None = None

    @property
    def reason(self) -> str:
        return "max_time" if self.signum == MAX_TIME_STOP else "signal"

    @property
    def signal_name(self) -> str | None:
        return None if self.signum == MAX_TIME_STOP else signal.Signals(self.signum).name


class Preempted(BaseException):
    """Raised through Trainer once the stop's checkpoint is saved (a BaseException: no ``except Exception`` on the way,
    a ladder rung's included, may take it for a failure)."""

    def __init__(self, stop: Stop):
        super().__init__(f"preempted at step {stop.step}")
        self.stop = stop


class NothingLeftToTrain(BaseException):
    """A resumed run is already at its end (the cap, or early stopping after the evaluation it owed)."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def read_note(checkpoint: str | None) -> dict[str, Any] | None:
    """The preemption note of a checkpoint (None: a checkpoint saved on schedule)."""
    if not checkpoint:
        return None
    try:
        return json.loads((Path(checkpoint) / CHECKPOINT_NOTE).read_text())
    except (OSError, ValueError):
        return None


def evaluated_at(state, step: int) -> bool:
    return any(entry.get("step") == step and any(k.startswith("eval_") for k in entry) for entry in state.log_history)


class PreemptionCallback(TrainerCallback):
    """Stops training at a checkpoint once the ranks agree a preemption signal (or the --max_time cap) came (see the
    module docstring)."""

    def __init__(self, trainer, flag: SignalFlag, resume_from: str | None):
        self.trainer = trainer
        self.flag = flag
        self.resume_from = resume_from
        self.stop: Stop | None = None
        self.watching = False  # inside training (and the owed evaluation): evaluations are ours to cut short
        self.rerunning = False  # the owed evaluation of a resumed run
        self.rng_before_evaluation: dict[str, Any] | None = None
        self.prediction_steps = 0
        self.note: dict[str, Any] | None = None  # what the checkpoint of note["step"] says about its evaluation
        trainer.checkpoint_writers.append(self._write_note)  # inside the save, before the seal vouches for it

    def _agreed(self, args) -> int:
        return agreed_signal(self.flag.current(), args.device)

    def _note(self, step: int, pending: bool) -> None:
        """The note the checkpoint of ``step`` gets when it is saved (``_write_note``)."""
        self.note = {"step": step, "evaluation_pending": pending}

    def _write_note(self, folder: Path) -> None:
        if self.note is not None and self.note["step"] == self.trainer.state.global_step:
            write_json(folder / CHECKPOINT_NOTE, self.note)

    def on_train_begin(self, args, state, control, **kwargs):
        self.watching = True
        signum = self._agreed(args)
        if signum:  # before the first step (during loading): nothing new to save
            raise Preempted(Stop(signum, state.global_step, checkpoint=self.resume_from))
        note = read_note(self.resume_from)
        if note is None:
            return
        if note.get("evaluation_pending") and not evaluated_at(state, state.global_step):
            self._rerun_evaluation(args, state)
        if control.should_training_stop or state.global_step >= state.max_steps:
            raise NothingLeftToTrain()

    def _rerun_evaluation(self, args, state) -> None:
        """The evaluation a preemption skipped at this step, from the RNG state it would have started from, then the
        checkpoint again (as the uninterrupted run saved it after evaluating)."""
        trainer = self.trainer
        trainer._load_rng_state(self.resume_from)
        self.rerunning = True
        metrics = trainer._evaluate(None, None)
        trainer._determine_best_metric(metrics=metrics, trial=None)
        self.rerunning = False
        self._note(state.global_step, pending=False)
        trainer._save_checkpoint(trainer.model_wrapped, trial=None)  # the old one is set aside until this is sealed
        logger.info("resumed: ran the evaluation of step %d that the preemption skipped", state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.prediction_steps = 0
        if control.should_evaluate:
            self.rng_before_evaluation = rng_snapshot()
        signum = self._agreed(args)
        if not signum:
            return
        # this step's evaluation is owed to the resumed run; the save waits for on_epoch_end, which Trainer calls on
        # the way out and which may add the evaluation due at an epoch's end
        self.stop = Stop(signum, state.global_step, evaluation_pending=control.should_evaluate)
        control.should_evaluate = False
        control.should_save = False
        control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stop is None:
            if control.should_evaluate:
                self.rng_before_evaluation = rng_snapshot()
            return
        if float(state.epoch).is_integer():  # the real end of an epoch: its evaluation is owed too
            self.stop.evaluation_pending = self.stop.evaluation_pending or control.should_evaluate
        else:  # a cut epoch: no epoch-end logging either
            control.should_log = False
        control.should_evaluate = False
        control.should_save = True
        self._note(state.global_step, self.stop.evaluation_pending)

    def on_save(self, args, state, control, **kwargs):
        if self.stop is not None:
            self.stop.checkpoint = str(checkpoint_dir(args.output_dir, state.global_step))
            raise Preempted(self.stop)

    def on_evaluate(self, args, state, control, **kwargs):
        self.prediction_steps = 0

    def on_prediction_step(self, args, state, control, **kwargs):
        if not self.watching:  # the final evaluation and test, after training: they run to the end
            return
        self.prediction_steps += 1
        if self.prediction_steps % PREDICTION_STEPS_PER_CHECK:
            return
        signum = self._agreed(args)
        if not signum:
            return
        if self.rerunning:  # the owed evaluation, cut short again: its checkpoint is still the one to resume from
            raise Preempted(Stop(signum, state.global_step, True, self.resume_from))
        if self.rng_before_evaluation is not None:
            restore_rng(self.rng_before_evaluation)  # the resumed run starts this evaluation from the same state
        self._note(state.global_step, pending=True)
        self.trainer._save_checkpoint(self.trainer.model_wrapped, trial=None)
        raise Preempted(Stop(signum, state.global_step, True, str(checkpoint_dir(args.output_dir, state.global_step))))


def drop_jit_checkpoint(trainer) -> bool:
    """Remove transformers' JITCheckpointCallback (``--enable_jit_checkpoint``) and give SIGTERM back to the handler it
    replaced; ftpeft's own path stops the run instead. Returns whether there was one."""
    dropped = False
    for callback in list(trainer.callback_handler.callbacks):
        if type(callback).__name__ == "JITCheckpointCallback":
            manager = getattr(callback, "jit_manager", None)
            previous = getattr(manager, "_original_sigterm_handler", None)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            trainer.remove_callback(callback)
            dropped = True
    return dropped


def preemption_record(stop: Stop, resume_command: str) -> dict[str, Any]:
    """What ``OUTPUT_DIR/.preempted`` holds: where the run stopped and the command that continues it."""
    return {
        "reason": stop.reason,  # "signal", or "max_time": the cap came
        "signal": stop.signal_name,  # None when the cap came
        "step": stop.step,
        "checkpoint": str(Path(stop.checkpoint).resolve()) if stop.checkpoint else None,
        "evaluation_pending": stop.evaluation_pending,
        "exit_code": PREEMPTED_EXIT_CODE,
        "resume_command": resume_command,
        "host": socket.gethostname(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def stop_line(record: dict[str, Any]) -> str:
    """The last line of a preempted run: where it stopped and the command that continues it."""
    capped = record.get("reason") == "max_time"
    where = (
        f"checkpoint {record['checkpoint']} saved"
        if record["checkpoint"]
        else "no checkpoint yet (the rerun starts afresh)"
    )
    return (
        f"preempted by {'the --max_time cap' if capped else record['signal']} at step {record['step']}: {where}; "
        f"exit {record['exit_code']}. Resume: the same launch with --resume_from_checkpoint auto"
        f"{' (it gets its own --max_time)' if capped else ''}: {record['resume_command']}"
    )


@dataclasses.dataclass
class PreemptionGuard:
    """A run's preemption handling: the signal flag (and the --max_time cap), from ``start_run`` on, and the training
    call."""

    flag: SignalFlag
    resume_command: str

    @classmethod
    def start(
        cls, signals: str, resume_command: str, jit_checkpoint: bool = False, max_time_s: float | None = None
    ) -> PreemptionGuard:
        """Handle ``signals`` (``--preemption_signals``) from now on, and stop ``max_time_s`` seconds from now
        (``--max_time``; None: no cap). ``jit_checkpoint`` (transformers' ``--enable_jit_checkpoint``, a save on
        SIGTERM) is refused where ``signals`` leave SIGTERM out."""
        parsed = parse_signals(signals)
        if jit_checkpoint and signal.SIGTERM not in parsed:
            raise FtpeftError(
                f"--enable_jit_checkpoint asks for a checkpoint on SIGTERM, which --preemption_signals {signals} "
                "leaves out; add TERM (ftpeft then saves on it, every rank at the same step) or drop "
                "--enable_jit_checkpoint."
            )
        flag = SignalFlag(parsed, max_time_s)
        flag.install()
        return cls(flag, resume_command)

    def train(self, trainer, resume_from: str | None, output_dir: Path):
        """``trainer.train``, stopping at a checkpoint on a preemption signal or the cap (then SystemExit(75))."""
        if drop_jit_checkpoint(trainer):
            logger.info("--enable_jit_checkpoint: SIGTERM stops the run through ftpeft's preemption path")
        if not self.flag.signals and self.flag.deadline is None:
            return trainer.train(resume_from_checkpoint=resume_from)
        self.flag.install()  # again: a Trainer built since start_run may have taken a signal (the JIT callback)
        trainer.add_callback(PreemptionCallback(trainer, self.flag, resume_from))
        try:
            return trainer.train(resume_from_checkpoint=resume_from)
        except NothingLeftToTrain:
            return trainer._finalize_training(None, 0, time.time())  # no step in this call: no samples to count
        except Preempted as preempted:
            self.exit(trainer, preempted.stop, output_dir)

    def exit(self, trainer, stop: Stop, output_dir: Path) -> None:
        """Every rank: wait for the checkpoint, rank 0 writes OUTPUT_DIR/.preempted and the last line; exit 75."""
        trainer.accelerator.wait_for_everyone()
        self.flag.ignore()
        record = preemption_record(stop, self.resume_command)
        if trainer.is_world_process_zero():
            write_json(Path(output_dir) / PREEMPTED_FILE, record)
            logger.warning("%s", stop_line(record))  # before any rank exits: a launcher then stops the others
        trainer.accelerator.wait_for_everyone()
        _leave_process_group()
        raise SystemExit(PREEMPTED_EXIT_CODE)

    def restore(self) -> None:
        self.flag.restore()


def _leave_process_group() -> None:
    """Leave torch.distributed before exiting, so that nothing it prints at exit comes after the last line."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def clear_preempted(output_dir: str | Path) -> None:
    """A run that starts (or resumes) in ``output_dir`` removes the previous preemption's marker: a requeue reads it."""
    (Path(output_dir) / PREEMPTED_FILE).unlink(missing_ok=True)


# the flags of processes that start runs of their own one after another (the ladder): ``outer_flag``
_OUTER_FLAGS: list[SignalFlag] = []


@contextlib.contextmanager
def outer_flag(signals: tuple[signal.Signals, ...]) -> Iterator[SignalFlag]:
    """For the block, a flag for a process that starts runs one after another (the ladder's rungs): it handles
    ``signals`` between the runs, every run gives the signals back to it when it ends, and it also hears those a
    run's own flag receives (a signal during a rung's final evaluation stops the ladder before its next rung). The
    process reads it at its own safe points; afterwards the signals go back to what handled them before."""
    flag = SignalFlag(signals)
    if not flag.install():
        yield flag
        return
    before = {sig: _ORIGINAL_HANDLERS[sig] for sig in signals}  # recorded by install: the process's own
    _ORIGINAL_HANDLERS.update({sig: flag._record for sig in signals})  # what each run restores when it ends
    _OUTER_FLAGS.append(flag)
    try:
        yield flag
    finally:
        _OUTER_FLAGS.remove(flag)
        _ORIGINAL_HANDLERS.update(before)
        if not flag.leaving:  # on the way out (stopped) the signals stay ignored, as a stopped run leaves them
            for sig in signals:
                signal.signal(sig, _ORIGINAL_HANDLERS.pop(sig))
