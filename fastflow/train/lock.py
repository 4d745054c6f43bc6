"""One writer per run folder: an advisory lock file ``<out>/.fastflow.lock`` holding the owner's pid, host and
start time.

The lock is an ``flock`` on that file where the platform has one, so the kernel releases it when the owner dies in
any way (SIGKILL included): a lock file left by a dead process is stale and is taken over, with a note. Where
``flock`` is missing, the owner recorded in the file decides: a pid that no longer runs on this host is stale.
Under ``torchrun`` rank 0 holds the lock for the whole run.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]

LOCK_FILE = ".fastflow.lock"


class RunLockedError(OSError):
    """Another process writes to this run folder; the message names it."""


def _describe(owner: dict[str, Any]) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, since {when}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True


class RunLock:
    """``with RunLock(folder):`` — refuses at once (:class:`RunLockedError`) when another live process holds it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self._fd: int | None = None
        self.stale: dict[str, Any] | None = None  # the dead owner whose lock was taken over, if any

    def _read_owner(self, fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            owner = json.loads(os.read(fd, 4096).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            owner = {}
        return owner if isinstance(owner, dict) else {}

    def _refuse(self, owner: dict[str, Any]) -> RunLockedError:
        return RunLockedError(
            f"run folder {self.folder} is in use by another fastflow run ({_describe(owner)}): one writer per run; "
            f"wait for it to finish, stop it, or give another --out (the lock is {self.path})"
        )

    def check(self) -> None:
        """Raise :class:`RunLockedError` now if another process holds the lock; takes nothing and writes nothing
        (the command line asks before it loads any data; the trainer takes the lock itself)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return  # no lock file (or none we can read): nobody to name
        try:
            owner = self._read_owner(fd)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise self._refuse(owner) from None
                fcntl.flock(fd, fcntl.LOCK_UN)
            elif owner and owner.get("host") == socket.gethostname() and _alive(int(owner.get("pid", -1))):
                raise self._refuse(owner)
        finally:
            os.close(fd)

    def acquire(self) -> RunLock:
        os.makedirs(self.folder, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if self._try(fd):
                    self._fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the owner released and removed the file between our open and our lock: again
        raise RunLockedError(f"run folder {self.folder}: could not take the lock {self.path}")

    def _try(self, fd: int) -> bool:
        """Lock the open lock file ``fd``; False when it is no longer the file at ``self.path``."""
        owner = self._read_owner(fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._refuse(owner) from None
            try:
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    return False
            except FileNotFoundError:
                return False
            # The lock is ours; an owner still recorded in the file died without releasing it.
            self.stale = owner or None
        elif owner and owner.get("pid") != os.getpid():
            same_host = owner.get("host") == socket.gethostname()
            if not same_host or _alive(int(owner.get("pid", -1))):
                raise self._refuse(owner)
            self.stale = owner
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # before unlocking: a waiting writer then creates a fresh file
        except OSError:
            pass
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
