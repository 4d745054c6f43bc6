"""Checkpoints that are never lost: written to a temporary file in the same folder, flushed, then renamed.

A run folder keeps the last ``keep`` checkpoints as ``checkpoint-<step>.pt`` and ``checkpoint.pt``, a hard link to
the newest (a rename too, so it is never half-written). A process killed in the middle of a write leaves a
``.tmp-*`` file behind, never a truncated checkpoint; :func:`remove_stale_temporaries` clears those on the next
start, and :func:`latest_checkpoint` finds the newest checkpoint that loads.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import tempfile
from typing import Any

import torch

__all__ = [
    "latest_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
    "save_run_checkpoint",
]

_STEP_FILE = re.compile(r"checkpoint-(\d+)\.pt$")

#: Fault injection for the tests of the guarantee above: when this environment variable names a step, the process
#: that writes that step's checkpoint kills itself (SIGKILL) half-way through the write.
KILL_DURING_WRITE = "FASTFLOW_TEST_KILL_DURING_CHECKPOINT"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Save ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            if os.environ.get(KILL_DURING_WRITE) == str(state.get("step")):
                file.truncate(file.tell() // 2)  # as if the process died with half of the bytes on disk
                os.kill(os.getpid(), signal.SIGKILL)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return torch.load(path, map_location=map_location, weights_only=False)


def _step_files(folder: str | os.PathLike) -> list[tuple[int, str]]:
    found = []
    for path in glob.glob(os.path.join(folder, "checkpoint-*.pt")):
        match = _STEP_FILE.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_run_checkpoint(state: dict[str, Any], folder: str | os.PathLike, keep: int = 3) -> str:
    """Write ``checkpoint-<step>.pt`` and point ``checkpoint.pt`` at it (both atomic); keep the newest ``keep``."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    path = os.path.join(folder, f"checkpoint-{int(state['step']):08d}.pt")
    save_checkpoint(state, path)
    latest = os.path.join(folder, "checkpoint.pt")
    link = os.path.join(folder, f".tmp-link-{os.getpid()}.pt")
    if os.path.exists(link):
        os.unlink(link)
    os.link(path, link)
    os.replace(link, latest)
    for _, old in _step_files(folder)[:-keep]:
        os.unlink(old)
    return path


def latest_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-<step>.pt`` in ``folder`` that loads (a damaged one is skipped), else None."""
    for _, path in reversed(_step_files(folder)):
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # a file damaged outside our writes: fall back to the one before
            continue
        return path
    return None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the ``.tmp-*`` files a killed writer left in ``folder``; returns their paths."""
    stale = glob.glob(os.path.join(folder, ".tmp-*"))
    for path in stale:
        os.unlink(path)
    return stale
