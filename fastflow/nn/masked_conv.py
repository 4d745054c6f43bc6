"""PixelCNN's masked convolution as a drop-in ``nn.Conv2d`` (van den Oord et al. 2016).

:class:`MaskedConv2d` is an ``nn.Conv2d`` (stride 1, "same" padding) whose weight is multiplied by the 0/1 mask of
``fastflow.reference.masked_conv`` (mask A, B or V, one or three data channels), computed by the fused op
``fastflow.ops.masked_conv`` that visits only the unmasked taps. Its ``state_dict`` is exactly ``nn.Conv2d``'s
(``weight`` and ``bias``; the mask is a non-persistent buffer rebuilt from the constructor's arguments), so that
either loads the other's.

For the cached samplers it also computes its output at one position (:meth:`MaskedConv2d.at`) or on one row
(:meth:`MaskedConv2d.on_row`) from a padded buffer of its input (:meth:`MaskedConv2d.padded_buffer`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from fastflow._checks import check_int
from fastflow.ops.masked_conv import check_masked_conv, masked_conv
from fastflow.reference.masked_conv import conv_mask, live_box

__all__ = ["MaskedConv2d"]


class MaskedConv2d(nn.Conv2d):
    """``y = conv2d(x, weight ⊙ mask, bias)``, "same"-padded: output ``(i, j)`` sees only the inputs its mask allows.

    Args:
        in_channels, out_channels, kernel_size, bias, device, dtype: as ``nn.Conv2d`` (``kernel_size`` odd).
        mask_type: ``"A"`` (strictly earlier pixels in raster order: a first layer), ``"B"`` (the pixel itself too:
            every later layer) or ``"V"`` (the rows above and the whole centre row: the Gated PixelCNN's vertical
            stack, which the model shifts down one row).
        data_channels: 1, or 3 for images of three colours: the channels fall in three groups R, G, B, and at the
            centre tap G sees R, B sees R and G (mask B: each group itself too). Channel counts divisible by 3.
        padding: ``"same"`` or ``(kh // 2, kw // 2)`` (the default; anything else would shift the mask);
            ``stride``, ``dilation`` and ``groups`` 1 and ``padding_mode="zeros"`` (the only ones the masks mean).

    Shapes: ``x [B, C_in, H, W]`` (or unbatched ``[C_in, H, W]``) → ``[B, C_out, H, W]``.

    Example:
        >>> layer = MaskedConv2d(1, 16, 7, mask_type="A")
        >>> layer(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 16, 28, 28])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, mask_type: str = "B",
                 data_channels: int = 1, stride=1, padding=None, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None):
        in_channels = check_int("in_channels", in_channels)
        out_channels = check_int("out_channels", out_channels)
        kernel = _pair(kernel_size)
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in kernel):
            raise ValueError(f"kernel_size must be a positive odd int or a pair of them, got {kernel_size!r}")
        check_masked_conv(in_channels, out_channels, kernel, mask_type, data_channels)
        same = (kernel[0] // 2, kernel[1] // 2)
        if padding is None or padding == "same":
            padding = same
        elif _pair(padding) != same:
            raise ValueError(f"padding must be 'same' or {same} for a {kernel[0]}×{kernel[1]} masked convolution "
                             f"(other paddings shift the mask off the output's own pixel), got {padding!r}")
        for name, value in (("stride", stride), ("dilation", dilation)):
            if _pair(value) != (1, 1):
                raise ValueError(f"{name} must be 1 for a masked convolution (the masks are defined per pixel), "
                                 f"got {value!r}")
        if groups != 1:
            raise ValueError(f"groups must be 1 for a masked convolution, got {groups!r}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' (a mask's unseen pixels are zeros), got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel, 1, _pair(padding), 1, 1, bias, "zeros", device, dtype)
        self.mask_type = mask_type
        self.data_channels = data_channels
        # A copy: conv_mask may hand out its cached tensor, which an in-place change of the buffer would corrupt.
        mask = conv_mask(out_channels, in_channels, kernel, mask_type, data_channels, dtype=self.weight.dtype,
                         device=self.weight.device)
        self.register_buffer("mask", mask.clone(), persistent=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}, data_channels={self.data_channels}"

    @property
    def masked_weight(self) -> Tensor:
        """``weight ⊙ mask`` (what the convolution uses)."""
        return self.weight * self.mask.to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Tensor) and x.dim() == 3:  # unbatched, as nn.Conv2d takes it
            return self.forward(x[None])[0]
        return masked_conv(x, self.weight, self.bias, mask_type=self.mask_type, data_channels=self.data_channels)

    # ----------------------------------------------------------------------------------------------
    # One position or one row at a time, for the cached samplers.

    def padded_buffer(self, batch: int, height: int, width: int, *, like: Tensor) -> Tensor:
        """A zero buffer of this layer's input ``[B, C_in, H + ph, W + 2·pw]``: input ``(i, j)`` lives at
        ``(i + ph, j + pw)``, so that the live rows of output ``(i, j)`` are buffer rows ``i .. i + ph``."""
        ph, pw = self.padding
        return like.new_zeros(batch, self.in_channels, height + ph, width + 2 * pw)

    def live_weight(self) -> Tensor:
        """``weight ⊙ mask`` cut to the live corner ``[C_out, C_in, rows, cols]`` (``live_box``)."""
        rows, cols = live_box(self.kernel_size, self.mask_type, self.data_channels)
        return self.masked_weight[:, :, :rows, :cols]

    def at(self, buffer: Tensor, i: int, j: int, live_weight: Tensor | None = None) -> Tensor:
        """The output ``[B, C_out]`` at ``(i, j)`` from :meth:`padded_buffer` ``buffer`` (whose rows up to ``i`` and,
        on row ``i``, columns up to the mask's last live one hold the input)."""
        weight = self.live_weight() if live_weight is None else live_weight
        rows, cols = weight.shape[2:]
        patch = buffer[:, :, i : i + rows, j : j + cols]
        y = patch.reshape(patch.shape[0], -1) @ weight.reshape(weight.shape[0], -1).t()
        return y if self.bias is None else y + self.bias

    def on_row(self, buffer: Tensor, i: int, live_weight: Tensor | None = None) -> Tensor:
        """The outputs ``[B, C_out, W]`` of row ``i`` from ``buffer`` (every live row of the input filled)."""
        weight = self.live_weight() if live_weight is None else live_weight
        rows = weight.shape[2]
        strip = buffer[:, :, i : i + rows]
        width = buffer.shape[3] - 2 * self.padding[1]
        return F.conv2d(strip, weight, self.bias)[:, :, 0, :width]
