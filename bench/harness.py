"""Generic benchmark runner: cases, providers, timing, memory, hardware limits and reports.

An op joins the suite by a module ``bench/bench_<op>.py`` that registers a function returning its
:class:`Case` objects for a device (``@register("<op>")``); nothing here knows about any op. For each case
the runner times every provider in every mode:

- providers: ``reference`` (the eager plain-PyTorch baseline: the fastest plain version a user writes for the
  same result), ``compile`` (``torch.compile`` of that reference, compiled and warmed up before timing, one
  compile per shape), one provider per fastflow backend (``cpu``, ``triton``, ``cuda``: the case's ``fastflow``
  function under ``fastflow.set_backend(name)``), ``fastflow+compile`` (``torch.compile`` of the ``fastflow``
  function under the automatic backend choice: what a user who compiles everything gets), and any extra
  provider the case declares (e.g. ``cudnn``, ``plain``). A provider that cannot run a case is skipped with its
  reason; one that fails (a case that does not compile) is recorded with its error and the run goes on.
- modes: ``fwd`` (the op, its graph recorded as in training), ``bwd`` (the backward alone, of a graph built
  before the timed region and kept with ``retain_graph``), ``full`` (forward then backward). A case names the
  modes in which the fastflow providers do no work at all (``Case.work_free``): they are timed, but get no
  speed-up and no GB/s ("n/a" in the reports).

Order and budget: the cases run by :func:`priority` (the acceptance shapes of every op first, then their 16-bit
versions, the working sets of 256 MB or more, the other op cases, and the whole-model cases last: they compile
for minutes), each in the modes ``fwd``, ``bwd``, ``full``. Under a :class:`TimeBudget` (``--time-budget``) a
(case, mode) group that is not expected to fit any more is skipped and listed in the document's
``skipped_for_budget``.

Timing: warm-up, then many samples of ``inner`` back-to-back calls each (``time.perf_counter`` on CPU, CUDA
events on GPU); the median and the 20th/80th percentiles of the per-call time are reported. The inputs
rotate among several sets, so that together they exceed 3x the cache that would otherwise hold them (L2 on
GPU, the last-level cache on CPU; at most 16 sets) and a call does not read what the previous call left in
cache. Achieved GB/s come from each case's explicit byte count and are compared with the copy bandwidth
measured in the same run (a figure above it is flagged: its data came from cache); TFLOP/s (for cases that
count FLOPs) with the measured matmul rate. Peak memory is the largest amount of memory allocated during one
measured call above what was live before it: ``torch.cuda.max_memory_allocated`` on GPU, the CPU allocator's
events seen by ``torch.profiler`` on CPU. Nothing here asserts on speed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import importlib
import importlib.metadata
import json
import math
import os
import pkgutil
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

import fastflow
from fastflow import _backends

MODES: tuple[str, ...] = ("fwd", "bwd", "full")
BACKEND_PROVIDERS: tuple[str, ...] = ("cpu", "triton", "cuda")
BASE_PROVIDERS: tuple[str, ...] = ("reference", "compile")
FASTFLOW_COMPILE = "fastflow+compile"
# The providers that run fastflow's own code: a mode in which it does no work gives them no speed-up.
FASTFLOW_PROVIDERS: tuple[str, ...] = BACKEND_PROVIDERS + (FASTFLOW_COMPILE,)
ALL_PROVIDERS: tuple[str, ...] = BASE_PROVIDERS + FASTFLOW_PROVIDERS
# The speed-ups of every row are taken against these: eager PyTorch, its torch.compile, and fastflow compiled (what
# a fastflow backend called eagerly gains or loses against compiling it).
BASELINES: tuple[str, ...] = BASE_PROVIDERS + (FASTFLOW_COMPILE,)

# Kineto prints two lines each time the profiler (peak memory on CPU) starts and stops; it reads this lazily.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")


# --------------------------------------------------------------------------------------------------
# Cases and the registry.


# The order of a run, most important first (``Case.priority``; cases of one priority keep the registry's order:
# ops by name, each op's cases as its module lists them). A short time budget then measures the acceptance
# shapes of every op, then their 16-bit versions, then the large working sets, and the whole-model cases
# (minutes of compilation each) last.
PRIORITY_ACCEPTANCE, PRIORITY_ACCEPTANCE_16BIT, PRIORITY_LARGE, PRIORITY_OTHER, PRIORITY_MODEL, PRIORITY_MODEL_MORE = (
    range(6))
PRIORITIES: dict[int, str] = {
    PRIORITY_ACCEPTANCE: "acceptance shapes (--quick)",
    PRIORITY_ACCEPTANCE_16BIT: "acceptance shapes in a 16-bit dtype",
    PRIORITY_LARGE: "working sets of 256 MB or more",
    PRIORITY_OTHER: "other op cases",
    PRIORITY_MODEL: "a whole model (--quick)",
    PRIORITY_MODEL_MORE: "other whole-model configurations",
}
LARGE_WORKING_SET_BYTES = 256 * 10**6


@dataclass(frozen=True)
class Case:
    """One benchmark case of one op.

    Attributes:
        op: the fastflow op name (``fastflow._backends`` is asked whether each backend can run it).
        name: unique within the op, e.g. ``affine-channel-sigmoid-B64xC12x32x32-f32``.
        make_inputs: ``(device, dtype, generator) -> {argument name: tensor}``, keyword arguments of every
            provider function. Floating tensors become leaves that require grad (views are fine: they stay
            views, as a conditioner's output slices do).
        fns: provider kind -> function of the inputs returning a tensor or a tuple of tensors. ``"reference"``
            (required) is the eager baseline, the fastest plain PyTorch a user writes for the same result, and
            is also compiled for ``compile``; ``"fastflow"`` is run under each available fastflow backend and
            compiled for ``fastflow+compile``; any other key is a provider of its own (e.g. ``"cudnn"``).
        bytes: mode -> minimum bytes moved by one call (each input read once, each output written once), or
            None where no meaningful count exists; the formula is stated where the case is declared.
        flops: mode -> floating-point operations of one call, or None (memory-bound ops).
        dtype: the inputs' dtype.
        quick: part of ``--quick`` (the acceptance shapes).
        params: shape and options, copied into the results.
        why_not: for the extra providers: ``(provider, device) -> reason or None``.
        contexts: provider -> context-manager factory entered around its calls, backward included, for the
            providers that take no backend of their own (``reference``, ``compile``, extra ones): a model-level
            case forces ``fastflow.set_backend("reference")`` there, so that its baseline is plain PyTorch.
        uses: the fastflow ops a model-level case calls (a backend provider runs it when it runs them all);
            empty: the case's own ``op``.
        work_free: mode -> why the fastflow providers do no work in that mode (e.g. the additive coupling's
            backward, whose gradients are the incoming one and a slice of it): they are still timed, but get
            neither speed-ups nor GB/s, and the reports show "n/a" with the reason.
        priority: where the case comes in the run (lower first: see :data:`PRIORITIES`), so that the most
            important cases are measured when a time budget is short; None: :func:`priority` derives it.
        expected_s: mode -> a rough lower bound of the seconds that measuring the case in that mode takes on this
            device (all providers, compilation included), for the time budget's estimate before a similar
            group has run: e.g. compiling a whole model takes minutes where an op's case takes seconds.
    """

    op: str
    name: str
    make_inputs: Callable[[torch.device, torch.dtype, torch.Generator], dict[str, Tensor]]
    fns: Mapping[str, Callable[..., Tensor | tuple[Tensor, ...]]]
    bytes: Mapping[str, int | None]
    flops: Mapping[str, int | None] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    quick: bool = False
    params: Mapping[str, object] = field(default_factory=dict)
    why_not: Callable[[str, torch.device], str | None] | None = None
    contexts: Mapping[str, Callable[[], object]] = field(default_factory=dict)
    uses: tuple[str, ...] = ()
    work_free: Mapping[str, str] = field(default_factory=dict)
    priority: int | None = None
    expected_s: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("work_free", "expected_s"):
            unknown = set(getattr(self, name)) - set(MODES)
            if unknown:
                raise ValueError(f"{self.op}/{self.name}: {name} names unknown modes {sorted(unknown)}")
        if self.priority is not None and self.priority not in PRIORITIES:
            raise ValueError(f"{self.op}/{self.name}: priority must be one of {sorted(PRIORITIES)}, "
                             f"got {self.priority}")

    @property
    def id(self) -> str:
        return f"{self.op}/{self.name}"


_REGISTRY: dict[str, Callable[[torch.device], list[Case]]] = {}


CaseFactory = Callable[[torch.device], list[Case]]


def register(op: str) -> Callable[[CaseFactory], CaseFactory]:
    """Decorator for ``cases(device) -> list[Case]`` in ``bench/bench_<op>.py``."""

    def decorate(make_cases: CaseFactory) -> CaseFactory:
        _REGISTRY[op] = make_cases
        return make_cases

    return decorate


def discover() -> dict[str, Callable[[torch.device], list[Case]]]:
    """Import every ``bench/bench_<op>.py`` (each registers its cases) and return the registry."""
    package = Path(__file__).parent
    for module in pkgutil.iter_modules([str(package)]):
        if module.name.startswith("bench_"):
            importlib.import_module(f"{__package__}.{module.name}")
    return _REGISTRY


def priority(case: Case) -> int:
    """``case.priority``, else: the acceptance shapes (``quick``) first, then a working set (the largest byte
    count of its modes) of at least :data:`LARGE_WORKING_SET_BYTES`, then the rest."""
    if case.priority is not None:
        return case.priority
    if case.quick:
        return PRIORITY_ACCEPTANCE
    if max((value for value in case.bytes.values() if value), default=0) >= LARGE_WORKING_SET_BYTES:
        return PRIORITY_LARGE
    return PRIORITY_OTHER


def collect_cases(
    device: torch.device,
    ops: Sequence[str] | None = None,
    quick: bool = False,
    name_filter: str | None = None,
) -> list[Case]:
    """The registered cases for ``device``, filtered by op names, ``quick`` and a substring of the id, in the
    order of a run: by :func:`priority`, then ops by name, then each op's own order."""
    cases = []
    for op, make_cases in sorted(discover().items()):
        if ops and op not in ops:
            continue
        for case in make_cases(device):
            if quick and not case.quick:
                continue
            if name_filter and name_filter not in case.id:
                continue
            cases.append(case)
    return sorted(cases, key=priority)  # stable: the registry's order within a priority


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------------
# Providers.


def provider_names(case: Case) -> list[str]:
    names = list(BASE_PROVIDERS)
    if "fastflow" in case.fns:
        names += FASTFLOW_PROVIDERS
    names += [kind for kind in case.fns if kind not in ("reference", "fastflow")]
    return names


def _registered_ops() -> set[str]:
    return set(_backends.OPS)


def automatic_backends(case: Case, device: torch.device) -> dict[str, str]:
    """op -> the backend the automatic choice runs it on, for the ops ``case`` uses (no forced backend)."""
    with fastflow.set_backend("auto"):
        return {op: _backends.select(op, device, case.dtype) for op in case.uses or (case.op,)}


def why_not(case: Case, provider: str, device: torch.device) -> str | None:
    """Why ``provider`` cannot run ``case`` on ``device``, or None."""
    if provider == FASTFLOW_COMPILE:
        if "fastflow" not in case.fns:
            return f"{case.op} has no fastflow function"
        try:
            chosen = automatic_backends(case, device)
        except Exception as error:  # the selection itself failed: say so rather than time something else
            return f"the automatic backend choice failed: {_error(error)}"
        fallback = sorted(op for op, backend in chosen.items() if backend == "reference")
        if fallback:
            # Nothing of fastflow's would be compiled, only its plain-PyTorch fallback: that is `compile`.
            return f"the automatic choice runs the plain reference for {', '.join(fallback)} here"
        return None
    if provider in BACKEND_PROVIDERS:
        if "fastflow" not in case.fns:
            return f"{case.op} has no fastflow function"
        if provider == "triton" and device.type == "cpu":
            return "Triton runs on CUDA tensors; on CPU only its interpreter runs, which is not worth timing"
        for op in case.uses or (case.op,):
            reason = _backends.why_not(provider, op, device, case.dtype)
            if reason is not None:
                return reason if not case.uses else f"{op}: {reason}"
        return None
    if provider in BASE_PROVIDERS:
        return None
    if provider not in case.fns:
        return f"unknown provider {provider!r}"
    return case.why_not(provider, device) if case.why_not else None


# One compiled function per case (its shape) and compiled provider, built once and shared by the modes and by
# pytest.
_COMPILED: dict[tuple[str, str, str], Callable] = {}


def _configure_dynamo() -> None:
    # All cases of an op compile the same Python function: without a higher limit dynamo would fall back
    # to eager after a few shapes, silently; fail loudly instead if even this limit is hit.
    import torch._dynamo.config as dynamo_config

    for name, value in (("recompile_limit", 256), ("accumulated_recompile_limit", 4096)):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, value)
    if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
        dynamo_config.fail_on_recompile_limit_hit = True


