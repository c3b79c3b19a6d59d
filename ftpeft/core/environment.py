"""The software a run ran with: what resolved_settings.json and the model card record, so a result can be rerun."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

# the packages whose versions decide what a run computes (ftpeft's own is added with its git commit)
PACKAGES = ("torch", "transformers", "peft", "timm", "accelerate", "datasets")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(checkout: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def ftpeft_commit() -> tuple[str | None, bool | None]:
    """(commit, whether tracked files differ from it) of the git checkout ftpeft is imported from; (None, None) for an
    installed package."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None, None
    commit = _git(checkout, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    changes = _git(checkout, "status", "--porcelain", "--untracked-files=no")
    return commit, None if changes is None else bool(changes)


def environment() -> dict[str, str | bool | None]:
    """Versions of Python, the stack's packages (None: not installed) and ftpeft, with its git commit (and whether
    the checkout had uncommitted changes) when ftpeft runs from one. Computed once per process; a copy each call."""
    return dict(_environment())


@functools.cache
def _environment() -> dict[str, str | bool | None]:
    import ftpeft

    versions: dict[str, str | bool | None] = {"python": platform.python_version()}
    versions.update({package: _version(package) for package in PACKAGES})
    versions["ftpeft"] = ftpeft.__version__
    commit, dirty = ftpeft_commit()
    if commit is not None:
        versions["ftpeft_git_commit"] = commit
        versions["ftpeft_git_dirty"] = dirty
    return versions


def environment_line(versions: dict[str, str | bool | None]) -> str:
    """One line for the card: "Python 3.11.9, torch 2.14.1, ..., ftpeft 0.1.0 (git 1a2b3c4, with local changes)"."""
    names = {"python": "Python"}
    parts = [
        f"{names.get(name, name)} {version}"
        for name, version in versions.items()
        if not name.startswith("ftpeft") and version is not None
    ]
    ftpeft_part = f"ftpeft {versions.get('ftpeft')}"
    if versions.get("ftpeft_git_commit"):
        ftpeft_part += f" (git {str(versions['ftpeft_git_commit'])[:12]}"
        ftpeft_part += ", with local changes)" if versions.get("ftpeft_git_dirty") else ")"
    return ", ".join([*parts, ftpeft_part])
