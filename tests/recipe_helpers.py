"""Helpers for running recipes in tests: import a recipe module, launch it, snapshot directories."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subprocess_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run(args: list[str], timeout: int = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        check=False, args=args, cwd=ROOT, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout
    )


def python_recipe(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run([sys.executable, str(RECIPES / f"{name}.py"), *args], timeout=timeout)


def accelerate_bin() -> str:
    return str(Path(sys.executable).with_name("accelerate"))


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
