"""Checkpoints that are never lost, never silently damaged and never run code.

- **Atomic.** A checkpoint is written to a temporary file in the same folder, flushed, synced, then renamed. A run
  folder keeps the last ``keep`` checkpoints as ``checkpoint-<step>.pt`` and ``checkpoint.pt``, a hard link to the
  newest (a rename too, so it is never half-written). A process killed in the middle of a write leaves a ``.tmp-*``
  file behind, never a truncated checkpoint; :func:`remove_stale_temporaries` clears those on the next start.
- **Checked.** Every checkpoint carries ``"checksum"``: the SHA-256 of its contents (every tensor's dtype, shape and
  bytes, and every plain value, in order), recomputed on load. A file changed after it was written (a few bytes
  overwritten, a bad disk, a partial copy) is refused with :class:`CheckpointError` naming it, never used.
- **Safe.** Checkpoints hold only tensors and plain Python data (dicts, lists, tuples, strings, numbers, None),
  which :func:`save_checkpoint` enforces, so that :func:`load_checkpoint` reads them with
  ``torch.load(weights_only=True)``: loading a file never runs code from it.

:func:`newest_intact_checkpoint` finds the newest checkpoint of a run folder that passes those checks and says
which ones it skipped and why, for ``--resume``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pickle
import re
import signal
import tempfile
import warnings
from typing import Any

import torch

__all__ = [
    "BEST",
    "CHECKSUM_KEY",
    "LATEST",
    "CheckpointError",
    "check_fresh_start",
    "checkpoint_files",
    "content_digest",
    "latest_checkpoint",
    "load_checkpoint",
    "newest_intact_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
    "save_run_checkpoint",
]

_STEP_FILE = re.compile(r"checkpoint-(\d+)\.pt$")
LATEST = "checkpoint.pt"
BEST = "checkpoint-best.pt"  # with a validation split: the state of the best validation score
CHECKSUM_KEY = "checksum"

#: Fault injection for the tests of the guarantee above: when this environment variable names a step, the process
#: that writes that step's checkpoint kills itself (SIGKILL) half-way through the write.
KILL_DURING_WRITE = "FASTFLOW_TEST_KILL_DURING_CHECKPOINT"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, empty, truncated, damaged or unsafe. The message names it."""


# --------------------------------------------------------------------------------------------------
# The checksum.

def _feed(digest: Any, value: Any, where: str) -> None:
    """Add ``value`` to ``digest``, tagged by type so that e.g. ``1``, ``1.0``, ``"1"`` and ``[1]`` differ."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}:".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key, where)
            _feed(digest, item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):  # torch.Size is a tuple
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}:".encode())
        for index, item in enumerate(value):
            _feed(digest, item, f"{where}[{index}]")
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, bytes):
        digest.update(f"bytes{len(value)}:".encode())
        digest.update(value)
    else:
        raise TypeError(
            f"checkpoint state {where} is a {type(value).__module__}.{type(value).__qualname__}: a checkpoint holds "
            "only tensors and plain data (dict, list, tuple, str, int, float, bool, None), so that it loads with "
            "torch.load(weights_only=True); convert it to one of those"
        )


def content_digest(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``state`` without its ``"checksum"`` entry."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != CHECKSUM_KEY}, "state")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Writing and reading one file.

def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Save ``state`` (tensors and plain data) with its checksum to ``path`` atomically: a crash mid-write leaves
    the previous file intact."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    state = {**state, CHECKSUM_KEY: {"sha256": content_digest(state)}}
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state saved in ``path``, read with ``weights_only=True`` and its checksum verified.

    Raises :class:`CheckpointError` (a ``ValueError``) naming ``path`` when the file is missing, a folder, empty,
    truncated, not a checkpoint, holds objects other than tensors and plain data, or does not match its checksum.
    """
    name = os.fspath(path)
    if os.path.isdir(name):
        raise CheckpointError(f"checkpoint {name!r} is a folder, not a checkpoint file")
    if not os.path.exists(name):
        raise CheckpointError(f"checkpoint {name!r} does not exist")
    try:
        size = os.path.getsize(name)
    except OSError as error:
        raise CheckpointError(f"checkpoint {name!r} cannot be read: {_first_line(error)}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {name!r} is empty (0 bytes): it was not written by fastflow or was cut off")
    try:
        state = torch.load(name, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error):
            raise CheckpointError(
                f"checkpoint {name!r} was refused: it holds Python objects other than tensors and plain data, and "
                "fastflow loads checkpoints with weights_only=True so that a file cannot run code"
            ) from None
        raise CheckpointError(f"checkpoint {name!r} is damaged: {_first_line(error)}") from None
    except Exception as error:  # a zip or pickle torn apart: truncation, garbage, the wrong kind of file
        raise CheckpointError(
            f"checkpoint {name!r} cannot be read ({size} bytes): it is truncated, damaged or not a checkpoint "
            f"({_first_line(error)})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name!r} holds a {type(state).__name__}, not a fastflow checkpoint")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is None:
        warnings.warn(f"checkpoint {name!r} has no checksum (written by fastflow < 0.5): its contents are not "
                      "verified", stacklevel=2)
        return state
    expected = stored.get("sha256") if isinstance(stored, dict) else None
    try:
        actual = content_digest(state)
    except TypeError as error:
        raise CheckpointError(f"checkpoint {name!r} is damaged: {error}") from None
    if expected != actual:
        raise CheckpointError(
            f"checkpoint {name!r} is damaged: its contents do not match the checksum written with them (sha256 "
            f"{str(expected)[:12]}… recorded, {actual[:12]}… found); it was changed after fastflow wrote it"
        )
    return state


