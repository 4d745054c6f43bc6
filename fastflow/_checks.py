"""Argument checks shared by fastflow's layers, models and ops: one function per concern, one message format.

Every check raises a ``TypeError`` (a value of the wrong kind) or a ``ValueError`` (a value out of range) whose
message names the argument, says what was expected and what was given, and where it helps how to fix it
(DESIGN.md, "Bad input").

Checks that only look at Python values, shapes and dtypes cost nothing. Checks of a tensor's *values* need a
host read, a synchronisation for a GPU tensor: :func:`values_readable` says when such a read is possible at all
(not while ``torch.compile`` traces, not for meta or fake tensors); each caller documents when it makes one.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_once",
    "permutation_problem",
    "check_binary",
    "check_flow_input",
    "check_floating",
    "check_int",
    "check_real",
    "check_sizes",
    "check_temperature",
    "check_tokens",
    "sample_arguments",
    "values_readable",
]


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum``; a bool, a float (even ``64.0``) or a string is a ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {expected}, got {value}")
    return int(value)


def check_real(name: str, value: object, *, low: float, high: float, closed: bool = False) -> float:
    """``value`` as a float in ``(low, high)`` (``[low, high]`` with ``closed``); NaN and a bool are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    inside = low <= value <= high if closed else low < value < high
    if not inside:  # NaN is never inside
        interval = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def check_floating(name: str, x: object) -> Tensor:
    """``x`` must be a floating-point tensor: an integer tensor would be silently truncated by a flow layer."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; convert with {name}.float()")
    return x


def check_flow_input(name: str, x: object, channels: int | None, *, dims: Sequence[int] = (4,)) -> Tensor:
    """The input of a flow layer's ``forward``/``inverse``: a float tensor ``[B, C, H, W]`` (or ``[B, C]``)."""
    check_floating(name, x)
    if x.dim() not in dims or (channels is not None and x.shape[1] != channels):
        c = "C" if channels is None else str(channels)
        layouts = {4: f"[B, {c}, H, W]", 2: f"[B, {c}]"}
        expected = " or ".join(layouts.get(d, f"{d}-d") for d in dims)
        raise ValueError(f"{name} must be {expected}, got shape {tuple(x.shape)}")
    return x


def values_readable(*tensors: Tensor) -> bool:
    """Whether the host may read these tensors' values: not while ``torch.compile`` traces (a graph break, or
    an error under ``fullgraph``), not for meta or fake tensors (they have none)."""
    if torch.compiler.is_compiling():
        return False
    from torch._subclasses.fake_tensor import FakeTensor

    return not any(t.device.type == "meta" or isinstance(t, FakeTensor) for t in tensors)


# --------------------------------------------------------------------------------------------------
# Sampling: ``sample(n)``, ``sample((n,))``, ``sample(torch.Size([n, m]))`` and the temperature.


def _sample_shape(n: object) -> tuple[int, ...]:
    if isinstance(n, bool):
        raise TypeError(f"n must be a non-negative int or a shape (tuple / torch.Size of ints), got bool {n!r}")
    if isinstance(n, numbers.Integral):
        shape = (int(n),)
    elif isinstance(n, (tuple, list)):  # torch.Size is a tuple
        if any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in n):
            raise TypeError(f"n must be a non-negative int or a shape (tuple / torch.Size of ints), got {n!r}")
        shape = tuple(int(d) for d in n)
    else:
        raise TypeError(
            f"n must be a non-negative int or a shape (tuple / torch.Size of ints), got {type(n).__name__} {n!r}"
        )
    if any(d < 0 for d in shape):
        raise ValueError(f"n must be a non-negative int (or a shape of them), got {n!r}")
    return shape