def _compile_with_own_cache(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=False)`` whose dynamo cache entries are its own.

    fastflow's ops make the requested backend a constant of the traced graph, and dynamo keys its cache on the
    code object and the backend, not on that constant: a plain second ``torch.compile`` of the same Python
    function (a model-level case's ``reference`` and ``fastflow`` are one function) would be handed the graph
    that ``compile`` traced under the forced reference. A ``name`` (it changes nothing in the generated code)
    makes the inductor backend compare unequal; a torch without ``name`` gets an inductor backend object of its
    own, which dynamo tells apart as well.
    """
    try:
        return torch.compile(fn, dynamic=False, name=FASTFLOW_COMPILE)
    except TypeError:
        from torch._inductor.compile_fx import compile_fx

        def inductor(graph, example_inputs):
            return compile_fx(graph, example_inputs)

        return torch.compile(fn, dynamic=False, backend=inductor)


def provider_fn(case: Case, provider: str, device: torch.device) -> tuple[Callable, Callable[[], object]]:
    """``(function, context factory)`` running ``case`` with ``provider``; the context must wrap the
    backward too (the backend is chosen when the backward runs)."""
    context = case.contexts.get(provider, contextlib.nullcontext)
    if provider == "reference":
        return case.fns["reference"], context
    if provider in ("compile", FASTFLOW_COMPILE):
        key = (case.id, provider, str(device))
        if key not in _COMPILED:
            _configure_dynamo()
            if provider == "compile":
                _COMPILED[key] = torch.compile(case.fns["reference"], dynamic=False)
            else:
                _COMPILED[key] = _compile_with_own_cache(case.fns["fastflow"])
        if provider == "compile":
            return _COMPILED[key], context
        return _COMPILED[key], lambda: fastflow.set_backend("auto")
    if provider in BACKEND_PROVIDERS:
        return case.fns["fastflow"], lambda: fastflow.set_backend(provider)
    return case.fns[provider], context


# --------------------------------------------------------------------------------------------------
# Prepared calls: inputs, graphs and the callable of one (case, provider, mode).


def _as_tuple(outputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)


@dataclass
class Prepared:
    """Callables of one (case, provider, mode), one per input set, and what they need."""

    calls: list[Callable[[], object]]
    context: Callable[[], object]
    input_bytes: int  # storage of all input sets
    prepare_s: float  # building inputs and graphs; includes compilation for ``compile``

    def rotating(self) -> Callable[[], object]:
        """One callable that cycles through the input sets."""
        calls, state = self.calls, [0]

        def call() -> object:
            state[0] = (state[0] + 1) % len(calls)
            return calls[state[0]]()

        return call


def _leaves(inputs: dict[str, Tensor]) -> tuple[Tensor, ...]:
    leaves = []
    for tensor in inputs.values():
        if isinstance(tensor, Tensor) and tensor.is_floating_point():
            tensor.requires_grad_(True)
            leaves.append(tensor)
    return tuple(leaves)


def _make_call(fn: Callable, inputs: dict[str, Tensor], mode: str, seed: int) -> Callable[[], object]:
    leaves = _leaves(inputs)
    probe = [out for out in _as_tuple(fn(**inputs)) if out.requires_grad]
    generator = torch.Generator(device=probe[0].device if probe else "cpu").manual_seed(seed)
    grads = [torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=generator) for out in probe]

    def backward(outputs: Sequence[Tensor], retain: bool) -> object:
        used = [out for out in outputs if out.requires_grad]
        # autograd.grad, not .backward(): no accumulation into .grad inside the timed region.
        return torch.autograd.grad(used, leaves, grads, retain_graph=retain, allow_unused=True)

    if mode == "fwd":
        return lambda: fn(**inputs)
    if mode == "full":
        return lambda: backward(_as_tuple(fn(**inputs)), retain=False)
    if mode == "bwd":
        graph = _as_tuple(fn(**inputs))  # built once, outside the timed region, kept by retain_graph
        return lambda: backward(graph, retain=True)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


CPU_CACHE_FALLBACK_BYTES = 32 * 2**20  # when the OS does not say: a server part's L3 is 32 MiB or more
MAX_INPUT_SETS = 16


def _size_bytes(text: str) -> int:
    """``"307200K"`` / ``"2048K"`` / ``"32M"`` (sysfs) -> bytes."""
    text = text.strip().upper()
    factor = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * factor


def cpu_last_level_cache_bytes() -> tuple[int, str]:
    """``(bytes, source)`` of the CPU's last-level data cache: sysfs, else ``sysconf``, else a fallback constant.

    The size is that of one cache instance (e.g. one L3 that all cores of a socket share), as sysfs reports it.
    """
    best: tuple[int, int] = (0, 0)  # (level, bytes)
    with contextlib.suppress(OSError, ValueError):
        for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
            if (index / "type").read_text().strip() not in ("Data", "Unified"):
                continue
            level = int((index / "level").read_text())
            size = _size_bytes((index / "size").read_text())
            best = max(best, (level, size))
    if best[1]:
        return best[1], f"sysfs L{best[0]}"
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        with contextlib.suppress(ValueError, OSError):
            size = os.sysconf(name)
            if size > 0:
                return size, f"sysconf {name}"
    return CPU_CACHE_FALLBACK_BYTES, "fallback constant"


def cache_bytes(device: torch.device) -> int:
    """The cache that would keep one call's inputs for the next: L2 on GPU, the last-level cache on CPU."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20))
    return cpu_last_level_cache_bytes()[0]


def input_sets_needed(case: Case, device: torch.device) -> int:
    """How many input sets to rotate among so that one call's inputs are not in cache from the previous call.

    The sets together cover at least 3x the cache (:func:`cache_bytes`), within ``MAX_INPUT_SETS``. Where the
    cap binds (a CPU whose L3 holds 16 working sets), the data can still come from cache: the achieved
    bandwidth then exceeds the measured copy bandwidth, and the reports flag it.
    """
    cache = cache_bytes(device)
    working_set = max((value for value in case.bytes.values() if value), default=0)
    if not cache or not working_set:
        return 1
    return max(1, min(MAX_INPUT_SETS, math.ceil(3 * cache / working_set)))


def prepare(
    case: Case, provider: str, mode: str, device: torch.device, input_sets: int = 1, seed: int = 0
) -> Prepared:
    """Inputs and callables for one measurement (the graphs of ``bwd`` are built here, untimed)."""
    fn, context = provider_fn(case, provider, device)
    calls, input_bytes, start = [], 0, time.perf_counter()
    with context():
        for index in range(input_sets):
            generator = torch.Generator(device=device).manual_seed(seed + index)
            inputs = case.make_inputs(device, case.dtype, generator)
            input_bytes += sum(t.untyped_storage().nbytes() for t in inputs.values() if isinstance(t, Tensor))
            calls.append(_make_call(fn, inputs, mode, seed + 1000 + index))
    _synchronize(device)
    return Prepared(calls, context, input_bytes, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------
# Timing.


@dataclass(frozen=True)
class TimingConfig:
    warmup_s: float = 0.2
    min_warmup_calls: int = 3
    sample_s: float = 2e-4  # a sample lasts at least this long (several calls for tiny ones)
    budget_s: float = 1.0  # per measurement
    min_samples: int = 10
    max_samples: int = 200


QUICK_TIMING = TimingConfig(warmup_s=0.05, min_warmup_calls=2, budget_s=0.25, min_samples=7, max_samples=60)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(call: Callable[[], object], device: torch.device, config: TimingConfig) -> tuple[float, float]:
    """Run ``call`` until warm; return ``(first call seconds, estimated seconds per call)``.

    The first call includes kernel autotuning for Triton (compilation already happened in :func:`prepare`).
    """
    start = time.perf_counter()
    call()
    _synchronize(device)
    first = time.perf_counter() - start
    calls, start = 0, time.perf_counter()
    while calls < config.min_warmup_calls or time.perf_counter() - start < config.warmup_s:
        call()
        calls += 1
    _synchronize(device)
    return first, (time.perf_counter() - start) / calls


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Timing:
    median_s: float
    p20_s: float
    p80_s: float
    samples: int
    inner: int


def plan(estimate_s: float, config: TimingConfig) -> tuple[int, int]:
    """``(inner, samples)``: calls per sample (lasting at least ``sample_s``) and samples in the budget."""
    estimate_s = max(estimate_s, 1e-7)
    inner = max(1, math.ceil(config.sample_s / estimate_s))
    samples = int(min(config.max_samples, max(config.min_samples, config.budget_s / (inner * estimate_s))))
    return inner, samples


def sample_times(call: Callable[[], object], device: torch.device, inner: int, samples: int) -> list[float]:
    """Per-call seconds of ``samples`` samples of ``inner`` back-to-back calls each."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(samples)]
        torch.cuda.synchronize(device)
        for start, end in events:
            start.record()
            for _ in range(inner):
                call()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 / inner for start, end in events]
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(inner):
            call()
        times.append((time.perf_counter() - start) / inner)
    return times


def summarize(times: Sequence[float], inner: int) -> Timing:
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), len(times), inner)


def measure(
    call: Callable[[], object], device: torch.device, estimate_s: float, config: TimingConfig
) -> Timing:
    """Per-call time of ``call`` over many samples of ``inner`` back-to-back calls."""
    inner, samples = plan(estimate_s, config)
    return summarize(sample_times(call, device, inner, samples), inner)


# --------------------------------------------------------------------------------------------------
# Peak memory.


def _walk(nodes: Sequence) -> Iterator:
    for node in nodes:
        yield node
        yield from _walk(node.children)


def peak_memory_bytes(call: Callable[[], object], device: torch.device) -> int | None:
    """Largest memory allocated during one ``call`` above what was live before it (bytes)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = call()
        torch.cuda.synchronize(device)
        del result
        return torch.cuda.max_memory_allocated(device) - before
    # The CPU allocator keeps no statistics; the profiler sees each of its allocations and frees in order
    # (those of ATen, of the extension and of inductor's generated code alike): replay their running sum.
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = call()
    del result
    events = [node for node in _walk(prof.profiler.kineto_results.experimental_event_tree())
              if node.tag == _EventType.Allocation]
    live = peak = 0
    for node in sorted(events, key=lambda node: node.start_time_ns):
        live += node.extra_fields.alloc_size
        peak = max(peak, live)
    return peak


# --------------------------------------------------------------------------------------------------
# Hardware limits measured in the same run.


def copy_bandwidth(device: torch.device, config: TimingConfig) -> dict[str, float]:
    """GB/s of a large tensor copy, counting the bytes read plus the bytes written."""
    nbytes = (1024 if device.type == "cuda" else 512) * 2**20  # well beyond L2 (GPU) and the LLC (CPU)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    call = lambda: dst.copy_(src)
    _, estimate = warm_up(call, device, dataclasses.replace(config, warmup_s=0.0))
    timing = measure(call, device, estimate, dataclasses.replace(config, min_samples=5, max_samples=20))
    return {"bytes": 2 * nbytes, "median_s": timing.median_s, "gbps": 2 * nbytes / timing.median_s / 1e9}


def matmul_rate(device: torch.device, dtype: torch.dtype, config: TimingConfig) -> float:
    """TFLOP/s of a large square matmul in ``dtype`` (2n³ FLOPs)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    call = lambda: a @ b
    _, estimate = warm_up(call, device, dataclasses.replace(config, warmup_s=0.0))
    timing = measure(call, device, estimate, dataclasses.replace(config, min_samples=3, max_samples=10))
    return 2 * n**3 / timing.median_s / 1e12


# --------------------------------------------------------------------------------------------------
# A wall-clock budget for a whole run.


class TimeBudget:
    """``--time-budget``: the seconds a whole run may take, and whether the next (case, mode) group still fits.

    A group's estimate is what the most similar groups measured so far took (the same op and mode, else the same
    mode, else the same op, else any), the longest of them times :attr:`SAFETY` (later cases of an op are often
    larger), and at least the case's own ``expected_s`` (a whole model compiles for minutes where no op case
    did). A group fits when the time elapsed plus its estimate stays within the budget less :attr:`reserve_s`,
    the time kept for writing the reports. The first group always runs; a group that does not fit is skipped
    and the next ones are still asked (a smaller one may fit). Inside a group, a provider that would start
    after the budget is spent is skipped (the estimate can be wrong: a first compilation is hard to foresee).
    """

    SAFETY = 1.25
    REPORT_RESERVE_S = 10.0  # the reports (the PNG above all) of a large GPU run: a few seconds

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        if seconds <= 0:
            raise ValueError(f"a time budget must be positive, got {seconds}")
        self.seconds = float(seconds)
        self.reserve_s = min(self.REPORT_RESERVE_S, 0.1 * self.seconds)
        self._clock = clock
        self.start = clock()
        self.groups: list[tuple[str, str, float]] = []  # (op, mode, seconds) of every group that ran

    @property
    def reason(self) -> str:
        return f"time budget of {self.seconds:g} s spent"

    def elapsed(self) -> float:
        return self._clock() - self.start

    def left(self) -> float:
        """Seconds left for measuring (the report reserve excluded)."""
        return self.seconds - self.reserve_s - self.elapsed()

    def spent(self) -> bool:
        return self.left() <= 0

    def estimate(self, case: Case, mode: str) -> float:
        """Seconds that measuring ``case`` in ``mode`` is expected to take (see the class docstring)."""
        # The same mode before the same op: an op's first mode pays for most of its compilation.
        similar = ([s for op, m, s in self.groups if op == case.op and m == mode]
                   or [s for _, m, s in self.groups if m == mode]
                   or [s for op, _, s in self.groups if op == case.op]
                   or [s for _, _, s in self.groups])
        guess = self.SAFETY * max(similar) if similar else 0.0
        return max(guess, float(case.expected_s.get(mode, 0.0)))

    def fits_seconds(self, seconds: float) -> bool:
        return seconds <= self.left()

    def fits(self, case: Case, mode: str) -> tuple[bool, float]:
        """``(whether the group fits, its estimate)``; the first group always fits."""
        estimate = self.estimate(case, mode)
        return (not self.groups or self.fits_seconds(estimate)), estimate

    def record(self, case: Case, mode: str, seconds: float) -> None:
        self.groups.append((case.op, mode, seconds))

    def summary(self) -> dict[str, object]:
        return {"seconds": self.seconds, "reserve_s": self.reserve_s, "elapsed_s": self.elapsed(),
                "groups_run": len(self.groups)}


# --------------------------------------------------------------------------------------------------
# One measurement and a whole run.


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


ROUNDS = 5  # the providers of one (case, mode) take turns, so that a change of load hits them alike


def _row(case: Case, provider: str, mode: str, device: torch.device) -> dict[str, object]:
    row = {
        "op": case.op, "case": case.name, "mode": mode, "provider": provider, "device": str(device),
        "dtype": dtype_name(case.dtype), "params": dict(case.params),
        "bytes": case.bytes.get(mode), "flops": case.flops.get(mode),
    }
    if provider in FASTFLOW_PROVIDERS and mode in case.work_free:
        row["work_free"] = case.work_free[mode]
    return row


def _backends_run(call: Callable[[], object], context: Callable[[], object]) -> list[str]:
    """``["op:stage:backend", ...]`` that one call of fastflow's ops ran on (``fastflow._backends.trace``): shows,
    e.g., that ``fastflow+compile`` runs the fused kernels and that a model-level ``reference`` runs none."""
    with context(), _backends.trace() as calls:
        call()
    return sorted({":".join(entry) for entry in calls})


def _error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".strip().splitlines()[0][:300]


def run_group(
    case: Case,
    mode: str,
    providers: Sequence[str],
    device: torch.device,
    config: TimingConfig,
    with_memory: bool = True,
    budget: TimeBudget | None = None,
) -> list[dict[str, object]]:
    """Measure ``case`` in ``mode`` for each provider, side by side; skipped or failed ones give the reason.

    Every provider is prepared and warmed up first; then they take turns for ``ROUNDS`` rounds of samples,
    and each one's median and quantiles are taken over all its samples. With a ``budget`` that is spent, the
    providers not yet prepared are skipped (``skipped_for_budget``), except in the run's first group.
    """
    rows = {provider: _row(case, provider, mode, device) for provider in providers}
    ready: dict[str, tuple[Prepared, Callable[[], object], int, int]] = {}
    input_sets = input_sets_needed(case, device)
    for provider in providers:
        reason = why_not(case, provider, device)
        if reason is not None:
            rows[provider]["skipped"] = reason
            continue
        if budget is not None and budget.groups and budget.spent():
            rows[provider].update(skipped=budget.reason, skipped_for_budget=True)
            continue
        try:
            prepared = prepare(case, provider, mode, device, input_sets)
            with prepared.context():
                call = prepared.rotating()
                first_s, estimate = warm_up(call, device, config)
        except Exception as error:  # a provider that fails is reported, the run goes on
            rows[provider]["error"] = _error(error)
            continue
        inner, samples = plan(estimate, config)
        ready[provider] = (prepared, call, inner, samples)
        rows[provider].update(prepare_s=prepared.prepare_s, first_call_s=first_s, input_sets=input_sets,
                              input_bytes=prepared.input_bytes)
        with contextlib.suppress(Exception):  # informative only
            ran = _backends_run(prepared.calls[0], prepared.context)
            if ran is not None:
                rows[provider]["backends_run"] = ran
    times: dict[str, list[float]] = {provider: [] for provider in ready}
    for round_index in range(ROUNDS):
        for provider, (prepared, call, inner, samples) in list(ready.items()):
            count = samples // ROUNDS + (round_index < samples % ROUNDS)
            try:
                with prepared.context():
                    times[provider] += sample_times(call, device, inner, max(1, count))
            except Exception as error:
                rows[provider]["error"] = _error(error)
                del ready[provider]
    for provider, (prepared, _, inner, _) in ready.items():
        timing = summarize(times[provider], inner)
        row = rows[provider]
        row.update(median_ms=timing.median_s * 1e3, p20_ms=timing.p20_s * 1e3, p80_ms=timing.p80_s * 1e3,
                   samples=timing.samples, inner=timing.inner)
        if row["bytes"] and "work_free" not in row:
            row["gbps"] = row["bytes"] / timing.median_s / 1e9
        if row["flops"] and "work_free" not in row:
            row["tflops"] = row["flops"] / timing.median_s / 1e12
        if with_memory:
            with prepared.context():
                row["peak_bytes"] = peak_memory_bytes(prepared.calls[0], device)
    ready.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return list(rows.values())


def add_ratios(rows: list[dict[str, object]], copy_gbps: float, matmul_tflops: Mapping[str, float]) -> None:
    """Fraction of the copy bandwidth / matmul rate, and speed-ups against :data:`BASELINES` (eager, compiled,
    fastflow compiled).

    A row above the copy bandwidth gets ``above_copy_bandwidth`` (its data came from cache); a work-free row
    (``Case.work_free``) gets no speed-up and is no baseline: a path that does nothing is not faster, it is not
    comparable.
    """
    medians = {(r["op"], r["case"], r["mode"], r["provider"]): r["median_ms"]
               for r in rows if "median_ms" in r and "work_free" not in r}
    for row in rows:
        if "median_ms" not in row or "work_free" in row:
            continue
        if "gbps" in row:
            row["copy_fraction"] = row["gbps"] / copy_gbps
            if row["gbps"] > copy_gbps:
                row["above_copy_bandwidth"] = True
        if "tflops" in row and row["dtype"] in matmul_tflops:
            row["matmul_fraction"] = row["tflops"] / matmul_tflops[row["dtype"]]
        for baseline in BASELINES:
            base = medians.get((row["op"], row["case"], row["mode"], baseline))
            if base is not None:
                row[f"speedup_vs_{baseline}"] = base / row["median_ms"]


def write_json_result(out: Path | str, slug: str, date: str, tag: str, result: dict) -> Path:
    """Write a standalone benchmark's ``result`` as ``<out>/<slug>-<date>-<tag>.json`` (the naming of
    ``bench/results/``), say where, and return the path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{slug}-{date}-{tag}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def device_description(device: torch.device) -> tuple[str, str]:
    """``(slug, full name)`` of the device, e.g. ``cpu-intel-xeon-processor`` or ``nvidia-h100-80gb-hbm3``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return _slug(name), name
    name = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    short = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", " ", name, flags=re.IGNORECASE)
    return "cpu-" + _slug(short), name


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _skipped_entry(case: Case, mode: str, providers: str | list[str], estimate_s: float | None,
                   budget: TimeBudget) -> dict[str, object]:
    return {"case": case.id, "op": case.op, "mode": mode, "providers": providers, "priority": priority(case),
            "estimate_s": estimate_s, "elapsed_s": budget.elapsed(), "reason": budget.reason}


def run(
    cases: Sequence[Case],
    device: torch.device,
    providers: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    config: TimingConfig = TimingConfig(),
    log: Callable[[str], None] = print,
    budget: TimeBudget | None = None,
    checkpoint: Callable[[dict[str, object]], None] | None = None,
) -> dict[str, object]:
    """Measure every case x provider x mode, in the order given; return the results document (see
    :func:`report.write_results <bench.report.write_results>`).

    ``budget``: a group (case, mode) that does not fit any more is skipped and listed in the document's
    ``skipped_for_budget`` (see :class:`TimeBudget`). ``checkpoint(document)`` is called after every group with
    the results so far (``partial: True``), so that a run stopped from outside still leaves them.
    """
    started = datetime.datetime.now()
    copy = copy_bandwidth(device, config)
    log(f"copy bandwidth: {copy['gbps']:.1f} GB/s ({copy['bytes'] / 2**20:.0f} MiB read + written)")
    if device.type == "cpu":
        llc, source = cpu_last_level_cache_bytes()
        cache = {"bytes": llc, "source": source, "level": "last-level"}
    else:
        cache = {"bytes": cache_bytes(device), "source": "torch.cuda.get_device_properties", "level": "L2"}
    log(f"cache the inputs rotate past: {cache['level']} {cache['bytes'] / 2**20:.1f} MiB ({cache['source']})")
    matmul = {}
    for dtype in sorted({case.dtype for case in cases if any(case.flops.values())}, key=str):
        matmul[dtype_name(dtype)] = matmul_rate(device, dtype, config)
        log(f"matmul rate {dtype_name(dtype)}: {matmul[dtype_name(dtype)]:.2f} TFLOP/s")
    rows: list[dict[str, object]] = []
    skipped: list[dict[str, object]] = []
    load_before = os.getloadavg()[0]
    slug, device_name = device_description(device)

    def document(partial: bool) -> dict[str, object]:
        add_ratios(rows, copy["gbps"], matmul)
        return {
            "device": slug,
            "device_name": device_name,
            # The start of the run: also the date in the file names, the same for every checkpoint.
            "date": started.isoformat(timespec="seconds"),
            "partial": partial,
            "versions": _versions(),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            # Timings on a shared machine are only as good as its quietness: the 1-minute load, before and after.
            "load_average": [load_before, os.getloadavg()[0]],
            "copy_bandwidth": copy,
            "cache": cache,
            "max_input_sets": MAX_INPUT_SETS,
            "fastflow_backend_env": os.environ.get("FASTFLOW_BACKEND"),
            "matmul_tflops": matmul,
            "timing": dataclasses.asdict(config),
            "time_budget": budget.summary() if budget is not None else None,
            "skipped_for_budget": skipped,
            "backends": {op: {backend: _backends.why_not(backend, op, device, torch.float32) or "available"
                              for backend in _backends.BACKENDS}
                         for op in sorted({op for case in cases for op in case.uses or (case.op,)}
                                          & _registered_ops())},
            "results": rows,
        }

    for case in cases:
        names = [name for name in provider_names(case) if not providers or name in providers]
        for mode in modes:
            if budget is not None:
                fits, estimate = budget.fits(case, mode)
                if not fits:
                    skipped.append(_skipped_entry(case, mode, "all", estimate, budget))
                    log(f"  {case.id:60s} {mode:4s} skipped: {budget.reason} ({budget.elapsed():.0f} s elapsed, "
                        f"this group estimated at {estimate:.0f} s)")
                    continue
            begun = budget.elapsed() if budget is not None else 0.0
            group = run_group(case, mode, names, device, config, budget=budget)
            if budget is not None:
                budget.record(case, mode, budget.elapsed() - begun)
                late = [row["provider"] for row in group if row.get("skipped_for_budget")]
                if late:
                    skipped.append(_skipped_entry(case, mode, late, None, budget))
                    log(f"  {case.id:60s} {mode:4s} {', '.join(late)} skipped: {budget.reason} inside the group")
            for row in group:
                rows.append(row)
                if "median_ms" in row:
                    log(f"  {case.id:60s} {mode:4s} {row['provider']:16s} {row['median_ms']:9.3f} ms")
                elif "error" in row:
                    log(f"  {case.id:60s} {mode:4s} {row['provider']:16s} FAILED {row['error']}")
            if checkpoint is not None:
                checkpoint(document(partial=True))
    return document(partial=False)


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"torch": torch.__version__, "fastflow": fastflow.__version__}
    for package in ("triton",):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions
