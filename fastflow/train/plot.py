"""PNG line plots of training curves (e.g. train and test bits/dim against step), drawn with PIL alone.

matplotlib is only an optional benchmark dependency; PIL is already required (``save_grid``), so a run can always
write its loss curve.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "save_curves"]

# matplotlib's "tab10": distinct at a glance, and familiar from other plots.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
BACKGROUND = (255, 255, 255)
FOREGROUND = (0, 0, 0)
GRID = (225, 225, 225)
MARGIN = 0.05  # of the data's y span, above and below
MIN_SIZE = (160, 120)

Point = tuple[float, float]


def _finite(points: Iterable[Sequence[float]]) -> list[Point]:
    """The points ``(x, y)`` whose coordinates are both finite numbers, in their order."""
    kept = []
    for x, y in points:
        x, y = float(x), float(y)
        if math.isfinite(x) and math.isfinite(y):
            kept.append((x, y))
    return kept


def _range(values: list[float], margin: float) -> tuple[float, float]:
    """``[lo, hi]`` covering ``values`` with ``margin`` of their span each side; never empty, ``[0, 1]`` if none."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    span = high - low
    if span == 0:
        # One value (or a flat line) has no span to take a margin of: centre it in a window of its own scale.
        half = abs(low) * 0.05 or 0.5
        return low - half, high + half
    return low - margin * span, high + margin * span


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (steps 1, 2 or 5 × 10^k) inside ``[low, high]``."""
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9)
    ticks = []
    value = first * step
    while value <= high + 1e-9 * step:
        ticks.append(0.0 if abs(value) < 1e-12 * step else value)
        first += 1
        value = first * step
    return ticks


def _label(value: float, ticks: list[float]) -> str:
    """``value`` with as many decimals as the tick step needs, so neighbouring labels differ."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(value) or 1.0
    if step >= 1e5 or step < 1e-3:
        return f"{value:.3g}"
    return f"{value:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _put(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, x: float, y: float, *,
         horizontal: float = 0.0, vertical: float = 0.0) -> None:
    """Write ``text`` with the point ``(horizontal, vertical)`` of its box (0 left/top, 1 right/bottom) at ``(x, y)``.

    Placed by its measured box rather than by PIL's ``anchor``, which bitmap fonts (PIL without FreeType) lack.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((x - left - horizontal * (right - left), y - top - vertical * (bottom - top)), text,
              fill=FOREGROUND, font=font)


def save_curves(
    path: str | os.PathLike,
    series: Mapping[str, Sequence[Sequence[float]]],
    *,
    title: str,
    xlabel: str = "step",
    ylabel: str = "bits/dim",
    size: tuple[int, int] = (640, 400),
) -> None:
    """Write a PNG of ``size`` (width, height) plotting each ``series[name]``, a list of ``(x, y)``, as a line.

    Colours follow ``PALETTE`` in the order of ``series``; a legend names them. The y range is the data's with a 5%
    margin; points with a non-finite coordinate (a NaN loss) are left out, a lone point is drawn as a dot, and with
    no points at all the axes are drawn alone.
    """
    width, height = (int(side) for side in size)
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise ValueError(f"size must be at least {MIN_SIZE[0]}×{MIN_SIZE[1]} (width, height), got {tuple(size)}")
    curves = {str(name): _finite(points) for name, points in series.items()}
    x_low, x_high = _range([x for points in curves.values() for x, _ in points], margin=0.0)
    y_low, y_high = _range([y for points in curves.values() for _, y in points], margin=MARGIN)
    x_ticks, y_ticks = _ticks(x_low, x_high), _ticks(y_low, y_high)

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    line_height = _text_size(draw, "0Ag", font)[1]
    y_labels = [_label(value, y_ticks) for value in y_ticks]
    x_labels = [_label(value, x_ticks) for value in x_ticks]
    label_width = max((_text_size(draw, text, font)[0] for text in y_labels), default=0)
    # The last x tick label is centred on the right edge of the plot: leave room for its half.
    overhang = _text_size(draw, x_labels[-1], font)[0] // 2 if x_labels else 0

    # The plot area: room on the left for the y label and tick labels, below for x tick labels and the x label.
    left = 8 + line_height + 6 + label_width + 6
    right = width - max(12, overhang + 4)
    top = 10 + line_height + 10
    bottom = height - (6 + line_height + 6 + line_height + 8)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

    for value, text in zip(y_ticks, y_labels, strict=True):
        _, y = to_pixel(x_low, value)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.line([(left - 4, y), (left, y)], fill=FOREGROUND)
        _put(draw, text, font, left - 6, y, horizontal=1.0, vertical=0.5)
    for value, text in zip(x_ticks, x_labels, strict=True):
        x, _ = to_pixel(value, y_low)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(x, bottom), (x, bottom + 4)], fill=FOREGROUND)
        _put(draw, text, font, x, bottom + 6, horizontal=0.5)
    draw.rectangle([left, top, right, bottom], outline=FOREGROUND)

    for index, points in enumerate(curves.values()):
        colour = PALETTE[index % len(PALETTE)]
        pixels = [to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2, joint="curve")
        if len(pixels) == 1:
            (x, y), radius = pixels[0], 3
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)

    _put(draw, title, font, (left + right) / 2, 10, horizontal=0.5)
    _put(draw, xlabel, font, (left + right) / 2, height - 8, horizontal=0.5, vertical=1.0)
    _draw_vertical_text(image, ylabel, font, centre=(8 + line_height / 2, (top + bottom) / 2))
    _draw_legend(draw, list(curves), font, corner=(right - 8, top + 8), line_height=line_height)
    image.save(path, format="PNG")


def _draw_vertical_text(image: Image.Image, text: str, font: ImageFont.ImageFont, centre: tuple[float, float]) -> None:
    """``text`` rotated a quarter turn anticlockwise (read bottom to top), centred on ``centre``."""
    if not text:
        return
    left, top, right, bottom = ImageDraw.Draw(image).textbbox((0, 0), text, font=font)
    # ImageDraw writes only horizontally: draw onto a mask, turn it, and stamp the foreground colour through it.
    mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    corner = (round(centre[0] - mask.width / 2), round(centre[1] - mask.height / 2))
    image.paste(FOREGROUND, (*corner, corner[0] + mask.width, corner[1] + mask.height), mask)


def _draw_legend(draw: ImageDraw.ImageDraw, names: list[str], font: ImageFont.ImageFont, corner: tuple[float, float],
                 line_height: int) -> None:
    """A boxed legend, a colour swatch and name per series, with its top-right corner at ``corner``."""
    if not names:
        return
    swatch, gap, pad = 16, 6, 5
    row = max(line_height, 4) + 4
    text_width = max(_text_size(draw, name, font)[0] for name in names)
    right, top = corner
    left = right - (pad + swatch + gap + text_width + pad)
    bottom = top + pad + row * len(names) + pad - 4
    draw.rectangle([left, top, right, bottom], fill=BACKGROUND, outline=FOREGROUND)
    for index, name in enumerate(names):
        y = top + pad + row * index + (row - 4) / 2
        colour = PALETTE[index % len(PALETTE)]
        draw.line([(left + pad, y), (left + pad + swatch, y)], fill=colour, width=3)
        _put(draw, name, font, left + pad + swatch + gap, y, vertical=0.5)
