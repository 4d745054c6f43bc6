"""The ``idx`` data kind: the idx parser on small written files (gzip'd and plain, well and badly formed), the
``idx:DIR`` and ``fashion-mnist`` specs, and the real Fashion-MNIST when the shared data folder has it."""

from __future__ import annotations

import gzip
import importlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import fastflow
from fastflow.data import ImageData, read_idx

idx_module = importlib.import_module("fastflow.data.idx")

FASHION_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, type_code: int = 0x08, magic: bytes = b"\0\0",
              payload_delta: int = 0) -> Path:
    """Write ``array`` as an idx file at ``path`` (``.gz`` appended when ``gz``); optionally corrupt its header or
    payload: another ``magic``/``type_code``, or ``payload_delta`` bytes cut off (< 0) or appended (> 0)."""
    header = magic + bytes([type_code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    payload = payload[:len(payload) + payload_delta] if payload_delta < 0 else payload + b"\x07" * payload_delta
    data = header + payload
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_folder(folder: Path, *, n_train: int = 5, n_test: int = 3, size: tuple[int, int] = (28, 28),
                    gz: tuple[bool, ...] = (True, False, False, True), seed: int = 0) -> dict[str, np.ndarray]:
    """A small MNIST-format folder of random images and labels; returns the arrays written, by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        NAMES[0]: rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, (n_train,), dtype=np.uint8),
        NAMES[2]: rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for (name, array), zipped in zip(arrays.items(), gz, strict=True):
        write_idx(folder / name, array, gz=zipped)
    return arrays


# The parser.

@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("shape", [(7,), (4, 28, 28), (2, 3, 5), (0, 28, 28)])
def test_read_idx_round_trips(tmp_path, gz, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx", array, gz=gz)
    tensor = read_idx(path)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == shape
    assert np.array_equal(tensor.numpy(), array)
    tensor.add_(1)  # a writable copy, not a view of the file's bytes


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("corruption, message", [
    ({"magic": b"\x01\x00"}, "magic number"),
    ({"magic": b"\x00\x01"}, "magic number"),
    ({"type_code": 0x0D}, r"0x0d \(float32\).*only 0x08 \(uint8\)"),
    ({"type_code": 0x0C}, r"0x0c \(int32\)"),
    ({"payload_delta": -1}, r"needs 24 bytes .* found 23"),
    ({"payload_delta": -24}, r"needs 24 bytes .* found 0"),
    ({"payload_delta": 3}, r"needs 24 bytes .* found 27"),
], ids=["magic0", "magic1", "float32", "int32", "truncated", "no-payload", "trailing"])
def test_malformed_idx_is_a_value_error_naming_the_path(tmp_path, gz, corruption, message):
    path = write_idx(tmp_path / "bad-idx3-ubyte", np.zeros((2, 3, 4), np.uint8), gz=gz, **corruption)
    with pytest.raises(ValueError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("data", [b"", b"\0\0", b"\0\0\x08\x03\0\0\0\x02", b"\x1f\x8b\x08\0garbage"],
                         ids=["empty", "short-magic", "short-header", "bad-gzip"])
def test_short_or_broken_files_are_value_errors(tmp_path, data):
    path = tmp_path / "short"
    path.write_bytes(data)
    with pytest.raises(ValueError) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent"))):
        read_idx(tmp_path / "absent")


# The ``idx:DIR`` spec.

def test_load_idx_folder(tmp_path):
    arrays = make_idx_folder(tmp_path / "tiny")  # a mix of gzip'd and plain files
    data = fastflow.data.load(f"idx:{tmp_path / 'tiny'}")
    assert isinstance(data, ImageData) and data.name == "tiny" and data.levels == 256
    assert data.train.shape == (5, 1, 28, 28) and data.test.shape == (3, 1, 28, 28) and data.shape == (1, 28, 28)
    assert data.train.dtype == torch.uint8 and data.test.dtype == torch.uint8
    assert np.array_equal(data.train[:, 0].numpy(), arrays[NAMES[0]])
    assert np.array_equal(data.test[:, 0].numpy(), arrays[NAMES[2]])
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    assert data.train_labels.tolist() == arrays[NAMES[1]].tolist()
    assert data.test_labels.tolist() == arrays[NAMES[3]].tolist()


def test_load_idx_other_image_size(tmp_path):
    make_idx_folder(tmp_path / "small", size=(6, 9), gz=(False,) * 4)
    data = fastflow.data.load(f"idx:{tmp_path / 'small'}")
    assert data.train.shape == (5, 1, 6, 9) and data.test.shape == (3, 1, 6, 9)


def test_image_data_positional_construction_still_works():
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    data = ImageData("x", images, images, 2)
    assert data.train_labels is None and data.test_labels is None and data.shape == (1, 4, 4)


def test_relative_folder_and_fastflow_data(tmp_path, monkeypatch):
    make_idx_folder(tmp_path / "root" / "sets" / "tiny")
    monkeypatch.delenv("FASTFLOW_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "root")
    assert fastflow.data.load("idx:sets/tiny").train.shape == (5, 1, 28, 28)  # relative to the current directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="sets/tiny"):
        fastflow.data.load("idx:sets/tiny")
    monkeypatch.setenv("FASTFLOW_DATA", str(tmp_path / "root"))
    data = fastflow.data.load("idx:sets/tiny")  # not under the current directory: under $FASTFLOW_DATA
    assert data.name == "tiny" and data.test.shape == (3, 1, 28, 28)


def test_idx_without_folder_is_a_value_error():
    for spec in ("idx", "idx:"):
        with pytest.raises(ValueError, match="idx:DIR"):
            fastflow.data.load(spec)


def test_missing_folder_names_it_and_the_expected_files(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTFLOW_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as error:
        fastflow.data.load(f"idx:{tmp_path / 'nowhere'}")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and all(name in message for name in NAMES)


@pytest.mark.parametrize("missing", NAMES)
def test_missing_file_names_it(tmp_path, missing):
    make_idx_folder(tmp_path / "tiny", gz=(False,) * 4)
    (tmp_path / "tiny" / missing).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "tiny" / missing))) as error:
        fastflow.data.load(f"idx:{tmp_path / 'tiny'}")
    assert all(name in str(error.value) for name in NAMES)


def test_malformed_file_in_folder_names_it(tmp_path):
    make_idx_folder(tmp_path / "tiny", gz=(False,) * 4)
    path = write_idx(tmp_path / "tiny" / NAMES[2], np.zeros((3, 28, 28), np.uint8), payload_delta=-5)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        fastflow.data.load(f"idx:{tmp_path / 'tiny'}")


def test_label_count_mismatch_is_a_value_error(tmp_path):
    make_idx_folder(tmp_path / "tiny", gz=(False,) * 4)
    path = write_idx(tmp_path / "tiny" / NAMES[1], np.zeros(4, np.uint8))  # 4 labels for 5 images
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*expected 5 labels"):
        fastflow.data.load(f"idx:{tmp_path / 'tiny'}")


# The ``fashion-mnist`` alias.

def test_fashion_mnist_alias_uses_fastflow_data(tmp_path, monkeypatch):
    arrays = make_idx_folder(tmp_path / "fashion-mnist", n_train=4, n_test=2)
    monkeypatch.setenv("FASTFLOW_DATA", str(tmp_path))
    data = fastflow.data.load("fashion-mnist")
    assert data.name == "fashion-mnist" and data.train.shape == (4, 1, 28, 28) and data.test.shape == (2, 1, 28, 28)
    assert data.test_labels.tolist() == arrays[NAMES[3]].tolist()
    with pytest.raises(ValueError, match="takes no argument"):
        fastflow.data.load("fashion-mnist:x")


def test_fashion_mnist_alias_missing_says_set_fastflow_data(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTFLOW_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(idx_module, "_REPO_ROOT", tmp_path / "checkout")
    with pytest.raises(FileNotFoundError, match="FASTFLOW_DATA") as error:
        fastflow.data.load("fashion-mnist")
    assert str(tmp_path / "empty" / "fashion-mnist") in str(error.value)
    assert str(tmp_path / "shared" / "data" / "fashion-mnist") in str(error.value)


# The real Fashion-MNIST, from the shared data folder beside the checkout.

@pytest.fixture(scope="module")
def fashion_mnist() -> ImageData:
    if not FASHION_MNIST.is_dir():
        pytest.skip(f"Fashion-MNIST not found at {FASHION_MNIST} (../shared/data/fashion-mnist from the repo root)")
    return fastflow.data.load(f"idx:{FASHION_MNIST}")


def test_real_fashion_mnist(fashion_mnist):
    data = fashion_mnist
    assert data.name == "fashion-mnist" and data.levels == 256 and data.shape == (1, 28, 28)
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert data.train.dtype == torch.uint8 and data.test.dtype == torch.uint8
    assert int(data.train.max()) == 255 and int(data.train.min()) == 0
    assert data.train_labels.shape == (60000,) and data.test_labels.shape == (10000,)
    # Fashion-MNIST is balanced: ten classes 0…9, 6,000 training and 1,000 test images each.
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10


def test_real_fashion_mnist_alias_finds_the_shared_folder(fashion_mnist, monkeypatch):
    monkeypatch.delenv("FASTFLOW_DATA", raising=False)
    if idx_module._REPO_ROOT.parent / "shared" / "data" / "fashion-mnist" != FASHION_MNIST:
        pytest.skip("fastflow is not imported from this checkout, so the alias looks elsewhere")
    data = fastflow.data.load("fashion-mnist")
    assert data.test.shape == (10000, 1, 28, 28)
    assert torch.equal(data.test, fashion_mnist.test) and torch.equal(data.test_labels, fashion_mnist.test_labels)
