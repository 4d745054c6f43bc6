"""Data sets: the built-in default (scikit-learn's 8×8 digits), loaded by a ``SPEC`` string.

More formats (idx, npz, image folders, text) join ``load`` by registration in ``fastflow.data.registry``.
"""

from fastflow.data.digits import load_digits
from fastflow.data.registry import ImageData, load, register_loader

__all__ = ["ImageData", "load", "load_digits", "register_loader"]
