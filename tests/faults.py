"""Damage done to checkpoint files, as disks, copies and people do it: for the checkpoint tests."""

from __future__ import annotations

import os
import zipfile

import numpy as np

__all__ = ["overwrite_middle", "overwrite_tensor_bytes", "truncate"]


def _data_ranges(path) -> list[tuple[int, int]]:
    """``(start, end)`` in the file of every zip member's stored bytes."""
    ranges = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as file:
        for info in archive.infolist():
            file.seek(info.header_offset + 26)
            name_length, extra_length = np.frombuffer(file.read(4), dtype="<u2")
            start = info.header_offset + 30 + int(name_length) + int(extra_length)
            ranges.append((start, start + info.compress_size))
    return ranges


def overwrite_middle(path, count: int = 16) -> None:
    """A few bytes in the middle of the file changed, as a bad disk or a partial copy would: the stored bytes at the
    middle, or the next ones after it. (The padding between zip records carries nothing: bytes changed there leave
    the checkpoint intact, and where the middle falls depends on the lengths of the paths stored in it.)"""
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    start, end = min((r for r in _data_ranges(path) if r[1] > middle and r[1] > r[0]), key=lambda r: r[1])
    first = max(start, middle)
    last = min(end, first + count)
    data[first:last] = bytes((b + 1) % 256 for b in data[first:last])
    open(path, "wb").write(data)


def overwrite_tensor_bytes(path) -> None:
    """Bytes changed inside a tensor's storage, where nothing but the checksum can notice (the zip still reads)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(file.read(4), dtype="<u2")
        start = info.header_offset + 30 + int(name_length) + int(extra_length)
        file.seek(start + info.file_size // 2)
        file.write(b"\x7f\x7f\x7f\x7f")


def truncate(path) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.truncate(size // 2)
