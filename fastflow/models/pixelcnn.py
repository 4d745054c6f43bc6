"""PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks") and Gated PixelCNN (van den Oord et al.
2016, "Conditional Image Generation with PixelCNN Decoders"), with an exact cached sampler.

``p(x) = Π_{i,j} Π_c p(x_{c,i,j} | pixels before (i, j) in raster order, colours before c at (i, j))``, each
conditional a ``levels``-way softmax (a Bernoulli for ``levels=2``).

- :class:`PixelCNN` with ``gated=False``: a 7×7 mask-A convolution, ``num_layers`` residual blocks (ReLU → 1×1 →
  ReLU → k×k mask B → ReLU → 1×1, halving the channels inside, as the paper's Figure 5), and an output head of two
  ReLU → 1×1 mask-B layers. Its receptive field has the known blind spot (pixels up and right of the current one).
- ``gated=True``: a vertical stack (k×k mask V: the rows above and the current row, shifted down one row before it
  feeds the horizontal stack) and a horizontal stack (1×k, mask A then B) of gated units ``tanh(a)·σ(b)``, the
  vertical stack's pre-activations added to the horizontal one through a 1×1 convolution, a residual 1×1 on the
  horizontal stack, and class conditioning (``num_classes``: a learned bias per class on every gate). No blind
  spot: the last pixel depends on every earlier one.

Data: ``x [B, C, H, W]`` (``C`` 1 or 3) as integer levels (uint8 …) in ``[0, levels)``, or floats in ``[0, 1]`` on the
grid ``k / (levels − 1)``; any other value is a ``ValueError`` naming ``x``. The network sees ``2·k/(levels−1) − 1``.

Sampling (``sample``): ancestral, one pixel and colour at a time, by the inverse CDF of caller-visible uniforms
(``noise``, else ``torch.rand``) — so that both samplers give the same images from the same numbers:

- ``method="naive"``: ``C·H·W`` passes of the whole network over the whole image;
- ``method="cached"`` (the default): every layer's output at a position depends only on earlier positions (the
  vertical stack: on earlier rows, once shifted), so it is computed once, when its position comes, from padded
  buffers of its inputs: per pixel one column through the depth (``C`` of them for three colours, since a colour
  group never sees its own or later colours), and per finished row the vertical stack of that row.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow._checks import check_int, sample_arguments
from fastflow.models.quantization import _host_check, bits_per_dim, to_levels
from fastflow.nn.masked_conv import MaskedConv2d
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["PixelCNN"]

SAMPLERS = ("cached", "naive")


def _as_linear(conv: MaskedConv2d) -> tuple[Tensor, Tensor | None]:
    """A 1×1 masked convolution as ``F.linear``'s ``(weight [C_out, C_in], bias)`` at one position, masked once per
    sampling (not once per pixel)."""
    return conv.masked_weight[:, :, 0, 0], conv.bias


def _head(head: list[tuple[Tensor, Tensor | None]], s: Tensor) -> Tensor:
    """The output head at one position, ``s [n, C]`` → ``[n, C·(levels or 1)]``."""
    return F.linear(F.relu(F.linear(F.relu(s), *head[0])), *head[1])


def _gate(pre: Tensor, groups: int) -> Tensor:
    """``tanh(a)·σ(b)`` where each of ``groups`` colour groups of ``pre``'s channels (dim 1) is ``[a, b]``: the result
    keeps the groups contiguous (``2c`` channels → ``c``)."""
    pre = pre.unflatten(1, (groups, 2, -1))
    return (torch.tanh(pre[:, :, 0]) * torch.sigmoid(pre[:, :, 1])).flatten(1, 2)


def _down(x: Tensor) -> Tensor:
    """``x`` shifted down one row (row 0 zeros): row ``i`` of the result is row ``i − 1`` of ``x``."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class _ResidualBlock(nn.Module):
    """PixelCNN's residual block: ``x + 1×1(ReLU(k×k_B(ReLU(1×1(ReLU(x))))))``, ``h → h/2 → h/2 → h``."""

    def __init__(self, channels: int, kernel_size: int, data_channels: int):
        super().__init__()
        inner = channels // 2
        self.reduce = MaskedConv2d(channels, inner, 1, "B", data_channels)
        self.conv = MaskedConv2d(inner, inner, kernel_size, "B", data_channels)
        self.expand = MaskedConv2d(inner, channels, 1, "B", data_channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.expand(F.relu(self.conv(F.relu(self.reduce(F.relu(x))))))


class _GatedLayer(nn.Module):
    """One layer of both stacks of the Gated PixelCNN (van den Oord et al. 2016, Figure 2)."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, data_channels: int, first: bool,
                 num_classes: int | None):
        super().__init__()
        self.first = first
        self.data_channels = data_channels
        self.vertical = MaskedConv2d(in_channels, 2 * channels, kernel_size, "V", 1)
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, (1, kernel_size), "A" if first else "B",
                                       data_channels)
        # The shifted vertical stack carries only rows above: every colour may see it (no mask).
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = MaskedConv2d(channels, channels, 1, "B", data_channels)
        self.embed_v = nn.Embedding(num_classes, 2 * channels) if num_classes else None
        self.embed_h = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def class_bias(self, cond: Tensor | None) -> tuple[Tensor | float, Tensor | float]:
        """The per-class biases ``[B, 2c]`` of the vertical and horizontal gates (0 without classes)."""
        if self.embed_v is None or cond is None:
            return 0.0, 0.0
        return self.embed_v(cond), self.embed_h(cond)

    def forward(self, v: Tensor, h: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        bias_v, bias_h = self.class_bias(cond)
        if isinstance(bias_v, Tensor):
            bias_v, bias_h = bias_v[:, :, None, None], bias_h[:, :, None, None]
        v_pre = self.vertical(v) + bias_v
        h_pre = self.horizontal(h) + self.link(_down(v_pre)) + bias_h
        h_new = self.out(_gate(h_pre, self.data_channels))
        return _gate(v_pre, 1), h_new if self.first else h + h_new


class PixelCNN(nn.Module):
    """PixelCNN / Gated PixelCNN on images of ``levels`` grey (or colour) levels.

    Args:
        in_channels: 1 (grey) or 3 (R, G, B: inside a pixel R, then G, then B).
        levels: the number of levels per colour (2: a Bernoulli per pixel, e.g. binarized MNIST; 256: 8 bits).
        hidden_channels: the width of the residual stream (PixelCNN) or of each stack (gated); with three colours
            divisible by 6 (PixelCNN's blocks halve it) or by 3 (gated).
        num_layers: residual blocks (PixelCNN) or gated layers after the first (gated): each holds one k×k masked
            convolution.
        gated: the Gated PixelCNN (no blind spot, gated units, class conditioning).
        num_classes: classes to condition on (gated only): ``forward``/``log_prob``/``sample`` take ``cond``, the
            class indices ``[B]``.
        image_size: ``H`` or ``(H, W)`` of the samples ``sample`` draws by default (the network itself takes any size).
        kernel_size: the first layer's kernel (7: the paper's 7×7 mask A; gated: 7×7 vertical, 1×7 horizontal).
        residual_kernel_size: the k×k of every later layer (3).

    ``forward(x, cond=None)`` returns the logits ``[B, levels, C, H, W]`` (``[B, C, H, W]`` of Bernoulli logits for
    ``levels=2``); ``log_prob(x, cond=None)`` the log-likelihood ``[B]`` in nats (float32, or float64 for a float64
    model).
    """

    def __init__(self, in_channels: int = 1, *, levels: int = 256, hidden_channels: int = 128, num_layers: int = 15,
                 gated: bool = False, num_classes: int | None = None, image_size: int | tuple[int, int] = 28,
                 kernel_size: int = 7, residual_kernel_size: int = 3):
        super().__init__()
        if isinstance(in_channels, bool) or in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (R, G, B), got {in_channels!r}")
        self.levels = check_int("levels", levels, minimum=2)
        hidden = check_int("hidden_channels", hidden_channels)
        self.num_layers = check_int("num_layers", num_layers, minimum=0)
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes)
            if not gated:
                raise ValueError("num_classes needs gated=True (the Gated PixelCNN conditions its gates on a class)")
        for name, k in (("kernel_size", kernel_size), ("residual_kernel_size", residual_kernel_size)):
            if check_int(name, k) % 2 == 0:
                raise ValueError(f"{name} must be odd (the centre tap is the output's own pixel), got {k}")
        divisor = 3 if gated else 6
        if in_channels == 3 and hidden % divisor:
            raise ValueError(f"hidden_channels must be divisible by {divisor} for three colours "
                             f"({'one third per colour' if gated else 'a third per colour of half the width'}), "
                             f"got {hidden}")
        if not gated and hidden < 2:
            raise ValueError(f"hidden_channels must be at least 2 (the residual blocks halve it), got {hidden}")
        size = (image_size, image_size) if isinstance(image_size, numbers.Integral) else tuple(image_size)
        if len(size) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
                                     for s in size):
            raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
        self.in_channels = in_channels
        self.hidden_channels = hidden
        self.gated = bool(gated)
        self.num_classes = num_classes
        self.image_size = (int(size[0]), int(size[1]))
        dc = in_channels
        out_channels = in_channels * (1 if self.levels == 2 else self.levels)
        if self.gated:
            self.layers = nn.ModuleList(
                [_GatedLayer(in_channels, hidden, kernel_size, dc, True, num_classes)]
                + [_GatedLayer(hidden, hidden, residual_kernel_size, dc, False, num_classes)
                   for _ in range(self.num_layers)]
            )
        else:
            self.input = MaskedConv2d(in_channels, hidden, kernel_size, "A", dc)
            self.blocks = nn.ModuleList(_ResidualBlock(hidden, residual_kernel_size, dc)
                                        for _ in range(self.num_layers))
        self.head = nn.ModuleList([MaskedConv2d(hidden, hidden, 1, "B", dc),
                                   MaskedConv2d(hidden, out_channels, 1, "B", dc)])

    # ----------------------------------------------------------------------------------------------
    # Inputs.

    def _parameter(self) -> Tensor:
        return self.head[0].weight

    def _level_values(self, x: object, name: str = "x") -> Tensor:
        """``x`` as level indices ``k`` (floats in the parameters' dtype), checked: shape, device and values."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [B, {self.in_channels}, H, W], got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{name} must be [B, {self.in_channels}, H, W] (images of {self.in_channels} channel"
                             f"{'s' if self.in_channels > 1 else ''}), got shape {tuple(x.shape)}")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(x.shape)}")
        parameter = self._parameter()
        if x.device != parameter.device:
            raise ValueError(f"{name} is on {x.device} but the model is on {parameter.device}; move it with .to(...)")
        k = to_levels(x, self.levels, name=name)  # the range check every image model shares
        if x.is_floating_point() and x.numel() and _host_check(x):
            # A discrete model has no meaning for values between the levels (0.5 of a binary pixel): refuse them
            # rather than round them.
            off = (x.to(k.dtype) * (self.levels - 1) - k).abs() > 1e-3
            if bool(off.any()):
                raise ValueError(f"{name}: float images must hold the levels k/{self.levels - 1} "
                                 f"({self.levels} levels), got {x[off][0].item()!r}; pass the integer levels")
        return k.to(parameter.dtype)

    def _cond(self, cond: object, batch: int) -> Tensor | None:
        if self.num_classes is None:
            if cond is not None:
                raise ValueError("cond was given but the model has no classes (build it with num_classes=...)")
            return None
        if cond is None:
            raise ValueError(f"cond is required: class indices [B] in [0, {self.num_classes})")
        device = self._parameter().device
        if isinstance(cond, numbers.Integral) and not isinstance(cond, bool):
            cond = torch.full((batch,), int(cond), dtype=torch.int64, device=device)
        if not isinstance(cond, Tensor) or cond.is_floating_point() or cond.dtype == torch.bool:
            raise TypeError(f"cond must be an int or an integer tensor of class indices [B], got {cond!r}")
        if tuple(cond.shape) != (batch,):
            raise ValueError(f"cond must have shape ({batch},) (one class per image), got {tuple(cond.shape)}")
        if cond.numel() and bool(((cond < 0) | (cond >= self.num_classes)).any()):
            found = cond[(cond < 0) | (cond >= self.num_classes)][0].item()
            raise ValueError(f"cond must hold class indices in [0, {self.num_classes}), found {found}")
        return cond.to(device=device, dtype=torch.int64)

    def _scale(self, k: Tensor) -> Tensor:
        return k * (2.0 / (self.levels - 1)) - 1.0

    # ----------------------------------------------------------------------------------------------
    # The network.

    def network(self, inputs: Tensor, cond: Tensor | None = None) -> Tensor:
        """The raw output ``[B, C·(levels or 1), H, W]`` (colour groups contiguous) of the network's input
        ``inputs [B, C, H, W]`` (any reals: the scaled levels ``2k/(levels−1) − 1``; the Jacobian tests feed others)."""
        if self.gated:
            v = h = inputs
            for layer in self.layers:
                v, h = layer(v, h, cond)
            s = h
        else:
            s = self.input(inputs)
            for block in self.blocks:
                s = block(s)
        return self.head[1](F.relu(self.head[0](F.relu(s))))

    def _logits(self, raw: Tensor) -> Tensor:
        if self.levels == 2:
            return raw
        b, _, height, width = raw.shape
        return raw.reshape(b, self.in_channels, self.levels, height, width).transpose(1, 2)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The logits of every conditional: ``[B, levels, C, H, W]``, or ``[B, C, H, W]`` for ``levels=2``."""
        k = self._level_values(x)
        return self._logits(self.network(self._scale(k), self._cond(cond, k.shape[0])))

    def log_prob(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``log p(x)`` in nats, ``[B]`` (float32; float64 for a float64 model)."""
        k = self._level_values(x)
        logits = self._logits(self.network(self._scale(k), self._cond(cond, k.shape[0])))
        dtype = accumulation_dtype(logits.dtype)
        if self.levels == 2:
            nll = F.binary_cross_entropy_with_logits(logits.to(dtype), k.to(dtype), reduction="none")
        else:
            nll = F.cross_entropy(logits.to(dtype), k.long(), reduction="none")
        return -nll.flatten(1).sum(1)

    def bits_per_dim(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``−log p(x) / (C·H·W·log 2)``, ``[B]``."""
        return bits_per_dim(self.log_prob(x, cond), x[0].numel())

    # ----------------------------------------------------------------------------------------------
    # Sampling.

    def _draw(self, raw: Tensor, colour: int, u: Tensor, temperature: float) -> Tensor:
        """The level of ``colour`` from the raw output at one position ``raw [n, C·(levels or 1)]`` and the uniforms
        ``u [n]``: the inverse CDF of the (tempered) conditional, ``[n]`` level indices as floats."""
        if self.levels == 2:
            logit = raw[:, colour].to(accumulation_dtype(raw.dtype))
            if temperature == 0:
                return (logit > 0).to(raw.dtype)
            return (u.to(logit.dtype) < torch.sigmoid(logit / temperature)).to(raw.dtype)
        logits = raw[:, colour * self.levels : (colour + 1) * self.levels].to(accumulation_dtype(raw.dtype))
        if temperature == 0:
            return logits.argmax(1).to(raw.dtype)
        cdf = torch.softmax(logits / temperature, dim=1).cumsum(1)
        k = (cdf <= u.to(cdf.dtype)[:, None]).sum(1).clamp(max=self.levels - 1)
        return k.to(raw.dtype)

    @torch.no_grad()
    def sample(self, n: int | tuple[int, ...], temperature: float = 1.0, cond: Tensor | int | None = None, *,
               size: int | tuple[int, int] | None = None, given: Tensor | None = None, known: Tensor | None = None,
               noise: Tensor | None = None, method: str = "cached") -> Tensor:
        """``n`` images ``[n, C, H, W]`` (``[*n, C, H, W]`` for a shape ``n``) as floats in ``[0, 1]`` (levels
        ``k/(levels−1)``), in the parameters' dtype.

        Args:
            n: the number of images, or a shape of them (``given``, ``cond`` and ``noise`` then hold ``prod(n)``).
            temperature: each conditional's logits are divided by it (0: the most likely level, greedily).
            cond: class indices ``[n]`` or one int (models with ``num_classes``).
            size: ``H`` or ``(H, W)`` (default: the model's ``image_size``, or ``given``'s).
            given, known: completion: ``given [n, C, H, W]`` (as ``x`` in ``log_prob``) and a bool mask broadcastable
                to it; the known pixels are kept as given and the others sampled given them (and the earlier ones).
            noise: the uniforms ``[n, C, H, W]`` in ``[0, 1)`` that decide each level (default ``torch.rand``): both
                samplers give the same images from the same noise.
            method: ``"cached"`` (default) or ``"naive"`` (the whole network per pixel and colour).
        """
        batch_shape, count, temperature = sample_arguments(n, temperature)
        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {', '.join(map(repr, SAMPLERS))}, got {method!r}")
        parameter = self._parameter()
        if given is not None:
            k_given = self._level_values(given, "given")
            if k_given.shape[0] != count:
                raise ValueError(f"given must hold n={count} images, got shape {tuple(given.shape)}")
            height, width = k_given.shape[2:]
            if known is None:
                raise ValueError("known is required with given: a bool mask of the pixels to keep")
            if not isinstance(known, Tensor) or known.dtype != torch.bool:
                raise TypeError(f"known must be a bool tensor broadcastable to {tuple(k_given.shape)}, got "
                                f"{known.dtype if isinstance(known, Tensor) else type(known).__name__}")
            try:
                known = torch.broadcast_to(known.to(parameter.device), k_given.shape)
            except RuntimeError:
                raise ValueError(f"known must broadcast to given's shape {tuple(k_given.shape)}, got "
                                 f"{tuple(known.shape)}") from None
        else:
            if known is not None:
                raise ValueError("known needs given (the images whose known pixels to keep)")
            if size is None:
                height, width = self.image_size
            else:
                pair = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
                height, width = (check_int("size", s) for s in pair)
            k_given = None
        shape = (count, self.in_channels, height, width)
        if noise is None:
            noise = torch.rand(shape, device=parameter.device)
        elif not isinstance(noise, Tensor) or tuple(noise.shape) != shape or not noise.is_floating_point():
            raise ValueError(f"noise must be a float tensor of uniforms with shape {shape}, got "
                             f"{tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__}")
        cond = self._cond(cond, count)
        run = self._sample_naive if method == "naive" else self._sample_cached
        k = run(shape, cond, noise.to(parameter.device), temperature, k_given, known)
        return (k / (self.levels - 1)).reshape(*batch_shape, *shape[1:])

    def _decide(self, k: Tensor, raw: Tensor, colour: int, i: int, j: int, noise: Tensor, temperature: float,
                given: Tensor | None, known: Tensor | None) -> Tensor:
        """Set ``k[:, colour, i, j]`` (sampled, or kept where known) and return it ``[n]``."""
        value = self._draw(raw, colour, noise[:, colour, i, j], temperature)
        if given is not None:
            value = torch.where(known[:, colour, i, j], given[:, colour, i, j], value)
        k[:, colour, i, j] = value
        return value

    def _sample_naive(self, shape, cond, noise, temperature, given, known) -> Tensor:
        k = self._parameter().new_zeros(shape)
        _, channels, height, width = shape
        for i in range(height):
            for j in range(width):
                for colour in range(channels):
                    raw = self.network(self._scale(k), cond)[:, :, i, j]
                    self._decide(k, raw, colour, i, j, noise, temperature, given, known)
        return k

    def _sample_cached(self, shape, cond, noise, temperature, given, known) -> Tensor:
        if shape[0] == 0:
            return self._parameter().new_zeros(shape)
        sampler = _GatedCache(self, shape, cond) if self.gated else _ResidualCache(self, shape, cond)
        k = self._parameter().new_zeros(shape)
        _, channels, height, width = shape
        for i in range(height):
            for j in range(width):
                for colour in range(channels):
                    raw = sampler.column(i, j)
                    value = self._decide(k, raw, colour, i, j, noise, temperature, given, known)
                    sampler.set_input(i, j, colour, self._scale(value))
            sampler.finish_row(i)
        return k



class _ResidualCache:
    """PixelCNN's cached sampler: one padded buffer per k×k convolution's input; a pixel's column through the depth
    reads the earlier positions there and writes its own."""

    def __init__(self, model: PixelCNN, shape, cond):
        self.model = model
        n, _, height, width = shape
        like = model._parameter()
        self.input_buffer = model.input.padded_buffer(n, height, width, like=like)
        self.input_weight = model.input.live_weight()
        self.buffers = [block.conv.padded_buffer(n, height, width, like=like) for block in model.blocks]
        self.weights = [block.conv.live_weight() for block in model.blocks]
        self.pointwise = [(_as_linear(block.reduce), _as_linear(block.expand)) for block in model.blocks]
        self.head = [_as_linear(conv) for conv in model.head]

    def set_input(self, i: int, j: int, colour: int, value: Tensor) -> None:
        ph, pw = self.model.input.padding
        self.input_buffer[:, colour, i + ph, j + pw] = value

    def column(self, i: int, j: int) -> Tensor:
        model = self.model
        s = model.input.at(self.input_buffer, i, j, self.input_weight)
        for block, buffer, weight, (reduce, expand) in zip(model.blocks, self.buffers, self.weights, self.pointwise,
                                                            strict=True):
            ph, pw = block.conv.padding
            buffer[:, :, i + ph, j + pw] = F.relu(F.linear(F.relu(s), *reduce))
            s = s + F.linear(F.relu(block.conv.at(buffer, i, j, weight)), *expand)
        return _head(self.head, s)

    def finish_row(self, i: int) -> None:
        pass


class _GatedCache:
    """The Gated PixelCNN's cached sampler: the horizontal stack one pixel at a time from padded buffers of its
    inputs; the vertical stack one row at a time, once the row is complete (its shifted pre-activations then feed
    the next row's horizontal stack)."""

    def __init__(self, model: PixelCNN, shape, cond):
        self.model = model
        n, _, height, width = shape
        like = model._parameter()
        layers = model.layers
        self.h_buffers = [layer.horizontal.padded_buffer(n, height, width, like=like) for layer in layers]
        self.v_buffers = [layer.vertical.padded_buffer(n, height, width, like=like) for layer in layers]
        self.h_weights = [layer.horizontal.live_weight() for layer in layers]
        self.v_weights = [layer.vertical.live_weight() for layer in layers]
        self.out = [_as_linear(layer.out) for layer in layers]
        self.head = [_as_linear(conv) for conv in model.head]
        biases = [layer.class_bias(cond) for layer in layers]
        self.bias_v = [b[0] for b in biases]
        self.bias_h = [b[1] for b in biases]
        # The link's input at row i is the vertical pre-activation of row i − 1: zeros for row 0.
        self.v_pre_above = [like.new_zeros(n, 2 * model.hidden_channels, width) for _ in layers]
        self.link_above = [self._link(layer, above) for layer, above in zip(layers, self.v_pre_above, strict=True)]

    @staticmethod
    def _link(layer: _GatedLayer, v_pre: Tensor) -> Tensor:
        """The 1×1 link of a row of vertical pre-activations ``[n, 2c, W]`` → ``[n, 2c, W]``."""
        weight = layer.link.weight[:, :, 0, 0]
        return torch.einsum("oc,ncw->now", weight, v_pre) + layer.link.bias[None, :, None]

    def set_input(self, i: int, j: int, colour: int, value: Tensor) -> None:
        first = self.model.layers[0]
        ph, pw = first.horizontal.padding
        self.h_buffers[0][:, colour, i + ph, j + pw] = value
        ph, pw = first.vertical.padding
        self.v_buffers[0][:, colour, i + ph, j + pw] = value

    def column(self, i: int, j: int) -> Tensor:
        layers = self.model.layers
        h = None
        for index, layer in enumerate(layers):
            conv = layer.horizontal
            pre = conv.at(self.h_buffers[index], i, j, self.h_weights[index]) + self.link_above[index][:, :, j]
            pre = pre + self.bias_h[index]
            h_new = F.linear(_gate(pre, layer.data_channels), *self.out[index])
            h = h_new if layer.first else h + h_new
            if index + 1 < len(layers):
                ph, pw = layers[index + 1].horizontal.padding
                self.h_buffers[index + 1][:, :, i + ph, j + pw] = h
        return _head(self.head, h)

    def finish_row(self, i: int) -> None:
        layers = self.model.layers
        for index, layer in enumerate(layers):
            bias = self.bias_v[index]
            v_pre = layer.vertical.on_row(self.v_buffers[index], i, self.v_weights[index])
            if isinstance(bias, Tensor):
                v_pre = v_pre + bias[:, :, None]
            self.v_pre_above[index] = v_pre
            self.link_above[index] = self._link(layer, v_pre)
            if index + 1 < len(layers):
                ph, pw = layers[index + 1].vertical.padding
                self.v_buffers[index + 1][:, :, i + ph, pw : pw + v_pre.shape[2]] = _gate(v_pre[:, :, None], 1)[:, :, 0]
