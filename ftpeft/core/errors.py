"""One place that turns expected failures into one clear line and exit code 2."""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

USAGE_EXIT_CODE = 2
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


class FtpeftError(Exception):
    """An expected failure caused by the user's input: a flag, a file or the data.

    The message names the culprit and says what to do; it is printed without a traceback.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line error quotes."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def reading_problem(error: BaseException) -> str:
    """Why a data file could not be read, for one line: readers (datasets, pandas) wrap the cause in a generic
    error ("An error occurred while generating the dataset"), so the chain is searched for it."""
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 20:
            break
    if any(isinstance(link, UnicodeDecodeError) for link in chain):
        return "not UTF-8 text; save it as UTF-8"
    return first_line(chain[-1] if len(chain) > 1 else error)


def redact(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """Remove Hub tokens (and any explicitly given secret) from ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _TOKEN_PATTERN.sub("hf_***", text)


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return os.environ.get("FTPEFT_DEBUG", "") not in ("", "0") or "--debug" in argv


def run_cli(main: Callable[[], T]) -> Callable[[], T]:
    """Decorate a console entry point: FtpeftError -> one line on stderr and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except FtpeftError as error:
            if debug_enabled():
                traceback.print_exc()
            message = " ".join(str(error).split())  # always one line
            print(f"error: {redact(message)}", file=sys.stderr, flush=True)
            raise SystemExit(USAGE_EXIT_CODE) from None

    return wrapper
