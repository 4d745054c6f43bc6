"""Data sets: the built-in default (scikit-learn's 8×8 digits), loaded by a ``SPEC`` string.

``idx:DIR`` loads MNIST-format folders (MNIST, Fashion-MNIST); ``fashion-mnist`` finds Fashion-MNIST by itself.
More formats (npz, image folders, text) join ``load`` by registration in ``fastflow.data.registry``.
"""

from fastflow.data.digits import load_digits
from fastflow.data.idx import load_fashion_mnist, load_idx, read_idx
from fastflow.data.registry import ImageData, load, register_loader

__all__ = ["ImageData", "load", "load_digits", "load_fashion_mnist", "load_idx", "read_idx", "register_loader"]
