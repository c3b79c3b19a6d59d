"""A ladder that survives preemption and requeue: a signal stops it with exit 75, and the same command with
``--resume_from_checkpoint auto`` continues it to the same rows and recommendation.

    with outer_flag(parse_signals(run_args.preemption_signals)) as flag:      # the whole ladder
        stops = LadderStops(flag, LadderProgress.load(...), output_dir, resume_command, is_main)
        stops.check("after the probe")                                        # a safe point: exit 75 if signalled
        with stops.rung_seed(folder):                                         # a rung's own stop stops the ladder
            result = run_one(modality, [*argv, *rung_start_flags(folder)])

- During a rung's training the rung stops itself at a checkpoint (``ftpeft.core.preemption``) and its exit 75 stops
  the ladder. Anywhere else (the probe, a rung's loading or final evaluation, between rungs) the ladder's flag, which
  also hears the signals a rung's own flag receives, stops the ladder at its next safe point: after the probe, before
  each rung seed. Either way the ladder writes ``LADDER/.preempted`` (the record a run writes, with ``rung`` and
  ``where``) and its last line says where it stopped and the command that continues it.
- The continuing ladder reads its manifest: finished rung seeds come from their JSON, the interrupted one resumes from
  its own last complete checkpoint, one stopped before its first checkpoint starts afresh.
- ``LADDER/ladder_progress.json`` keeps the seconds spent so far, which count against ``--time_budget`` (not under
  ``--time_budget auto``: a requeued job has its own time left), and the budget cap each open-ended rung seed started
  with, which its resumed run keeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from ftpeft.core.outputs import last_complete_checkpoint, write_json
from ftpeft.core.preemption import (
    PREEMPTED_EXIT_CODE,
    PREEMPTED_FILE,
    SignalFlag,
    Stop,
    agreed_signal,
    preemption_record,
)

logger = logging.getLogger("ftpeft")
PROGRESS_FILE = "ladder_progress.json"


@dataclasses.dataclass
class LadderProgress:
    """The ladder's clock across requeues: the seconds its earlier runs spent, the budget cap (optimizer steps) each
    open-ended rung seed started with, and the wall seconds of each rung seed's preempted tries (which its train
    seconds include once it finishes, so that a resumed rung does not look cheaper than it was), by folder name."""

    path: Path
    budget_seconds: float
    spent_before: float = 0.0
    caps: dict[str, int] = dataclasses.field(default_factory=dict)
    cut_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def load(cls, output_dir: Path, budget_seconds: float, carry_spent: bool = True) -> LadderProgress:
        """What earlier runs of this ladder left in ``output_dir`` (nothing for a new ladder); ``carry_spent=False``:
        their seconds do not count against this budget."""
        path = output_dir / PROGRESS_FILE
        saved = json.loads(path.read_text()) if path.is_file() else {}
        spent = saved.get("spent_seconds", 0.0) if carry_spent else 0.0
        return cls(path, budget_seconds, spent, saved.get("caps", {}), saved.get("cut_seconds", {}))

    @property
    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.started

    def seconds_left(self) -> float:
        return self.budget_seconds - self.spent

    def save(self) -> None:
        write_json(
            self.path, {"spent_seconds": round(self.spent, 3), "caps": self.caps, "cut_seconds": self.cut_seconds}
        )


def rung_start_flags(folder: Path) -> list[str]:
    """How a rung seed without a result starts: from its own last complete checkpoint (a preempted or killed try),
    else afresh, over whatever an earlier try left (a try stopped before its first checkpoint)."""
    if last_complete_checkpoint(folder) is not None:
        return ["--resume_from_checkpoint", "auto"]
    return ["--overwrite_output_dir"]


@dataclasses.dataclass
class LadderStops:
    """Where a preempted ladder stops: at a safe point once a signal came, or with the rung seed a signal stopped."""

    flag: SignalFlag  # the ladder's: ``outer_flag``
    progress: LadderProgress
    output_dir: Path
    resume_command: str  # the ladder's command with --resume_from_checkpoint auto
    is_main: bool

    def check(self, where: str) -> None:
        """A safe point: stop here (exit 75) when any rank received a preemption signal since the ladder started."""
        from accelerate import PartialState

        signum = agreed_signal(self.flag.received, PartialState().device)
        if signum:
            record = preemption_record(Stop(signum, 0), self.resume_command)
            self.leave({**record, "step": None, "rung": None}, where)  # no step: outside any rung's training

    @contextlib.contextmanager
    def rung_seed(self, folder: Path) -> Iterator[None]:
        """The block runs one rung seed in ``folder``: its preemption (exit 75, at a checkpoint when it had trained)
        stops the ladder too, with the rung's record, and its wall seconds count as that rung seed's."""
        started = time.perf_counter()
        try:
            yield
        except SystemExit as stopped:
            if stopped.code != PREEMPTED_EXIT_CODE:
                raise
            cut = self.progress.cut_seconds
            cut[folder.name] = round(cut.get(folder.name, 0.0) + time.perf_counter() - started, 3)
            rung_file = folder / PREEMPTED_FILE  # rank 0 wrote it before any rank left the rung
            record = json.loads(rung_file.read_text()) if self.is_main and rung_file.is_file() else {}
            where = f"in rung {folder.name} at step {record.get('step')}: " + (
                f"its checkpoint {record['checkpoint']} is saved, the rung resumes from it"
                if record.get("checkpoint")
                else "no checkpoint yet, the rung starts afresh"
            )
            self.leave({**record, "resume_command": self.resume_command, "rung": folder.name}, where)

    def leave(self, record: dict[str, Any], where: str) -> NoReturn:
        """Rank 0 writes LADDER/.preempted, the progress and the last line; every rank exits 75 (after rank 0 has
        written, where the ranks still share a process group: a launcher stops the others once one exits)."""
        import torch.distributed as dist
        from accelerate import PartialState

        self.flag.ignore()  # as a stopped run does: a launcher's next signal must not kill the way out
        if self.is_main:
            self.progress.save()
            write_json(self.output_dir / PREEMPTED_FILE, {**record, "where": where})
            logger.warning(
                "ladder preempted by %s %s; finished rung seeds are kept, %.0f s of the %.0f s budget spent; exit %d. "
                "Continue: the same command with --resume_from_checkpoint auto: %s",
                record.get("signal") or "the --max_time cap", where, self.progress.spent,
                self.progress.budget_seconds, PREEMPTED_EXIT_CODE, self.resume_command,
            )  # fmt: skip
        if dist.is_available() and dist.is_initialized():  # a rung's stop has left the group already
            PartialState().wait_for_everyone()
        raise SystemExit(PREEMPTED_EXIT_CODE)
