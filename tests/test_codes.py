"""The integer codes shared by Python, Triton and C++ have one source (``fastflow/_codes.py``): the C++ header is
generated from it, and the Triton kernels and the ops read it."""

from __future__ import annotations

from pathlib import Path

from fastflow import _codes

ROOT = Path(__file__).resolve().parents[1]


def test_cpp_header_is_generated_from_the_python_codes():
    header = ROOT / "csrc" / "codes.h"
    assert header.read_text() == _codes.header(), (
        "csrc/codes.h is stale: regenerate it with `python -m fastflow._codes > csrc/codes.h`"
    )


def test_codes_are_distinct():
    assert len(set(_codes.MASK_CODES.values())) == len(_codes.MASK_CODES)
    assert len(set(_codes.SCALE_CODES.values())) == len(_codes.SCALE_CODES)
