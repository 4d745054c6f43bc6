"""The built-in text corpus: the Python standard library's own source files, which every installation has.

Spec ``pysource`` (or ``pysource:N`` for at most ``N`` characters; default 2,000,000, about twice tiny-shakespeare):
the ``*.py`` files below ``sysconfig.get_paths()["stdlib"]``, leaving out third-party packages (``site-packages``,
``dist-packages``) and test suites (``test``, ``tests``, ``idle_test``), in a fixed order (sorted by the SHA-256 of
each file's path relative to the library, so that the splits mix modules instead of taking the alphabet's tail),
concatenated and cut at ``N`` characters. Only files that are pure ASCII are taken, whole and unchanged: the few
that are not (about 2%: names with accents, Unicode tables) would add hundreds of rare characters to the
vocabulary for little text, and replacing their characters would make text that is in no file. The splits are
those of every ``TextData`` (``fastflow.data.text``).

The corpus is the same on every run of one Python installation, not across Python versions (their libraries
differ), so scores compare between runs of one machine's Python.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

from fastflow.data.registry import register_loader
from fastflow.data.text import TextData, text_data

__all__ = ["DEFAULT_CHARACTERS", "load_pysource", "stdlib_sources"]

DEFAULT_CHARACTERS = 2_000_000
_LEFT_OUT = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_sources(root: str | os.PathLike | None = None) -> list[Path]:
    """The standard library's ``*.py`` files below ``root`` (default: this Python's), in the corpus's order."""
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    paths = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in _LEFT_OUT and not name.startswith(".")]
        paths += [Path(folder) / name for name in files if name.endswith(".py")]

    def key(path: Path) -> str:
        return hashlib.sha256(path.relative_to(root).as_posix().encode()).hexdigest()

    return sorted(paths, key=key)


def _characters(argument: str | None) -> int:
    if argument is None:
        return DEFAULT_CHARACTERS
    if not argument.isdigit() or int(argument) < 2:
        raise ValueError(f"data spec 'pysource:N' takes N, the most characters, an integer of 2 or more, got "
                         f"'pysource:{argument}'")
    return int(argument)


@register_loader("pysource")
def load_pysource(argument: str | None = None) -> TextData:
    """``TextData`` of the standard library's source, at most ``argument`` characters (default 2,000,000)."""
    limit = _characters(argument)
    parts, total = [], 0
    for path in stdlib_sources():
        try:
            raw = path.read_bytes()
        except OSError:  # an unreadable file of the installation is not ours to report; the corpus goes without
            continue
        if not raw.isascii():
            continue
        text = raw.decode("ascii")
        if not text.endswith("\n"):
            text += "\n"
        parts.append(text)
        total += len(text)
        if total >= limit:
            break
    root = sysconfig.get_paths()["stdlib"]
    if total < 2:
        raise FileNotFoundError(f"the built-in 'pysource' corpus found no ASCII *.py files under {root}; use "
                                "'text:PATH' with a text file instead")
    return text_data("pysource", "".join(parts)[:limit], where=f"pysource ({root})")
