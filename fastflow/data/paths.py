"""Where a data spec's path points: as given (relative to the current directory), else under ``$FASTFLOW_DATA``.

Shared by every loader that takes a path (``idx:DIR``, ``npz:PATH``, ``folder:DIR``, ``text:PATH``), so that one
``FASTFLOW_DATA`` folder serves them all and a missing path is reported the same way everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "SHARED_DATA", "find_named_data", "named_data_candidates", "resolve_data_path"]

DATA_ENV = "FASTFLOW_DATA"
#: The shared data folder beside a source checkout (``../shared/data`` from the repository's root).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def named_data_candidates(name: str) -> list[Path]:
    """Where a data set known by name (``fashion-mnist``, ``binarized_mnist``...) may lie: ``$FASTFLOW_DATA/name``,
    then ``../shared/data/name`` beside the checkout."""
    candidates = []
    root = os.environ.get(DATA_ENV)
    if root:
        candidates.append(Path(root).expanduser() / name)
    candidates.append(SHARED_DATA / name)
    return candidates


def find_named_data(name: str, inside: str | None, *, folder: bool, what: str, holds: str) -> Path:
    """The first of :func:`named_data_candidates` (``/ inside`` each, when given) that is a folder (``folder``) or
    a file. Else ``FileNotFoundError``: ``"<what> not found (tried ...): set FASTFLOW_DATA to the folder that holds
    <holds>"``, where ``holds`` ends with the spec that takes a path instead."""
    candidates = [c / inside if inside else c for c in named_data_candidates(name)]
    for path in candidates:
        if path.is_dir() if folder else path.is_file():
            return path
    raise FileNotFoundError(f"{what} not found (tried {', '.join(map(str, candidates))}): set FASTFLOW_DATA to the "
                            f"folder that holds {holds}")


def _describe(path: Path) -> str:
    if path.is_dir():
        return f"{path} (a folder)"
    if path.exists():
        return f"{path} (a file)"
    return str(path)


def resolve_data_path(argument: str, *, folder: bool, what: str, hint: str = "") -> Path:
    """The folder (``folder=True``) or file ``argument``: as given, else ``$FASTFLOW_DATA/argument`` if relative.

    ``what`` names the thing in the error (``"npz file"``), ``hint`` says what it should be or hold. Raises
    ``FileNotFoundError`` listing every place tried, and what lies there when it is of the wrong kind.
    """
    path = Path(argument).expanduser()
    candidates = [path]
    root = os.environ.get(DATA_ENV)
    if root and not path.is_absolute():
        candidates.append(Path(root).expanduser() / path)
    for candidate in candidates:
        if candidate.is_dir() if folder else candidate.is_file():
            return candidate
    tried = ", ".join(_describe(candidate) for candidate in candidates)
    expected = "a folder" if folder else "a file"
    raise FileNotFoundError(
        f"{what} {argument!r} not found (tried {tried}; expected {expected})" + (f"; {hint}" if hint else "")
    )
