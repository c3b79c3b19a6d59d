"""The output directory: safety checks, resume resolution and atomic writes of the run's artefacts."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ftpeft.core.artifacts import TORCH_SUFFIXES, safetensors_problem, torch_archive_problem, weight_files
from ftpeft.core.errors import FtpeftError, first_line
from ftpeft.core.lock import LOCK_FILE

CHECKPOINT_PREFIX = "checkpoint-"
# in every checkpoint ftpeft saves, written first as {"sealed": false} and last, after every rank's files, with the
# size and sha256 of each file: ``ftpeft.core.checkpoints``
SEAL_FILE = "ftpeft_checkpoint.json"
# a complete checkpoint moved aside while a resumed run saves the same step again (``checkpoints.set_aside``)
ASIDE_SUFFIX = ".replaced"


def check_output_dir(output_dir: str | Path, overwrite: bool, resume_from_checkpoint: str | None) -> None:
    """Refuse to write into a non-empty output dir unless the user said so (overwrite or resume)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise FtpeftError(f"--output_dir {path} is a file, not a directory; choose another --output_dir.")
    if overwrite or resume_from_checkpoint or not path.is_dir():
        return
    # the lock: a live run is refused by it; a search's journal: the search refuses it (its final run starts beside it)
    existing = sorted(p.name for p in path.iterdir() if p.name not in (LOCK_FILE, SEARCH_JOURNAL_FILE))
    if existing:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise FtpeftError(
            f"--output_dir {path} is not empty ({shown}); pass --overwrite_output_dir to write into it, "
            "--resume_from_checkpoint auto to continue the run, or choose another --output_dir."
        )


SEARCH_JOURNAL_FILE = "hp_search_journal.log"  # --hp_search: its trials (Optuna journal), beside the final run
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {"bytes", "sha256"} of every file under ``folder`` but its seal."""
    digests = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SEAL_FILE):
        digests[file.relative_to(folder).as_posix()] = {"bytes": file.stat().st_size, "sha256": sha256_of(file)}
    return digests


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal_problem(path: Path) -> str | None:
    """Why a checkpoint's seal does not vouch for it (None: it matches, or there is none).

    No seal: a checkpoint saved before ftpeft sealed them (or by a plain Trainer), left to the other checks. A seal
    still ``"sealed": false``: its save never finished. A sealed one: every file it lists must be there with its size
    and sha256 (files added after the seal are not part of the checkpoint).
    """
    seal_path = path / SEAL_FILE
    if not seal_path.is_file():
        return None
    try:
        seal = json.loads(seal_path.read_text())
        files = seal["files"] if seal.get("sealed") else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its seal ({SEAL_FILE}) is unreadable"
    if files is None:
        return "unsealed: its save never finished (killed or failed while saving)"
    if not isinstance(files, dict):
        return f"its seal ({SEAL_FILE}) is unreadable"
    for name, sealed in files.items():
        file = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"its seal names {name!r}, outside the checkpoint"
        if not file.is_file():
            return f"{name} is missing (sealed with {len(files)} files)"
        if file.stat().st_size != sealed.get("bytes"):
            return f"{name} is {file.stat().st_size} bytes, sealed at {sealed.get('bytes')}"
    for name, sealed in files.items():  # sizes first: a cut file is found without reading the others
        if sha256_of(path / name) != sealed.get("sha256"):
            return f"{name} differs from the sealed copy (sha256)"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is no checkpoint to resume from (None: it is one).

    A checkpoint ftpeft sealed must match its seal (``seal_problem``): every rank's files, as they were when the
    last of them was written. Every checkpoint, sealed or saved before seals existed, counts only once its trainer
    state is written and parses (Trainer writes it last, after weights, optimizer, scheduler and RNG states), its
    weights are there, and no weight or state file is cut short (a full disk, an interrupted copy): those would fail
    deep inside the resume.
    """
    sealed = seal_problem(path) if path.is_dir() else None
    if sealed:
        return sealed
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


def checkpoint_step(path: Path) -> int | None:
    """N of checkpoint-N (and of .checkpoint-N.replaced, one set aside); None for any other name."""
    name = path.name
    if name.startswith(".") and name.endswith(ASIDE_SUFFIX):
        name = name[1 : -len(ASIDE_SUFFIX)]
    digits = name[len(CHECKPOINT_PREFIX) :]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint-N in ``output_dir`` to resume from; newer incomplete or damaged ones are skipped
    (with a warning naming the reason)."""
    path = Path(output_dir)
    if not path.is_dir():
        return None
    candidates = [p for p in path.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and checkpoint_step(p) is not None]
    for candidate in sorted(candidates, key=checkpoint_step, reverse=True):
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
        # the lock and a --hp_search journal are not a run's outputs (the final run of a search starts beside its journal)
        not_outputs = {LOCK_FILE, SEARCH_JOURNAL_FILE}
        others = {p.name for p in Path(output_dir).iterdir()} - not_outputs if Path(output_dir).is_dir() else set()
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


# a full disk, a quota, the file size limit, a read-only or failing disk: an OSError with one of these is a failed
# write wherever it comes from
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
# how torch.save reports a write that failed (it raises RuntimeError from its zip writer, not OSError)
_TORCH_WRITE_MARKS = ("PytorchStreamWriter", "inline_container", "file write failed")


def write_failure(error: BaseException, any_oserror: bool = True) -> str | None:
    """What went wrong, in a few words, when ``error`` is a write that failed (None: it is something else).

    An OSError counts (with ``any_oserror=False`` only one of ``WRITE_ERRNOS``, where reads happen too), and so do
    safetensors' and torch.save's own reports of one, which are not OSErrors.
    """
    if isinstance(error, OSError):
        if not (any_oserror or error.errno in WRITE_ERRNOS):
            return None
        reason = error.strerror or first_line(error)
        code = f"{errno.errorcode[error.errno]}, " if error.errno in errno.errorcode else ""
        return f"{reason} ({code}{Path(error.filename).name})" if error.filename else f"{reason} ({code.rstrip(', ')})"
    text = str(error)
    if type(error).__name__ == "SafetensorError" and "I/O error" in text:
        return f"safetensors could not write ({first_line(error).removeprefix('Error while serializing: ')})"
    if isinstance(error, RuntimeError) and any(mark in text for mark in _TORCH_WRITE_MARKS):
        detail = first_line(error).rsplit("] . ", 1)[-1]  # after "[enforce fail at inline_container.cc:N] . "
        return f"torch.save failed while writing ({detail})"
    return None


def free_space(path: str | Path) -> str:
    """'N MiB free' on the filesystem of ``path`` (its nearest existing parent), or '' when that is unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.0f} MiB free there"
    except OSError:
        return ""


@contextlib.contextmanager
def writes_or_error(what: str, where: str | Path, advice: str | Callable[[], str], any_oserror: bool = True):
    """A failed write inside the block (a full disk, ...: ``write_failure``) becomes one FtpeftError line: what was
    being written, why it failed, the free space left, and ``advice`` (a callable: worked out once it failed).
    Anything else passes through unchanged."""
    try:
        yield
    except Exception as error:
        reason = write_failure(error, any_oserror)
        if reason is None:
            raise
        space = free_space(where)
        advice = advice() if callable(advice) else advice
        raise FtpeftError(f"{what}: {reason}{'; ' + space if space else ''}. {advice}") from error