# --------------------------------------------------------------------------------------------------
# Run folders.

def _step_files(folder: str | os.PathLike) -> list[tuple[int, str]]:
    found = []
    for path in glob.glob(os.path.join(folder, "checkpoint-*.pt")):
        match = _STEP_FILE.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_files(folder: str | os.PathLike) -> list[str]:
    """The checkpoints of a run folder, newest first: ``checkpoint-<step>.pt`` by step, and ``checkpoint.pt``
    first when it is not a link to one of them (a copied or hand-placed latest checkpoint)."""
    steps = [path for _, path in reversed(_step_files(folder))]
    latest = os.path.join(folder, LATEST)
    if os.path.lexists(latest):
        try:
            linked = any(os.path.samefile(latest, path) for path in steps)
        except OSError:
            linked = False
        if not linked:
            steps.insert(0, latest)
    return steps


def check_fresh_start(folder: str | os.PathLike) -> None:
    """A run started afresh (no resume, no overwrite) must not land on another run's checkpoints: ValueError."""
    existing = checkpoint_files(folder) if os.path.isdir(folder) else []
    if existing:
        raise ValueError(
            f"--out {os.fspath(folder)} already holds a run's checkpoints ({os.path.basename(existing[0])}, ...): add "
            "--resume to continue it, --overwrite to start afresh and delete them, or give another --out"
        )


def save_run_checkpoint(state: dict[str, Any], folder: str | os.PathLike, keep: int = 3) -> str:
    """Write ``checkpoint-<step>.pt`` and point ``checkpoint.pt`` at it (both atomic); keep the newest ``keep``."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    path = os.path.join(folder, f"checkpoint-{int(state['step']):08d}.pt")
    save_checkpoint(state, path)
    latest = os.path.join(folder, LATEST)
    link = os.path.join(folder, f".tmp-link-{os.getpid()}.pt")
    if os.path.exists(link):
        os.unlink(link)
    os.link(path, link)
    os.replace(link, latest)
    for _, old in _step_files(folder)[:-keep]:
        os.unlink(old)
    return path


def newest_intact_checkpoint(
    folder: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[str | None, dict[str, Any] | None, list[tuple[str, str]]]:
    """``(path, state, skipped)``: the newest checkpoint of ``folder`` that loads and matches its checksum (None,
    None when there is none) and, for every newer one passed over, ``(path, why)``."""
    skipped = []
    for path in checkpoint_files(folder):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return path, load_checkpoint(path, map_location), skipped
        except CheckpointError as error:
            skipped.append((path, str(error)))
    return None, None, skipped


def latest_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest checkpoint in ``folder`` that loads and matches its checksum, else None."""
    return newest_intact_checkpoint(folder)[0]


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the ``.tmp-*`` files a killed writer left in ``folder``; returns their paths."""
    stale = glob.glob(os.path.join(folder, ".tmp-*"))
    for path in stale:
        os.unlink(path)
    return stale
