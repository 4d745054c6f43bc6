"""The built-in default data set: scikit-learn's 1,797 handwritten digits, 1×8×8, 17 grey levels (0…16).

It ships inside scikit-learn, so the quick start needs no download. A fixed split keeps the last 297 images
(about 1/6) for evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

from fastflow.data.registry import ImageData, register_loader

TEST_SIZE = 297


@register_loader("digits")
def load_digits(argument: str | None = None) -> ImageData:
    """``ImageData`` with uint8 images ``[N, 1, 8, 8]`` in ``[0, 17)``; train 1,500, test 297."""
    if argument is not None:
        raise ValueError(f"data spec 'digits' takes no argument, got 'digits:{argument}'")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise ImportError(
            "the built-in 'digits' data set comes from scikit-learn: pip install scikit-learn"
        ) from error
    images = sklearn_digits().images.astype(np.uint8)  # (1797, 8, 8), values 0..16
    images = torch.from_numpy(images)[:, None]
    return ImageData("digits", images[:-TEST_SIZE].clone(), images[-TEST_SIZE:].clone(), levels=17)
