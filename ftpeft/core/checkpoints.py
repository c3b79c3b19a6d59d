"""Checkpoints that prove they are whole across ranks, and a rotation that never leaves nothing to resume from.

    FtpeftTrainer._save_checkpoint(model, trial)   # -> save_sealed(trainer, trial, trainer_save, writers)

A save of checkpoint-N goes:

1. The saving rank (rank 0; each node's first with --save_on_each_node) opens the seal: ``ftpeft_checkpoint.json``
   reads ``{"sealed": false}``. A complete checkpoint already at checkpoint-N (the step a resumed run saves again
   once it has run the evaluation a preemption owed) is first moved aside to ``.checkpoint-N.replaced``; the remains
   of an earlier save that never finished are removed. Every rank then waits: no rank writes before the folder is
   fresh.
2. Trainer's save: weights, optimizer, scheduler, each rank's RNG state, trainer_state.json. Its rotation is held back.
3. ftpeft's own files for the checkpoint (``writers``: a knowledge model's keys, the preemption note).
4. A barrier: every rank's files are written. The saving rank closes the seal: the size and sha256 of every file.
5. Only then: the copy set aside is dropped, and checkpoints beyond --save_total_limit are deleted, oldest first.

``--resume_from_checkpoint auto`` (``outputs.checkpoint_problem``) skips a checkpoint whose seal is still open or does
not match its files. A checkpoint without a seal (saved before ftpeft sealed them, or by a plain Trainer) gets the
structural checks alone. A copy set aside by a save that was killed is put back first (``recover_set_aside``).

A write that fails (a full disk, any OSError, torch.save's or safetensors' report of one) ends the run with one
``error:`` line and exit 2. The saving rank removes the partial checkpoint (when it cannot, the checkpoint stays
unsealed) and puts back what it set aside. The previous checkpoint is untouched, because rotation comes after the
seal. Another rank's failure leaves the checkpoint unsealed, and the launcher stops the ranks still waiting for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ftpeft.core.errors import FtpeftError
from ftpeft.core.outputs import (
    ASIDE_SUFFIX,
    CHECKPOINT_PREFIX,
    SEAL_FILE,
    checkpoint_problem,
    checkpoint_step,
    file_digests,
    free_space,
    last_complete_checkpoint,
    write_failure,
    write_json,
)

logger = logging.getLogger("ftpeft")


def checkpoint_folder(trainer, trial=None) -> Path:
    """Where Trainer saves the checkpoint of the current step (an hp-search trial's run dir included)."""
    return Path(trainer._get_output_dir(trial=trial)) / f"{CHECKPOINT_PREFIX}{trainer.state.global_step}"


def aside_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{ASIDE_SUFFIX}")


def seal_is_open(folder: Path) -> bool:
    """Whether ``folder``'s seal says its save has not finished (cheap: no hashes)."""
    try:
        return not json.loads((folder / SEAL_FILE).read_text()).get("sealed")
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError):
        return True


def make_room(folder: Path) -> Path | None:
    """Clear ``folder`` for a new save of its step: a complete checkpoint there is moved aside (returns where), the
    remains of a save that did not finish are removed (their files would otherwise be sealed with the new ones)."""
    if not folder.exists():
        return None
    if not (folder / "trainer_state.json").is_file() or seal_is_open(folder):
        shutil.rmtree(folder)
        return None
    aside = aside_path(folder)
    shutil.rmtree(aside, ignore_errors=True)  # left by a save killed after its seal: that checkpoint is whole
    os.replace(folder, aside)
    return aside


def recover_set_aside(output_dir: str | Path) -> list[Path]:
    """Put back each copy set aside by a save that was killed before its seal; drop those whose step was sealed
    again. Main process only, before the ranks look for a checkpoint. Returns the checkpoints put back."""
    restored = []
    directory = Path(output_dir)
    if not directory.is_dir():
        return restored
    for aside in sorted(p for p in directory.iterdir() if p.name.startswith(".") and checkpoint_step(p) is not None):
        folder = directory / f"{CHECKPOINT_PREFIX}{checkpoint_step(aside)}"
        if folder.is_dir() and checkpoint_problem(folder) is None:
            shutil.rmtree(aside, ignore_errors=True)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(aside, folder)
        logger.warning("%s: its new save did not finish; the checkpoint saved before it is back", folder)
        restored.append(folder)
    return restored


