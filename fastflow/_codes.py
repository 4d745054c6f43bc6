"""The integer codes that the Python ops, the Triton kernels and the C++/CUDA kernels share: one source.

The custom ops pass the coupling's mask and scale as integers (``tl.constexpr`` in the Triton kernels, template
or switch arguments in C++). They are defined here once; ``csrc/codes.h`` is generated from this file
(``python -m fastflow._codes > csrc/codes.h``) and ``tests/test_codes.py`` fails when it is not current. This
module imports nothing, so that ``setup.py``, the kernels and the ops can all read it.
"""

from __future__ import annotations

#: ``mask`` of the coupling op: the halves of dimension 1, or the spatial (index) parity.
MASK_CHANNEL = 0
MASK_CHECKERBOARD = 1

#: ``scale`` of the coupling op: Glow's ``sigmoid(h + 2)``, RealNVP's soft-clamped ``exp``, NICE's additive (none).
SCALE_SIGMOID = 0
SCALE_EXP = 1
SCALE_ADDITIVE = 2

MASK_CODES: dict[str, int] = {"channel": MASK_CHANNEL, "checkerboard": MASK_CHECKERBOARD}
SCALE_CODES: dict[str, int] = {"sigmoid": SCALE_SIGMOID, "exp": SCALE_EXP, "additive": SCALE_ADDITIVE}
MASK_NAMES: dict[int, str] = {code: name for name, code in MASK_CODES.items()}
SCALE_NAMES: dict[int, str] = {code: name for name, code in SCALE_CODES.items()}


def _enum(name: str, prefix: str, codes: dict[str, int]) -> str:
    members = ", ".join(f"{prefix}{key.capitalize()} = {value}" for key, value in codes.items())
    return f"enum {name} : int64_t {{ {members} }};"


def header() -> str:
    """The text of ``csrc/codes.h``."""
    return "\n".join([
        "// Generated from fastflow/_codes.py by `python -m fastflow._codes > csrc/codes.h`: edit that file, not this",
        "// one (tests/test_codes.py checks that the two agree).",
        "#pragma once",
        "",
        "#include <cstdint>",
        "",
        "namespace fastflow {",
        "",
        _enum("Mask", "kMask", MASK_CODES),
        _enum("Scale", "kScale", SCALE_CODES),
        "",
        "}  // namespace fastflow",
        "",
    ])


if __name__ == "__main__":
    print(header(), end="")
