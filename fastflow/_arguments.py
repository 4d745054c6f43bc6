"""The checks of the ``fastflow`` command's arguments: argparse ``type=`` validators of numeric options (argparse
then prints ``argument --hidden: must be ...``), the run folder, the output file and the device at the start of a
command, and the one-line report of an ``OSError`` (``cannot write PATH: permission denied``, never a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import sys
from collections.abc import Callable, Iterator

__all__ = [
    "DEVICES",
    "check_device",
    "check_out_file",
    "check_out_folder",
    "describe_os_error",
    "doing",
    "fraction",
    "int_between",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
    "rank",
    "shape_text",
    "warn",
]

DEVICES = ("auto", "cpu", "cuda")

# --------------------------------------------------------------------------------------------------
# Validators of numeric options (argparse ``type=``): argparse prints "argument --hidden: must be ...".


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer of 1 or more."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of 0 or more."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer of 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = _number(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more."""
    value = _number(text, float)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text}")
    return value


def probability(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in ``[0, 1)`` (a dropout rate)."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer in ``low..high``."""

    def check(text: str) -> int:
        value = _number(text, int)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in {low}..{high}, got {text}")
        return value

    check.__name__ = f"int_{low}_to_{high}"
    return check


# --------------------------------------------------------------------------------------------------
# Checks at the start of a command, and the one-line report of an OSError.


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def warn(message: str) -> None:
    if rank() == 0:
        print(f"fastflow: warning: {message}", file=sys.stderr)


def shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(size) for size in shape)


def check_device(device: str | None) -> str:
    """The device asked for ('auto', 'cpu' or 'cuda'), refused at once when it is 'cuda' and there is no GPU."""
    device = device or "auto"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise ValueError(f"--device cuda: this machine has no CUDA GPU ({why}); use --device cpu or auto")
    return device


def check_out_folder(out: str, flag: str = "--out") -> None:
    """Refuse a run folder that is a file, lies under a file, cannot be written, or holds a checkpoint.pt (or
    metrics.jsonl) that is not a file: before any data is loaded or model built."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{flag} {out} is a file, not a folder: give a run folder")
    if os.path.isdir(out):
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {out}: the folder is not writable (permission denied)")
        for name in ("checkpoint.pt", "metrics.jsonl"):
            inside = os.path.join(out, name)
            if os.path.exists(inside) and not os.path.isfile(inside):
                raise ValueError(f"{flag} {out}: {inside} is a folder, not a file; move it away or give another "
                                 f"{flag}")
        return
    # The folder does not exist yet: its nearest existing parent must be a writable folder.
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {out}: cannot create it, {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: cannot create it in {parent} (permission denied)")


def check_out_file(path: str, flag: str = "--out", *, text: bool = False) -> None:
    """Refuse an image file name (``text``: a text file name) that is a folder, has no image extension (``.txt``),
    or whose folder is missing or not writable."""
    example = "samples.txt" if text else "samples.png"
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder: give a file name such as {os.path.join(path, example)}")
    extension = os.path.splitext(path)[1].lower()
    if text:
        if extension != ".txt":
            raise ValueError(f"{flag} {path}: a text model's samples are text: give a file name ending in .txt, or "
                             f"no {flag} to print them")
    else:
        from PIL import Image

        Image.init()
        if extension not in Image.registered_extensions():
            raise ValueError(f"{flag} {path}: give an image file name ending in .png (or .jpg, ...)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise ValueError(f"{flag} {path}: its folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {path}: cannot write there (permission denied)")


_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "the file is too large",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOTEMPTY: "the folder is not empty",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
}
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


@contextlib.contextmanager
def doing(verb: str, path: str | None = None) -> Iterator[None]:
    """Label an OSError raised inside with what the command was doing (``read``, ``write``) and where."""
    try:
        yield
    except OSError as error:
        if not hasattr(error, "fastflow_action"):
            error.fastflow_action = (verb, path)
        raise


def describe_os_error(error: OSError) -> str:
    """``cannot write /x/y: permission denied`` rather than ``[Errno 13] Permission denied: '/x/y'``."""
    from fastflow.train.lock import RunLockedError

    if isinstance(error, RunLockedError) or error.errno is None:
        return str(error)  # a message of ours (or of the lock), written for people already
    verb, where = getattr(error, "fastflow_action", (None, None))
    if error.errno in _WRITE_ERRORS:
        verb = "write"
    reason = _REASONS.get(error.errno) or (error.strerror or str(error)).lower()
    if error.filename is not None and error.filename2 is not None:
        return f"cannot move {os.fsdecode(error.filename)} to {os.fsdecode(error.filename2)}: {reason}"
    path = os.fsdecode(error.filename) if error.filename is not None else where
    if path:
        return f"cannot {verb or 'access'} {path}: {reason}"
    return f"cannot {verb}: {reason}" if verb else reason