def open_seal(folder: Path, world_size: int, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / SEAL_FILE, {"sealed": False, "step": step, "world_size": world_size})


def close_seal(folder: Path, world_size: int, step: int) -> None:
    """The seal, written last: the size and sha256 of every file every rank wrote into the checkpoint."""
    seal = {"sealed": True, "step": step, "world_size": world_size, "files": file_digests(folder)}
    write_json(folder / SEAL_FILE, seal)


@contextlib.contextmanager
def rotation_held_back(args):
    """Trainer deletes old checkpoints inside its save, before ftpeft's seal: hold that back (``rotate`` runs after
    the seal). The limit is back as given when the block ends."""
    limit = args.save_total_limit
    args.save_total_limit = None
    try:
        yield
    finally:
        args.save_total_limit = limit


def rotate(newest: Path, limit: int | None, best: str | None) -> list[Path]:
    """Delete the oldest checkpoints beside ``newest`` (just sealed) until ``limit`` remain, never ``newest`` or the
    best one: Trainer's rule, run after the seal instead of inside the save. Returns those deleted."""
    if not limit or limit <= 0:
        return []
    others = [p for p in newest.parent.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p != newest]
    others = sorted((p for p in others if checkpoint_step(p) is not None), key=checkpoint_step)
    protected = {newest.resolve()} | ({Path(best).resolve()} if best and Path(best).is_dir() else set())
    excess = len(others) + 1 - max(limit, len(protected))
    deleted = []
    for checkpoint in others:
        if excess <= 0:
            break
        if checkpoint.resolve() not in protected:
            shutil.rmtree(checkpoint, ignore_errors=True)
            deleted.append(checkpoint)
            excess -= 1
    return deleted


def save_sealed(trainer, trial, trainer_save: Callable[[], None], writers: list[Callable[[Path], None]]) -> Path:
    """Save checkpoint-N as the module docstring says (every rank calls it); returns its folder. A failed write:
    FtpeftError, the partial checkpoint removed (or left unsealed) and the previous one intact."""
    args = trainer.args
    folder = checkpoint_folder(trainer, trial)
    step, world_size = trainer.state.global_step, args.world_size
    aside = None
    try:
        if args.should_save:
            aside = make_room(folder)
            open_seal(folder, world_size, step)
        trainer.accelerator.wait_for_everyone()
        with rotation_held_back(args):
            trainer_save()
        if args.should_save:
            for write in writers:
                write(folder)
        trainer.accelerator.wait_for_everyone()  # every rank's files are in
        if args.should_save:
            close_seal(folder, world_size, step)
    except Exception as error:
        reason = write_failure(error)
        if reason is None:
            raise
        left = discard(folder, aside) if args.should_save else "It stays unsealed (auto skips it)"
        raise FtpeftError(failed_save_message(folder, reason, left, args.process_index)) from error
    if args.should_save:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        for deleted in rotate(folder, args.save_total_limit, trainer.state.best_model_checkpoint):
            logger.info(
                "deleted %s (--save_total_limit %s), after %s was sealed", deleted, args.save_total_limit, folder
            )
    return folder


def discard(folder: Path, aside: Path | None) -> str:
    """Remove a checkpoint whose save failed and put back what it replaced; says what is left."""
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        return "It stays unsealed (auto skips it)"
    if aside is not None:
        os.replace(aside, folder)
        return "The checkpoint it was replacing is back"
    return "The partial checkpoint was removed"


def failed_save_message(folder: Path, reason: str, left: str, rank: int) -> str:
    space = free_space(folder.parent)
    previous = last_complete_checkpoint(folder.parent)
    resume = (
        f"{previous.name} is intact: free space, then rerun with --resume_from_checkpoint auto"
        if previous is not None
        else "no earlier checkpoint: free space, then rerun (--resume_from_checkpoint auto starts afresh)"
    )
    who = f" (rank {rank})" if rank else ""
    return f"could not save {folder}{who}: {reason}{'; ' + space if space else ''}. {left}; {resume}."