def check_temperature(value: object, name: str = "temperature") -> float:
    """A sampling temperature: a finite number ``>= 0`` (NaN and ``inf`` refused, as ``t < 0`` alone lets through)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {type(value).__name__} {value!r}")
    t = float(value)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {t}")
    return t


def sample_arguments(
    n: object, temperature: object, *, levels: int | None = None
) -> tuple[tuple[int, ...], int, float | list[float]]:
    """Parse a model's ``sample(n, temperature)``: ``(shape, count, temperature)``.

    ``n`` is an int or a shape, as ``torch.distributions`` takes it: the model draws ``count = prod(shape)``
    samples and returns them as ``[*shape, ...]`` (``n = 0`` is an empty batch, ``()`` one unbatched sample).
    ``levels``: the model takes one temperature or one per level (a list of that length comes back).
    """
    shape = _sample_shape(n)
    count = math.prod(shape)
    if levels is None:
        return shape, count, check_temperature(temperature)
    if not isinstance(temperature, Sequence) or isinstance(temperature, str):
        return shape, count, [check_temperature(temperature)] * levels
    if len(temperature) != levels:
        raise ValueError(
            f"temperature must be one number >= 0 or one per level ({levels}), got {len(temperature)} values"
        )
    return shape, count, [check_temperature(t, f"temperature[{i}]") for i, t in enumerate(temperature)]


# --------------------------------------------------------------------------------------------------
# Binary data: the input of the Bernoulli models (FVSBN, NADE, MADE).


def _may_read_values(x: Tensor) -> bool:
    """The host-read policy of the value checks (as ``fastflow.models.quantization``): a CPU tensor is always
    read (a memory read); a GPU tensor only outside autograd (evaluation, interactive calls), never in a
    differentiable call (a training step makes no host synchronisation), never under ``torch.compile``."""
    return values_readable(x) and (x.device.type == "cpu" or not torch.is_grad_enabled())


def check_binary(name: str, x: object, *, dtype: torch.dtype | None = None) -> Tensor:
    """``x`` as floats in ``{0., 1.}``: a float tensor of zeros and ones, a bool tensor, or an integer tensor
    (uint8, int64, ...) of zeros and ones, converted to ``dtype`` (by default a float ``x`` keeps its dtype, the
    others become float32).

    Anything else is refused: a non-tensor or a complex tensor (``TypeError``), any other value — ``0.5``, ``2``,
    ``-1``, NaN — a ``ValueError`` naming ``x`` (one host read, when :func:`_may_read_values` allows it; otherwise
    the bad values become NaN, so that a training loss turns NaN instead of silently wrong).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of zeros and ones, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be binary (0 or 1) as a float, bool or integer tensor, got {x.dtype}")
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.float32
    if x.dtype == torch.bool or x.numel() == 0:
        return x.to(dtype)
    if _may_read_values(x):
        # One pass where it can be (the check is paid on every training batch): an integer tensor is binary iff
        # its values lie in [0, 1]; a float one iff x·(1 − x) is 0 everywhere (exact: only 0 and 1 give 0, and NaN
        # or an infinity give NaN or −inf). The counts for the message only when something is wrong.
        if x.is_floating_point():
            wrong = bool(torch.count_nonzero(x * (1 - x)))
        elif x.dtype == torch.uint8:
            wrong = bool(x.max() > 1)
        else:
            low, high = torch.aminmax(x)
            wrong = bool(torch.stack([low < 0, high > 1]).any())
        if wrong:
            binary = (x == 0) | (x == 1)  # False at NaN
            bad = int((~binary).sum())
            nans = int(torch.isnan(x).sum()) if x.is_floating_point() else 0
            example = x[~binary].flatten()[0].item()
            what = f"{nans} NaN value(s)" if nans == bad else f"{bad} other value(s), e.g. {example!r}"
            raise ValueError(
                f"{name} must be binary (0 or 1), got {what}; binarize the data first (e.g. (x > 0.5).float())"
            )
        return x.to(dtype)
    binary = (x == 0) | (x == 1)
    y = x.to(dtype)
    return torch.where(binary, y, torch.full_like(y, torch.nan))


# --------------------------------------------------------------------------------------------------
# Tokens: the input of the language models (CharRNN).


