"""One writer per output dir: ``OUTPUT_DIR/.ftpeft.lock``, created exclusively and kept alive by a heartbeat.

    lock = OutputLock.acquire(output_dir)    # rank 0; FtpeftError (exit 2) while a live run holds the dir
    lock.release()                           # at the end of the run (also at exit)

The file holds the holder's host, pid and start time. A pid means nothing on another host, so liveness is the
heartbeat: the holder touches the file every ``HEARTBEAT_S`` seconds, and a lock untouched for ``STALE_AFTER_S``
seconds is stale (its holder died, or its job was requeued onto another host) and is taken over. On the holder's own
host a dead pid (or a pid now used by another process) makes it stale at once, so a killed run can be resumed
straight away. Clocks of different hosts are compared through the file's mtime: a skew well under a minute is fine.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from ftpeft.core.errors import FtpeftError

logger = logging.getLogger("ftpeft")

LOCK_FILE = ".ftpeft.lock"
HEARTBEAT_S = 10.0  # how often the holder touches the lock
STALE_AFTER_S = 60.0  # a lock untouched this long belongs to nobody


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: host, pid, when the run started, and when its process started (tells a reused pid apart)."""

    host: str
    pid: int
    started: str
    process_start: float | None = None

    @classmethod
    def this_process(cls) -> Holder:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), started, process_start_time(os.getpid()))

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` of this host started (None: no such process, or unknown)."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except ImportError:
        return None
    except Exception:  # noqa: BLE001  (psutil.NoSuchProcess, AccessDenied, ZombieProcess)
        return None


def _alive_here(holder: Holder) -> bool:
    """Whether ``holder`` (a process of this host) still runs: the pid exists and started when the holder did."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    started = process_start_time(holder.pid)
    return started is None or holder.process_start is None or abs(started - holder.process_start) < 1.0


def read_holder(path: Path) -> Holder | None:
    """The holder written in a lock file (None: unreadable, e.g. still being written)."""
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def live_holder(path: Path) -> str | None:
    """Why the lock at ``path`` is live (who holds it), or None when it is stale or gone."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    age = max(time.time() - stat.st_mtime, 0.0)
    holder = read_holder(path)
    if holder is not None and holder.host == socket.gethostname():
        if holder.pid == os.getpid():  # an earlier run of this very process that did not let go (it ended)
            return None
        if not _alive_here(holder):
            return None
        return f"held by {holder.describe()}, heartbeat {age:.0f} s ago"
    if age > STALE_AFTER_S:
        return None
    who = holder.describe() if holder else "a run still writing its lock"
    return f"held by {who}, heartbeat {age:.0f} s ago"


def _create(path: Path, holder: Holder) -> int | None:
    """Create the lock file exclusively with ``holder`` in it; its inode, or None when one exists."""
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(handle, "w") as stream:
        stream.write(json.dumps(dataclasses.asdict(holder)) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    return path.stat().st_ino


def _take_over(path: Path, seen: os.stat_result) -> None:
    """Remove the stale lock ``seen``; of several runs taking it over at once, one removes it and the rest retry."""
    grave = path.with_name(f"{LOCK_FILE}.stale.{socket.gethostname()}.{os.getpid()}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    moved = grave.stat()
    if (moved.st_ino, moved.st_mtime_ns) != (seen.st_ino, seen.st_mtime_ns):
        try:  # another run took it over first and this moved its fresh lock: put that back
            os.link(grave, path)
        except FileExistsError:
            pass
    grave.unlink(missing_ok=True)


class OutputLock:
    """A held output-dir lock, its heartbeat running in a daemon thread until ``release``."""

    def __init__(self, path: Path, holder: Holder, inode: int):
        self.path = path
        self.holder = holder
        self.inode = inode
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ftpeft-lock-heartbeat", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    @classmethod
    def acquire(cls, output_dir: str | Path) -> OutputLock:
        """Hold ``output_dir`` (created if missing), taking over a stale lock; FtpeftError while a live run holds it."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / LOCK_FILE
        holder = Holder.this_process()
        for _ in range(5):
            inode = _create(path, holder)
            if inode is not None:
                return cls(path, holder, inode)
            try:
                seen = path.stat()
            except FileNotFoundError:
                continue
            live = live_holder(path)
            if live:
                raise FtpeftError(
                    f"--output_dir {output_dir} is in use by another run ({live}); wait for it to end or choose "
                    f"another --output_dir (a lock whose heartbeat stopped {STALE_AFTER_S:.0f} s ago is taken over)."
                )
            stale = read_holder(path)
            logger.warning("%s: taking over the stale lock of %s", path, stale.describe() if stale else "a dead run")
            _take_over(path, seen)
        raise FtpeftError(f"--output_dir {output_dir}: could not take its lock {path}; remove it if no run uses it.")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if os.stat(self.path).st_ino != self.inode:
                    logger.warning("%s was taken over by another run; this run no longer holds it", self.path)
                    return
                os.utime(self.path)
            except OSError:  # removed (the output dir deleted): nothing to keep alive
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still this run's."""
        if self._stop.is_set():
            return
        self._stop.set()
        atexit.unregister(self.release)
        try:  # an inode number can be reused: the holder written in the file must be this run too
            if os.stat(self.path).st_ino == self.inode and read_holder(self.path) == self.holder:
                self.path.unlink()
        except OSError:
            pass
