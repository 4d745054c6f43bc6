"""``save_curves``: PNG loss curves drawn with PIL, for real curves and the edge cases a run produces (no points
yet, a single evaluation, a NaN loss)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from fastflow.train.plot import PALETTE, save_curves


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def pixels_of(array: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((array == np.array(colour, np.uint8)).all(axis=-1).sum())


def test_curves_png_has_the_requested_size_and_each_series_colour(tmp_path):
    series = {
        "train": [(step, 4.0 * math.exp(-step / 300) + 1.0) for step in range(0, 2001, 20)],
        "test": [(step, 4.2 * math.exp(-step / 300) + 1.1) for step in range(0, 2001, 250)],
    }
    path = tmp_path / "curves.png"
    save_curves(path, series, title="glow on digits", size=(500, 300))
    array = read_png(path)
    assert array.shape == (300, 500, 3)
    assert len(np.unique(array.reshape(-1, 3), axis=0)) > 2  # not a blank (or two-colour) canvas
    assert pixels_of(array, PALETTE[0]) > 100 and pixels_of(array, PALETTE[1]) > 100


@pytest.mark.parametrize("series", [
    {},
    {"train": []},
    {"train": [(0, float("nan")), (float("inf"), 1.0)]},
], ids=["no-series", "empty-series", "only-non-finite"])
def test_no_points_draws_the_axes_alone(tmp_path, series):
    path = tmp_path / "empty.png"
    save_curves(path, series, title="nothing yet")
    array = read_png(path)
    assert array.shape == (400, 640, 3)
    assert (array == 0).all(axis=-1).any()  # the black axes and labels
    assert pixels_of(array, PALETTE[0]) <= 200  # no more than the legend's swatch, when the series is named


def test_single_point_is_drawn(tmp_path):
    path = tmp_path / "one.png"
    save_curves(path, {"test": [(100, 2.5)]}, title="one evaluation", xlabel="epoch", ylabel="nats")
    assert pixels_of(read_png(path), PALETTE[0]) > 0


def test_nan_points_are_skipped(tmp_path):
    points = [(0, 3.0), (1, float("nan")), (2, 2.0), (3, float("inf")), (4, 1.5)]
    path = tmp_path / "nan.png"
    save_curves(path, {"train": points, "flat": [(0, 2.0), (4, 2.0)]}, title="with NaN")
    array = read_png(path)
    assert pixels_of(array, PALETTE[0]) > 50 and pixels_of(array, PALETTE[1]) > 50


def test_many_series_cycle_the_palette(tmp_path):
    series = {f"run {i}": [(0, i), (1, i + 0.5)] for i in range(len(PALETTE) + 2)}
    path = tmp_path / "many.png"
    save_curves(path, series, title="many", size=(320, 480))
    assert read_png(path).shape == (480, 320, 3)


def test_too_small_a_size_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="at least"):
        save_curves(tmp_path / "x.png", {}, title="tiny", size=(50, 40))