def check_tokens(name: str, x: object, vocab_size: int, *, dims: int = 2) -> tuple[Tensor, Tensor | None]:
    """``x`` as int64 token indices in ``[0, vocab_size)`` of shape ``[B, T]`` (``dims=2``) or ``[T]`` (``dims=1``),
    and a bool mask ``[same shape]`` of the invalid tokens, or None when every token is known to be valid.

    A non-tensor, a float, bool or complex tensor is a ``TypeError``; a wrong number of dimensions or a token out of
    range a ``ValueError`` naming ``x``. The range check is a host read when :func:`_may_read_values` allows it;
    otherwise (a GPU tensor inside autograd, ``torch.compile``) the invalid tokens come back clamped into range
    with their mask, so that the caller turns what depends on them into NaN instead of crashing in an embedding
    kernel or giving a silently wrong result.
    """
    layout = "[B, T]" if dims == 2 else "[T]"
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout} of token indices (int64), got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token indices (int64), got {x.dtype}; tokens come "
                        f"from a vocabulary's encode(), or convert with {name}.long()")
    if x.dim() != dims:
        raise ValueError(f"{name} must be {layout} token indices, got shape {tuple(x.shape)}")
    x = x.long()
    if x.numel() == 0:
        return x, None
    if _may_read_values(x):
        low, high = torch.aminmax(x)
        if bool(torch.stack([low < 0, high >= vocab_size]).any()):
            bad = x[(x < 0) | (x >= vocab_size)]
            raise ValueError(f"{name} must hold tokens in [0, {vocab_size}) (the vocabulary size), got "
                             f"{bad.numel()} outside, e.g. {bad[0].item()}")
        return x, None
    invalid = (x < 0) | (x >= vocab_size)
    return x.clamp(0, vocab_size - 1), invalid


def check_sizes(name: str, value: object, *, allow_empty: bool = True) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints (layer widths such as ``hidden_sizes``): an int is one size; a
    sequence (tuple, list, torch.Size) is taken as it is; a string, a float or a bool is a ``TypeError``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a tuple of positive ints (or one int), got {type(value).__name__} {value!r}")
    sizes = tuple(check_int(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not sizes and not allow_empty:
        raise ValueError(f"{name} must hold at least one size, got {value!r}")
    return sizes


def permutation_problem(values: list[int], size: int) -> str | None:
    """What keeps ``values`` from being a permutation of ``0..size−1`` (in words), or None when it is one."""
    if sorted(values) == list(range(size)):
        return None
    outside = sorted({v for v in values if not 0 <= v < size})
    if outside:
        return f"{outside[0]} is out of range"
    repeated = sorted({v for v in values if values.count(v) > 1})
    missing = sorted(set(range(size)) - set(values))
    return f"{repeated[0]} appears more than once and {missing[0]} never"


# id(tensor) -> (weak reference, version counter) of the tensors whose values a check_once call accepted. (Not a
# WeakKeyDictionary: its lookups compare tensors with ``==``.)
_CHECKED: dict[int, tuple[weakref.ref, int]] = {}


def check_once(tensors: Sequence[Tensor], check) -> None:
    """Run ``check()`` (a host read of ``tensors``' values) unless every tensor was accepted before at its current
    version: a caller passing the same buffers every step pays the read once, an in-place edit is seen again.
    Inference tensors keep no version counter and are checked every call."""
    try:
        versions = [t._version for t in tensors]
    except RuntimeError:
        check()
        return

    def known(t: Tensor, version: int) -> bool:
        entry = _CHECKED.get(id(t))
        return entry is not None and entry[0]() is t and entry[1] == version

    if all(known(t, v) for t, v in zip(tensors, versions, strict=True)):
        return
    check()
    if len(_CHECKED) > 256:
        _CHECKED.clear()
    for t, v in zip(tensors, versions, strict=True):
        _CHECKED[id(t)] = (weakref.ref(t), v)
