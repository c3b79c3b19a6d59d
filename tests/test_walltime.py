"""Wall-time caps (issue 26): the durations of ``--max_time`` and the ladder's ``--time_budget``, and ``auto``, the SLURM
job's time left (``squeue -h -j $SLURM_JOB_ID -o %L``, here a stand-in on PATH) less the margin for the last save.
A real run stopped by its cap: test_preemption.py."""

from __future__ import annotations

import pytest
from helpers import squeue_stand_in

from ftpeft.core.config import RunArguments
from ftpeft.core.errors import FtpeftError
from ftpeft.core.walltime import WALLTIME_MARGIN_S, slurm_time_seconds
from ftpeft.ladder.args import LadderArguments

SQUEUE_TIMES = [  # what squeue's %L prints -> seconds (None: no limit; an error: not a SLURM time)
    ("1-02:03:04", 93784), ("12-00:00:00", 12 * 86400), ("02:03:04", 7384), ("2:03:04", 7384), ("03:04", 184),
    ("0:00", 0), (" 10:00\n", 600), ("UNLIMITED", None), ("NOT_SET", None), ("INVALID", None),
    ("soon", "error"), ("", "error"), ("12", "error"), ("1-02:03", "error"), ("1:02:03:04", "error"),
    ("-1:00", "error"), ("1h", "error"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "seconds"), SQUEUE_TIMES)
def test_squeue_time_left_parses_or_is_one_clear_error(text, seconds):
    if seconds == "error":
        with pytest.raises(FtpeftError, match=r"not a SLURM time \(D-HH:MM:SS, HH:MM:SS, MM:SS or UNLIMITED\)") as e:
            slurm_time_seconds(text)
        assert "\n" not in str(e.value)
    else:
        assert slurm_time_seconds(text) == seconds


# both flags read a duration the same way (ftpeft.core.walltime)
CAPS = {
    "--max_time": lambda text: RunArguments(max_time=text).max_time_seconds,
    "--time_budget": lambda text: LadderArguments(time_budget=text).budget_seconds,
}
DURATIONS = [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("45", 45), (" 2 m ", 120), ("0.5s", 0.5),
             ("0", None), ("-5m", None), ("1d", None), ("1e3s", None), ("nan", None), ("", None), ("soon", None),
             ("20 minutes", None)]  # fmt: skip


@pytest.mark.parametrize("flag", CAPS)
@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_durations_parse_or_name_the_flag(flag, text, seconds):
    if seconds is None:
        with pytest.raises(FtpeftError, match=f"^{flag} '.*': use a positive duration such as 90s, 20m or 1.5h"):
            CAPS[flag](text)
    else:
        assert CAPS[flag](text) == seconds


def test_no_max_time_means_no_cap():
    assert RunArguments().max_time is None and RunArguments().max_time_seconds is None


@pytest.mark.parametrize("flag", CAPS)
def test_auto_outside_a_slurm_job_is_refused_in_one_line(flag, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(FtpeftError) as refused:
        CAPS[flag]("auto")
    assert str(refused.value) == (
        f"{flag} auto: not inside a SLURM job (no SLURM_JOB_ID); give a duration such as 20m or 1.5h."
    )


SQUEUE_SAYS = [  # squeue's output, its exit code -> the cap in seconds, or the refusal
    ("1:00:00", 0, 3600 - WALLTIME_MARGIN_S),
    ("2-00:00:00", 0, 2 * 86400 - WALLTIME_MARGIN_S),
    ("05:01", 0, 1.0),
    ("05:00", 0, "the SLURM job has 300 s left, no more than the 300 s kept for the last save; give a duration."),
    ("UNLIMITED", 0, "SLURM job 4242 has no time limit (UNLIMITED); give a duration such as 20m."),
    ("NOT_SET", 0, "SLURM job 4242 has no time limit (NOT_SET); give a duration such as 20m."),
    ("later", 0, "squeue gave 'later' as the job's time left: not a SLURM time"),
    ("", 0, "squeue -h -j 4242 -o %L did not give the job's time left (exit 0, no output); give a duration."),
    ("slurm_load_jobs error: Invalid job id specified", 1,
     "squeue -h -j 4242 -o %L did not give the job's time left (slurm_load_jobs error: Invalid job id specified)"),
]  # fmt: skip


@pytest.mark.parametrize("flag", CAPS)
@pytest.mark.parametrize(("prints", "code", "expected"), SQUEUE_SAYS)
def test_auto_is_the_jobs_time_left_less_the_margin_asked_once(flag, prints, code, expected, tmp_path, monkeypatch):
    for name, value in squeue_stand_in(tmp_path / "bin", prints, code).items():
        monkeypatch.setenv(name, value)
    if isinstance(expected, str):
        with pytest.raises(FtpeftError) as refused:
            CAPS[flag]("auto")
        assert str(refused.value).startswith(f"{flag} auto: {expected}") and "\n" not in str(refused.value)
        return
    parsed = RunArguments(max_time="auto") if flag == "--max_time" else LadderArguments(time_budget="auto")
    seconds = [parsed.max_time_seconds if flag == "--max_time" else parsed.budget_seconds for _ in range(2)]
    assert seconds == [expected, expected]
    # squeue is asked once, while the arguments are parsed; later reads give that number
    assert (tmp_path / "bin" / "squeue.log").read_text().splitlines() == ["-h -j 4242 -o %L"]


def test_auto_without_squeue_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue there
    with pytest.raises(FtpeftError, match=r"^--max_time auto: could not run squeue -h -j 4242 -o %L \(") as refused:
        RunArguments(max_time="auto")
    assert "\n" not in str(refused.value)
