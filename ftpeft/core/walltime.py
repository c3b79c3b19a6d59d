"""How long a run may take: a duration (90s, 20m, 1.5h) or ``auto``, what the SLURM job has left less
``WALLTIME_MARGIN_S`` for the last save. ``--max_time`` (a Trainer run's cap) and the ladder's ``--time_budget`` read
it the same way.

    duration_seconds("1.5h", "--max_time")    # 5400.0
    duration_seconds("auto", "--max_time")    # squeue -h -j $SLURM_JOB_ID -o %L, less the margin; refused outside SLURM
"""

from __future__ import annotations

import os
import re
import subprocess

from ftpeft.core.errors import FtpeftError

AUTO = "auto"
# kept back from the job's time left for the checkpoint the stop saves: as long as the grace the sbatch templates give
# their signal (#SBATCH --signal=B:USR1@300)
WALLTIME_MARGIN_S = 300.0
SLURM_NO_LIMIT = ("UNLIMITED", "NOT_SET", "INVALID")  # what squeue's %L prints for a job without a time limit
SQUEUE_TIMEOUT_S = 60
_UNITS = {"s": 1, "m": 60, "h": 3600}
# squeue's %L: days-hours:minutes:seconds, hours:minutes:seconds, minutes:seconds
_SLURM_TIME = re.compile(r"(?:(?:(?P<days>\d+)-)?(?P<hours>\d+):)?(?P<minutes>\d+):(?P<seconds>\d+)")


def parse_duration(text: str, flag: str) -> float:
    """Seconds of a duration such as 90s, 20m, 1.5h (a bare number: seconds); refuses anything else naming ``flag``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise FtpeftError(f"{flag} {text!r}: use a positive duration such as 90s, 20m or 1.5h, or auto (SLURM).")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def slurm_time_seconds(text: str) -> float | None:
    """Seconds of a SLURM time as ``squeue -o %L`` prints it (1-02:03:04, 02:03:04, 03:04); None: no limit."""
    text = str(text).strip()
    if text.upper() in SLURM_NO_LIMIT:
        return None
    match = _SLURM_TIME.fullmatch(text)
    if match is None:
        raise FtpeftError(
            f"squeue gave {text!r} as the job's time left: not a SLURM time (D-HH:MM:SS, HH:MM:SS, MM:SS or UNLIMITED)."
        )
    days, hours, minutes, seconds = (int(match[name] or 0) for name in ("days", "hours", "minutes", "seconds"))
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def job_time_left(flag: str) -> float:
    """Seconds the SLURM job running this process has left (``squeue -h -j $SLURM_JOB_ID -o %L``). Refused in one line
    outside a SLURM job, for a job without a time limit, or when squeue cannot tell."""
    job = os.environ.get("SLURM_JOB_ID", "").strip()
    if not job:
        raise FtpeftError(
            f"{flag} auto: not inside a SLURM job (no SLURM_JOB_ID); give a duration such as 20m or 1.5h."
        )
    command = ["squeue", "-h", "-j", job, "-o", "%L"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FtpeftError(f"{flag} auto: could not run {' '.join(command)} ({error}); give a duration.") from None
    said = result.stdout.split()
    if result.returncode or not said:
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}, no output"])[-1]
        raise FtpeftError(
            f"{flag} auto: {' '.join(command)} did not give the job's time left ({why}); give a duration."
        )
    try:
        left = slurm_time_seconds(said[0])
    except FtpeftError as error:
        raise FtpeftError(f"{flag} auto: {error}") from None
    if left is None:
        raise FtpeftError(f"{flag} auto: SLURM job {job} has no time limit ({said[0]}); give a duration such as 20m.")
    return left


def duration_seconds(text: str, flag: str) -> float:
    """Seconds of ``flag``'s value: a duration (``parse_duration``), or auto: the job's time left less
    ``WALLTIME_MARGIN_S`` (refused when the job has no more than the margin left)."""
    if str(text).strip().lower() != AUTO:
        return parse_duration(text, flag)
    left = job_time_left(flag)
    if left <= WALLTIME_MARGIN_S:
        raise FtpeftError(
            f"{flag} auto: the SLURM job has {left:.0f} s left, no more than the {WALLTIME_MARGIN_S:.0f} s kept for "
            "the last save; give a duration."
        )
    return left - WALLTIME_MARGIN_S
