"""Data files shipped inside installed PyPI packages (the offline demo assets)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ftpeft.core.errors import FtpeftError


def packaged_file(module: str, relative_path: str, missing_hint: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package.

    ``missing_hint`` tells the user what to do when the package is not installed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FtpeftError(f"{missing_hint} (the '{module}' package is not installed).")
    path = Path(spec.origin).parent / relative_path
    if not path.is_file():
        raise FtpeftError(f"{module} is installed but {path} is missing; reinstall it (pip install --force-reinstall).")
    return path
