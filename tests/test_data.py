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
from fastflow.data import ImageData, TextData, read_idx

paths_module = importlib.import_module("fastflow.data.paths")

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
    monkeypatch.setattr(paths_module, "SHARED_DATA", tmp_path / "shared" / "data")
    with pytest.raises(FileNotFoundError, match="FASTFLOW_DATA") as error:
        fastflow.data.load("fashion-mnist")
    assert str(tmp_path / "empty" / "fashion-mnist") in str(error.value)
    assert str(tmp_path / "shared" / "data" / "fashion-mnist") in str(error.value)


def test_binarized_mnist_missing_says_set_fastflow_data(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTFLOW_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(paths_module, "SHARED_DATA", tmp_path / "shared" / "data")
    with pytest.raises(FileNotFoundError, match="FASTFLOW_DATA") as error:
        fastflow.data.load("binarized-mnist")
    assert str(tmp_path / "empty" / "binarized_mnist" / "binarized_mnist.npz") in str(error.value)


def test_binarized_mnist_has_its_papers_splits():
    """Larochelle & Murray's split: 50,000 / 10,000 / 10,000 binary images, the validation split kept apart."""
    path = paths_module.SHARED_DATA / "binarized_mnist" / "binarized_mnist.npz"
    if not path.is_file():
        pytest.skip(f"binarized MNIST not found at {path}")
    data = fastflow.data.load("binarized-mnist")
    assert (data.name, data.levels, data.shape) == ("binarized-mnist", 2, (1, 28, 28))
    assert (len(data.train), len(data.valid), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.train.dtype == data.valid.dtype == torch.uint8 and int(data.valid.max()) == 1
    assert not torch.equal(data.valid[:100], data.test[:100])
    same = fastflow.data.load(f"binarized-mnist:{path}")
    assert torch.equal(same.valid, data.valid)


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
    if paths_module.SHARED_DATA / "fashion-mnist" != FASHION_MNIST:
        pytest.skip("fastflow is not imported from this checkout, so the alias looks elsewhere")
    data = fastflow.data.load("fashion-mnist")
    assert data.test.shape == (10000, 1, 28, 28)
    assert torch.equal(data.test, fashion_mnist.test) and torch.equal(data.test_labels, fashion_mnist.test_labels)


# The ``npz:PATH`` kind.

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BINARIZED_MNIST = SHARED_DATA / "binarized_mnist" / "binarized_mnist.npz"
TINY_SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"


def nchw_images(n: int, channels: int = 1, size: tuple[int, int] = (4, 5), high: int = 256, seed: int = 0):
    return np.random.default_rng(seed).integers(0, high, (n, channels, *size), dtype=np.uint8)


@pytest.mark.parametrize("keys", [("train", "test"), ("x_train", "x_test"), ("train_data", "test_data")])
def test_npz_key_pairs(tmp_path, keys):
    train, test = nchw_images(5), nchw_images(3, seed=1)
    np.savez(tmp_path / "tiny.npz", **{keys[0]: train, keys[1]: test, "unrelated": np.arange(3)})
    data = fastflow.data.load(f"npz:{tmp_path / 'tiny.npz'}")
    assert isinstance(data, ImageData) and data.name == "tiny" and data.levels == 256
    assert data.train.dtype == torch.uint8 and data.train.shape == (5, 1, 4, 5) and data.test.shape == (3, 1, 4, 5)
    assert np.array_equal(data.train.numpy(), train) and np.array_equal(data.test.numpy(), test)
    assert data.train_labels is None and data.test_labels is None


# Each layout maps the [N, C, H, W] images ``nchw`` to how they are stored.
LAYOUTS = {
    "N,H,W": (1, (4, 5), lambda nchw: nchw[:, 0]),
    "N,1,H,W": (1, (4, 5), lambda nchw: nchw),
    "N,3,H,W": (3, (4, 5), lambda nchw: nchw),
    "N,H,W,3": (3, (4, 5), lambda nchw: nchw.transpose(0, 2, 3, 1)),
    "N,H,W,1": (1, (4, 5), lambda nchw: nchw.transpose(0, 2, 3, 1)),
    "N,3,H,3 (channels first)": (3, (4, 3), lambda nchw: nchw),
    "N,D": (1, (6, 6), lambda nchw: nchw.reshape(len(nchw), -1)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_npz_layouts(tmp_path, layout):
    channels, size, store = LAYOUTS[layout]
    train, test = nchw_images(4, channels, size), nchw_images(2, channels, size, seed=1)
    np.savez(tmp_path / "x.npz", x_train=store(train), x_test=store(test))
    data = fastflow.data.load(f"npz:{tmp_path / 'x.npz'}")
    assert data.shape == (channels, *size)
    assert np.array_equal(data.train.numpy(), train) and np.array_equal(data.test.numpy(), test)
    assert data.train.is_contiguous()


def test_npz_binary_uint8_has_two_levels(tmp_path):
    np.savez(tmp_path / "b.npz", train_data=nchw_images(4, high=2).reshape(4, -1)[:, :16],
             test_data=nchw_images(2, high=2, seed=1).reshape(2, -1)[:, :16])
    data = fastflow.data.load(f"npz:{tmp_path / 'b.npz'}")
    assert data.levels == 2 and data.shape == (1, 4, 4) and int(data.train.max()) == 1


def test_npz_floats_in_unit_interval_have_256_levels(tmp_path):
    train, test = nchw_images(4), nchw_images(2, seed=1)
    # Both conventions of images as floats come back as the same levels: k / 255 and dequantised (k + u) / 256.
    np.savez(tmp_path / "f.npz", train=train.astype(np.float32) / 255,
             test=(test + np.random.default_rng(2).uniform(0, 1, test.shape)) / 256)
    data = fastflow.data.load(f"npz:{tmp_path / 'f.npz'}")
    assert data.levels == 256 and data.train.dtype == torch.uint8
    assert np.array_equal(data.train.numpy(), train) and np.array_equal(data.test.numpy(), test)
    # Floats of {0, 1} are still 256 levels: only uint8 data says it is binary.
    np.savez(tmp_path / "g.npz", train=np.ones((2, 3, 3)), test=np.zeros((1, 3, 3)))
    data = fastflow.data.load(f"npz:{tmp_path / 'g.npz'}")
    assert data.levels == 256 and int(data.train.max()) == 255


@pytest.mark.parametrize("bad, found", [(1.5, r"values in \[0, 1.5\]"), (-0.25, r"values in \[-0.25, 1\]"),
                                        (np.nan, "1 non-finite"), (np.inf, "1 non-finite")],
                         ids=["above", "below", "nan", "inf"])
def test_npz_floats_outside_unit_interval_name_path_and_key(tmp_path, bad, found):
    test = np.linspace(0, 1, 18).reshape(2, 3, 3)
    test[0, 0, 1] = bad  # not the minimum (0) nor the maximum (1), which stay
    path = tmp_path / "f.npz"
    np.savez(path, train=np.zeros((2, 3, 3)), test=test)
    with pytest.raises(ValueError, match=re.escape(f"{path}['test']") + ".*" + found):
        fastflow.data.load(f"npz:{path}")


@pytest.mark.parametrize("keys", [("y_train", "y_test"), ("train_labels", "test_labels")])
def test_npz_labels(tmp_path, keys):
    np.savez(tmp_path / "l.npz", train=nchw_images(4), test=nchw_images(2),
             **{keys[0]: np.array([3, 1, 4, 1], np.uint8), keys[1]: np.array([5, 9], np.int32)})
    data = fastflow.data.load(f"npz:{tmp_path / 'l.npz'}")
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    assert data.train_labels.tolist() == [3, 1, 4, 1] and data.test_labels.tolist() == [5, 9]


def test_npz_labels_of_one_split_only(tmp_path):
    np.savez(tmp_path / "l.npz", train_data=nchw_images(4), test_data=nchw_images(2), test_labels=np.array([7, 8]))
    data = fastflow.data.load(f"npz:{tmp_path / 'l.npz'}")
    assert data.train_labels is None and data.test_labels.tolist() == [7, 8]


def test_npz_label_count_mismatch_names_path_and_key(tmp_path):
    path = tmp_path / "l.npz"
    np.savez(path, train=nchw_images(4), test=nchw_images(2), y_train=np.zeros(3, np.int64), y_test=np.zeros(2))
    with pytest.raises(ValueError, match=re.escape(f"{path}['y_train']") + ".*expected 4 labels"):
        fastflow.data.load(f"npz:{path}")


def test_npz_without_matching_keys_lists_found_and_accepted(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, images=nchw_images(2), train=nchw_images(2))  # ``train`` without ``test`` is no pair
    with pytest.raises(ValueError) as error:
        fastflow.data.load(f"npz:{path}")
    message = str(error.value)
    assert str(path) in message and "images, train" in message
    assert all(name in message for name in ("train/test", "x_train/x_test", "train_data/test_data"))


@pytest.mark.parametrize("train, message", [
    (np.zeros((2, 10), np.uint8), "perfect square"),
    (np.zeros((2, 4, 5, 6), np.uint8), r"C in \{1, 3\}"),
    (np.zeros((2, 1, 4, 5, 1), np.uint8), r"found shape \(2, 1, 4, 5, 1\)"),
    (np.zeros((0, 4, 5), np.uint8), "at least one image"),
    (np.full((2, 4, 5), 300, np.int16), r"0…255, found values in \[300, 300\]"),
    (np.zeros((2, 4, 5), np.complex64), "dtype complex64"),
], ids=["not-square", "channels", "5d", "empty", "int-range", "complex"])
def test_npz_bad_images_name_path_and_key(tmp_path, train, message):
    path = tmp_path / "bad.npz"
    np.savez(path, train=train, test=np.zeros((1, 4, 5), np.uint8))
    with pytest.raises(ValueError, match=re.escape(f"{path}['train']") + ".*" + message):
        fastflow.data.load(f"npz:{path}")


def test_npz_split_shapes_must_agree(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, train=np.zeros((2, 4, 5), np.uint8), test=np.zeros((1, 5, 4), np.uint8))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*\(1, 4, 5\).*\(1, 5, 4\) differ in shape"):
        fastflow.data.load(f"npz:{path}")


@pytest.mark.parametrize("write, message", [
    (lambda path: path.write_text("not an archive"), "not a readable .npz archive"),
    (lambda path: path.write_bytes(b""), "not a readable .npz archive"),
    (lambda path: np.save(open(path, "wb"), np.zeros(3)), "found a single .npy array"),
], ids=["text", "empty", "npy"])
def test_npz_unreadable_file_names_it(tmp_path, write, message):
    path = tmp_path / "broken.npz"
    write(path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        fastflow.data.load(f"npz:{path}")


def test_npz_missing_file_and_missing_argument(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTFLOW_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent.npz")) + ".*expected a file"):
        fastflow.data.load(f"npz:{tmp_path / 'absent.npz'}")
    for spec in ("npz", "npz:"):
        with pytest.raises(ValueError, match="npz:PATH"):
            fastflow.data.load(spec)


@pytest.fixture(scope="module")
def binarized_mnist() -> ImageData:
    if not BINARIZED_MNIST.is_file():
        pytest.skip(f"binarized MNIST not found at {BINARIZED_MNIST} (../shared/data/binarized_mnist from the repo)")
    return fastflow.data.load(f"npz:{BINARIZED_MNIST}")


def test_real_binarized_mnist(binarized_mnist):
    data = binarized_mnist
    assert data.name == "binarized_mnist" and data.levels == 2 and data.shape == (1, 28, 28)
    assert data.train.shape == (50000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert data.train.dtype == torch.uint8 and set(data.train.unique().tolist()) == {0, 1}
    # The file labels only its test set (the sorted MNIST test labels): ten classes, 0…9.
    assert data.train_labels is None and data.test_labels.shape == (10000,)
    assert data.test_labels.unique().tolist() == list(range(10))


# The ``folder:DIR`` kind.

def write_image(path: Path, array: np.ndarray, mode: str | None = None) -> np.ndarray:
    """Save ``array`` (``[H, W]`` grey or ``[H, W, 3]`` RGB, uint8) as an image at ``path``; returns it."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return array


def grey(value: int, size: tuple[int, int] = (3, 4)) -> np.ndarray:
    """A ``[H, W]`` grey image, distinct per ``value``."""
    return ((np.arange(size[0] * size[1]).reshape(size) + value * 7) % 256).astype(np.uint8)


def test_folder_flat_split_last_tenth(tmp_path):
    # 12 images in sorted name order: the last 10% (1 image) is the test set; extensions in any case count.
    arrays = [write_image(tmp_path / "set" / f"img{i:02d}.{('png', 'PNG', 'bmp', 'gif')[i % 4]}", grey(i))
              for i in range(12)]
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    data = fastflow.data.load(f"folder:{tmp_path / 'set'}")
    assert isinstance(data, ImageData) and data.name == "set" and data.levels == 256
    assert data.train.shape == (11, 1, 3, 4) and data.test.shape == (1, 1, 3, 4) and data.train.dtype == torch.uint8
    assert np.array_equal(data.train[:, 0].numpy(), np.stack(arrays[:11]))
    assert np.array_equal(data.test[0, 0].numpy(), arrays[11])
    assert data.train_labels is None and data.test_labels is None


def test_folder_split_folders_with_classes(tmp_path):
    root = tmp_path / "animals"
    for split, count in (("train", 3), ("test", 1)):
        for name in ("dog", "cat", "emu"):
            for i in range(count):
                write_image(root / split / name / f"{i}.png", grey(i))
    data = fastflow.data.load(f"folder:{root}")
    assert data.train.shape == (9, 1, 3, 4) and data.test.shape == (3, 1, 3, 4)
    # Classes by sorted folder name: cat 0, dog 1, emu 2; images in sorted path order.
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and data.test_labels.tolist() == [0, 1, 2]
    assert data.train_labels.dtype == torch.int64


def test_folder_split_folders_without_classes(tmp_path):
    for split, count in (("train", 4), ("test", 2)):
        for i in range(count):
            write_image(tmp_path / "d" / split / f"{i}.png", grey(i))
    data = fastflow.data.load(f"folder:{tmp_path / 'd'}")
    assert data.train.shape == (4, 1, 3, 4) and data.test.shape == (2, 1, 3, 4) and data.train_labels is None


def test_folder_classes_without_split_folders_split_each_class(tmp_path):
    # Sorted paths run class by class: the test set takes the last 10% of each class, not the last class.
    for name, count in (("a", 20), ("b", 10), ("c", 5)):
        for i in range(count):
            write_image(tmp_path / "d" / name / f"{i:02d}.png", grey(i))
    data = fastflow.data.load(f"folder:{tmp_path / 'd'}")
    assert data.test_labels.tolist() == [0, 0, 1, 2]
    assert torch.bincount(data.train_labels).tolist() == [18, 9, 4]


def test_folder_rgb_and_grey_stored_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    colour = write_image(tmp_path / "d" / "a.png", rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
    # Grey pixels in an RGB file, and a palette file: both grey, so one channel when all images are grey.
    write_image(tmp_path / "e" / "a.png", np.repeat(grey(1)[..., None], 3, axis=2))
    write_image(tmp_path / "e" / "b.gif", grey(2), mode="P")
    data = fastflow.data.load(f"folder:{tmp_path / 'e'}")
    assert data.shape == (1, 3, 4) and np.array_equal(data.train[0, 0].numpy(), grey(1))
    assert np.array_equal(data.test[0, 0].numpy(), grey(2))
    # One colour image among grey ones makes every image RGB.
    write_image(tmp_path / "d" / "b.png", grey(3))
    data = fastflow.data.load(f"folder:{tmp_path / 'd'}")
    assert data.shape == (3, 3, 4)
    assert np.array_equal(data.train[0].numpy(), colour.transpose(2, 0, 1))
    assert all(np.array_equal(data.test[0, c].numpy(), grey(3)) for c in range(3))


def test_folder_sizes_must_agree(tmp_path):
    for i in range(3):
        write_image(tmp_path / "d" / f"{i}.png", grey(i))
    odd = tmp_path / "d" / "3.png"
    write_image(odd, grey(0, size=(5, 2)))
    with pytest.raises(ValueError, match=re.escape(str(odd)) + ".*2×5.*4×3") as error:
        fastflow.data.load(f"folder:{tmp_path / 'd'}")
    assert str(tmp_path / "d" / "0.png") in str(error.value)


def test_folder_hidden_files_are_skipped_and_unreadable_images_named(tmp_path):
    for i in range(2):
        write_image(tmp_path / "d" / f"{i}.png", grey(i))
    (tmp_path / "d" / "._0.png").write_bytes(b"macOS metadata")
    assert fastflow.data.load(f"folder:{tmp_path / 'd'}").train.shape == (1, 1, 3, 4)
    broken = tmp_path / "d" / "2.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=re.escape(str(broken)) + ".*not a readable image"):
        fastflow.data.load(f"folder:{tmp_path / 'd'}")


def test_folder_empty_missing_or_half_split(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTFLOW_DATA", raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty")) + ": no image files"):
        fastflow.data.load(f"folder:{tmp_path / 'empty'}")
    write_image(tmp_path / "one" / "a.png", grey(0))
    with pytest.raises(ValueError, match="only one image file"):
        fastflow.data.load(f"folder:{tmp_path / 'one'}")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere")) + ".*expected a folder"):
        fastflow.data.load(f"folder:{tmp_path / 'nowhere'}")
    write_image(tmp_path / "half" / "train" / "a.png", grey(0))
    with pytest.raises(ValueError, match="has train/ but no test/"):
        fastflow.data.load(f"folder:{tmp_path / 'half'}")
    (tmp_path / "split" / "train").mkdir(parents=True)
    write_image(tmp_path / "split" / "test" / "a.png", grey(0))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "split" / "train")) + ": no image files"):
        fastflow.data.load(f"folder:{tmp_path / 'split'}")
    with pytest.raises(ValueError, match="folder:DIR"):
        fastflow.data.load("folder")


# The ``text:PATH`` kind.

def test_text_characters_and_split(tmp_path):
    text = "hello, wörld!\n" * 5  # 70 characters: the last 7 are the test set, the 3 before them validation
    (tmp_path / "greeting.txt").write_text(text, encoding="utf-8")
    data = fastflow.data.load(f"text:{tmp_path / 'greeting.txt'}")
    assert isinstance(data, TextData) and data.name == "greeting"
    assert data.vocab == sorted(set(text)) and data.vocab_size == 12 == data.levels and data.shape == ()
    assert data.train.dtype == torch.int64 and data.train.shape == (60,) and data.test.shape == (7,)
    assert data.valid.shape == (3,)
    assert data.decode(data.train) + data.decode(data.valid) + data.decode(data.test) == text
    assert [data.vocab[token] for token in data.test.tolist()] == list(text[-7:])
    assert torch.equal(data.encode("wörld"), data.train[7:12])
    with pytest.raises(ValueError, match="'Z'"):
        data.encode("Zoo")


def test_text_byte_order_mark_is_not_a_character(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffabcabc".encode())
    assert fastflow.data.load(f"text:{tmp_path / 'bom.txt'}").vocab == ["a", "b", "c"]


@pytest.mark.parametrize("raw, message", [
    (b"caf\xe9 latin-1", r"not UTF-8 text.*byte 0xe9 at offset 3"),
    (b"", "found an empty file"),
    (b"x", "found a single character"),
], ids=["latin-1", "empty", "one-char"])
def test_text_bad_file_names_it(tmp_path, raw, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        fastflow.data.load(f"text:{path}")


def test_text_missing_file_and_argument(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTFLOW_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path)) + r" \(a folder\).*expected a file"):
        fastflow.data.load(f"text:{tmp_path}")  # a folder where a file is expected says so
    with pytest.raises(ValueError, match="text:PATH"):
        fastflow.data.load("text")


def test_real_tiny_shakespeare():
    if not TINY_SHAKESPEARE.is_file():
        pytest.skip(f"tiny-shakespeare not found at {TINY_SHAKESPEARE} (../shared/data/tinyshakespeare from the repo)")
    data = fastflow.data.load(f"text:{TINY_SHAKESPEARE}")
    assert data.name == "input" and data.vocab_size == 65 and data.vocab[0] == "\n"
    assert len(data.train) + len(data.valid) + len(data.test) == 1_115_394
    assert (len(data.train), len(data.valid), len(data.test)) == (948_086, 55_769, 111_539)
    assert data.decode(data.train[:14]) == "First Citizen:"


def test_tinyshakespeare_finds_itself(monkeypatch):
    if not TINY_SHAKESPEARE.is_file():
        pytest.skip(f"tiny-shakespeare not found at {TINY_SHAKESPEARE} (../shared/data/tinyshakespeare from the repo)")
    monkeypatch.setenv("FASTFLOW_DATA", str(TINY_SHAKESPEARE.parent.parent))
    data = fastflow.data.load("tinyshakespeare")
    assert data.name == "tinyshakespeare" and len(data.test) == 111_539
    monkeypatch.setenv("FASTFLOW_DATA", "/nonexistent")
    monkeypatch.setattr(paths_module, "named_data_candidates", lambda name: [TINY_SHAKESPEARE.parent / "x"])
    with pytest.raises(FileNotFoundError, match="tiny-shakespeare not found.*text:PATH"):
        fastflow.data.load("tinyshakespeare")
    with pytest.raises(ValueError, match="takes no argument"):
        fastflow.data.load("tinyshakespeare:x")


# Every kind that takes a path falls back to $FASTFLOW_DATA for a relative one.

def write_npz(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train=nchw_images(2), test=nchw_images(1))


def write_folder(path: Path) -> None:
    for i in range(2):
        write_image(path / f"{i}.png", grey(i))


def write_text(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("abcdefghij")


@pytest.mark.parametrize("kind, name, write", [
    ("npz", "sets/tiny.npz", write_npz), ("folder", "sets/tiny", write_folder), ("text", "sets/tiny.txt", write_text),
])
def test_relative_paths_fall_back_to_fastflow_data(tmp_path, monkeypatch, kind, name, write):
    write(tmp_path / "root" / name)
    monkeypatch.delenv("FASTFLOW_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "root")
    assert fastflow.data.load(f"{kind}:{name}").name == "tiny"  # relative to the current directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(name)):
        fastflow.data.load(f"{kind}:{name}")
    monkeypatch.setenv("FASTFLOW_DATA", str(tmp_path / "root"))
    assert fastflow.data.load(f"{kind}:{name}").name == "tiny"  # under $FASTFLOW_DATA
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "root" / "absent"))):
        fastflow.data.load(f"{kind}:absent")  # both places are named
