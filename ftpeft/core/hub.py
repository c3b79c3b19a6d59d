"""Pushing a finished run to the Hub, once, after everything is saved locally."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ftpeft.core.errors import FtpeftError, redact

# never uploaded: intermediate checkpoints, logs, temporary files
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.tmp", ".*"]
FINISHED_RUN_FILES = ("README.md", "metrics.json")
MODEL_FILES = ("config.json", "adapter_config.json")


@dataclasses.dataclass
class PushTarget:
    repo_id: str | None  # None: '<user>/<output_dir name>' resolved at push time
    private: bool | None
    token: str | None = dataclasses.field(repr=False)  # never printed


def resolve_token(explicit: str | None) -> str | None:
    from huggingface_hub import get_token

    return explicit or get_token()


def validate_push_args(training_args) -> PushTarget | None:
    """Check --push_to_hub settings before training; the target (token included) of the one push at the end.

    ftpeft pushes once, at the end, so a failed push never costs the run. The run then clears
    ``push_to_hub`` and ``hub_token`` in ``training_args`` (``ftpeft.core.settings``), so Trainer neither
    pushes at every save nor writes the token to disk.
    """
    if not training_args.push_to_hub:
        return None
    token = resolve_token(training_args.hub_token)
    if not training_args.hub_model_id and not token:
        raise FtpeftError(
            "--push_to_hub needs --hub_model_id (e.g. me/my-model) and a Hub login: run `hf auth login` "
            "or pass --hub_token."
        )
    if not token:
        raise FtpeftError(
            f"--push_to_hub to {training_args.hub_model_id}: not logged in; run `hf auth login` or pass --hub_token."
        )
    return PushTarget(training_args.hub_model_id, training_args.hub_private_repo, token)


def check_finished_run(output_dir: str | Path, merged: bool = False) -> Path:
    """The folder to upload; an error says what is missing when ``output_dir`` is not a finished run."""
    folder = Path(output_dir) / ("merged" if merged else "")
    if not Path(output_dir).is_dir():
        raise FtpeftError(f"{output_dir}: no such directory.")
    missing = [name for name in FINISHED_RUN_FILES if not (Path(output_dir) / name).is_file()]
    if not any((folder / name).is_file() for name in MODEL_FILES):
        missing.append(" or ".join(MODEL_FILES) + (" in merged/ (train with --merge_adapter)" if merged else ""))
    if missing:
        raise FtpeftError(
            f"{output_dir} is not a finished ftpeft run (missing {', '.join(missing)}); finish or resume the run first."
        )
    return folder


def push_run(output_dir: str | Path, target: PushTarget, merged: bool = False) -> str:
    """Upload a finished run (the adapter/model dir, or its merged/ copy) with its card. Returns the repo URL.

    A model of ftpeft's own types goes up with its code (``ftpeft.core.model_code``): a run saved before ftpeft
    shipped it gets the file and config.json's auto_map written first, so the Hub copy loads without ftpeft."""
    from huggingface_hub import HfApi

    from ftpeft.core.model_code import ship_model_code

    folder = check_finished_run(output_dir, merged)
    ship_model_code(folder)
    api = HfApi(token=target.token)
    repo_id = target.repo_id
    try:
        if repo_id is None:
            repo_id = f"{api.whoami()['name']}/{Path(output_dir).resolve().name}"
        api.create_repo(repo_id, private=target.private, exist_ok=True)
        ignore = IGNORE_PATTERNS + ([] if merged else ["merged/**"])
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message="Upload ftpeft run", ignore_patterns=ignore
        )
    except Exception as error:  # network, auth, quota: the local run stays as it is  # noqa: BLE001
        message = redact(str(error).splitlines()[0] if str(error) else type(error).__name__, (target.token,))
        retry = f"ftpeft push {output_dir} --hub_model_id {repo_id or '<user>/<name>'}" + (
            " --merged" if merged else ""
        )
        raise FtpeftError(
            f"push to the Hub failed ({type(error).__name__}: {message}); the run is saved in {output_dir}. "
            f"Retry with: {retry}"
        ) from None
    return getattr(commit, "repo_url", None) or f"https://huggingface.co/{repo_id}"
