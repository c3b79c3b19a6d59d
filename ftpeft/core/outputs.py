"""The output directory: safety checks, resume resolution and atomic writes of the run's artefacts."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ftpeft.core.artifacts import TORCH_SUFFIXES, safetensors_problem, torch_archive_problem, weight_files
from ftpeft.core.errors import FtpeftError
from ftpeft.core.lock import LOCK_FILE

CHECKPOINT_PREFIX = "checkpoint-"


def check_output_dir(output_dir: str | Path, overwrite: bool, resume_from_checkpoint: str | None) -> None:
    """Refuse to write into a non-empty output dir unless the user said so (overwrite or resume)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise FtpeftError(f"--output_dir {path} is a file, not a directory; choose another --output_dir.")
    if overwrite or resume_from_checkpoint or not path.is_dir():
        return
    existing = sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)  # the lock: a live run is refused by it
    if existing:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise FtpeftError(
            f"--output_dir {path} is not empty ({shown}); pass --overwrite_output_dir to write into it, "
            "--resume_from_checkpoint auto to continue the run, or choose another --output_dir."
        )


WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is no checkpoint to resume from (None: it is one).

    A checkpoint counts only once its trainer state is written and parses (Trainer writes it last, after
    weights, optimizer, scheduler and RNG states), its weights are there, and no weight or state file is
    cut short (a full disk, an interrupted copy): those would fail deep inside the resume.
    """
    state = path / "trainer_state.json"
    if not (path.is_dir() and state.is_file() and any((path / name).is_file() for name in WEIGHT_FILES)):
        return "incomplete checkpoint (trainer_state.json or weights missing; probably killed while saving)"
    try:
        json.loads(state.read_text())
    except (ValueError, OSError):
        return "incomplete checkpoint (trainer_state.json unreadable; probably killed while saving)"
    try:
        weights = weight_files(path)
    except FtpeftError as error:
        return str(error)
    for file in weights:
        problem = safetensors_problem(file)
        if problem:
            return f"{file} is damaged ({problem})"
    for file in sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES and p.is_file()):
        problem = torch_archive_problem(file)
        if problem:
            return f"{file} is damaged ({problem})"
    return None


def is_complete_checkpoint(path: Path) -> bool:
    return checkpoint_problem(path) is None


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint-N in ``output_dir`` to resume from; newer incomplete or damaged ones are skipped
    (with a warning naming the reason)."""
    path = Path(output_dir)
    if not path.is_dir():
        return None
    candidates = [
        p for p in path.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    for candidate in sorted(candidates, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), reverse=True):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        logging.getLogger("ftpeft").warning("--resume_from_checkpoint auto: skipping %s: %s", candidate, problem)
    return None


def resolve_resume(
    resume_from_checkpoint: str | None, output_dir: str | Path, fresh_start_files: Iterable[str] = ()
) -> str | None:
    """'auto' -> the latest complete checkpoint in output_dir (or None: start fresh); a path must be complete.

    Without a checkpoint, 'auto' starts afresh in an empty output dir, or in one that holds only ``fresh_start_files``
    (what a run writes before its first checkpoint: a run preempted that early is rerun from the start, and nothing is
    deleted); anything else there is refused.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "auto":
        found = last_complete_checkpoint(output_dir)
        others = {p.name for p in Path(output_dir).iterdir()} - {LOCK_FILE} if Path(output_dir).is_dir() else set()
        if found is None and others and not others <= set(fresh_start_files):
            raise FtpeftError(
                f"--resume_from_checkpoint auto: no complete checkpoint in {output_dir}, which is not empty; "
                "pass --overwrite_output_dir to start afresh there, or choose another --output_dir."
            )
        if found is None and others:
            logging.getLogger("ftpeft").warning(
                "--resume_from_checkpoint auto: %s holds no checkpoint, only files of a run stopped before its first "
                "one (%s): starting afresh",
                output_dir,
                ", ".join(sorted(others)),
            )
        return str(found) if found else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FtpeftError(f"--resume_from_checkpoint {path}: no such checkpoint directory.")
    problem = checkpoint_problem(path)
    if problem:
        raise FtpeftError(
            f"--resume_from_checkpoint {path}: {problem}. Use --resume_from_checkpoint auto to take the latest "
            "complete one."
        )
    return str(path)


def move_into_place(staging: Path, target: Path) -> list[str]:
    """Move every file of ``staging`` into ``target`` with an atomic rename each, then drop ``staging``.

    A kill leaves each final file either as it was or complete, never half written.
    """
    moved = []
    for source in sorted(p for p in staging.rglob("*") if p.is_file()):
        destination = target / source.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)
        moved.append(str(destination.relative_to(target)))
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (temp files get 0600/0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextlib.contextmanager
def staged(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write into, renamed onto ``path`` when the block ends cleanly.

    Readers never see half a file or folder; on an error the temporary is removed and ``path`` is left as
    it was. The result has the usual mode (umask), so a teammate can read a shared run directory. A
    directory replaces an existing one at ``path`` (a stale or damaged copy under the same key).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    else:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(_default_mode(directory))
        if directory and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file next to ``path`` and rename it into place: readers never see half a file."""
    with staged(path) as tmp, open(tmp, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
