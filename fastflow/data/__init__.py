"""Data sets: the built-in default (scikit-learn's 8×8 digits), loaded by a ``SPEC`` string.

Image kinds (``ImageData``): ``idx:DIR`` loads MNIST-format folders (MNIST, Fashion-MNIST), ``fashion-mnist`` finds
Fashion-MNIST by itself, ``npz:PATH`` reads a NumPy archive (CIFAR-style arrays; ``binarized-mnist`` finds binarized
MNIST by itself) and ``folder:DIR`` a folder of image files. ``text:PATH`` reads a UTF-8 file as characters
(``TextData``), for language models; ``tinyshakespeare`` finds the char-rnn corpus by itself, and ``pysource`` is the
built-in text corpus, the Python standard library's source. A relative path is taken from the current directory,
else from ``$FASTFLOW_DATA``. More kinds join ``load`` by registration in ``fastflow.data.registry``.
"""

from fastflow.data.digits import load_digits
from fastflow.data.folder import load_folder
from fastflow.data.idx import load_fashion_mnist, load_idx, read_idx
from fastflow.data.npz import load_binarized_mnist, load_npz
from fastflow.data.pysource import load_pysource
from fastflow.data.registry import ImageData, load, register_loader
from fastflow.data.text import TextData, load_text, load_tinyshakespeare

__all__ = [
    "ImageData",
    "load_binarized_mnist",
    "TextData",
    "load",
    "load_digits",
    "load_fashion_mnist",
    "load_folder",
    "load_idx",
    "load_npz",
    "load_pysource",
    "load_text",
    "load_tinyshakespeare",
    "read_idx",
    "register_loader",
]
