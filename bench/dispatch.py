"""Per-call dispatch overhead of fastflow's ops: the public function against the compiled kernel called directly.

On tiny tensors (``[1, 2, 1, 1]``) a call costs only its dispatch: argument checks, layout handling, the backend
choice, the custom op's dispatcher entry and, for ``actnorm_invconv``, building the ``C×C`` weight. This times,
forward only and in µs per call,

- the public function (``fastflow.ops.affine_coupling`` / ``fastflow.ops.actnorm_invconv``) under the automatic
  backend choice, with inputs that do not require grad and with inputs that do (the autograd node a training
  step records),
- the eager reference (``fastflow.reference``) for scale: what the same call costs in plain PyTorch,
- the pieces: the custom op ``torch.ops.fastflow.*_fwd`` (optional: its signature is being changed; a call that
  fails is reported as skipped with its error) and, for ``actnorm_invconv``, the weight fold alone,
- the compiled kernel ``torch.ops.fastflow_C.*_fwd`` called directly (the baseline),

and reports ``overhead = time − kernel time`` for every row. The providers take turns in rounds, as in the case
timings. ``python -m bench`` runs it for the selected ops unless ``--no-dispatch``; ``python -m bench.dispatch``
runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

import fastflow
from fastflow import _backends
from fastflow._codes import MASK_CODES, SCALE_CODES

OPS: tuple[str, ...] = ("coupling", "actnorm_invconv")
SHAPE: tuple[int, int, int, int] = (1, 2, 1, 1)
KERNEL = "kernel"  # the role of the row the overheads are taken against


@dataclass
class Call:
    """One timed call: ``fn`` of no arguments, or ``skipped`` (why it cannot be timed)."""

    op: str
    label: str
    role: str  # "public", "reference", "part" or KERNEL
    fn: Callable[[], object] | None = None
    skipped: str | None = None


def _error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".strip().splitlines()[0][:200]


def _checked(call: Call) -> Call:
    """Run ``call`` once: a call that fails becomes a skipped row with its error."""
    if call.fn is not None:
        try:
            call.fn()
        except Exception as error:
            return Call(call.op, call.label, call.role, skipped=_error(error))
    return call


def _custom_op(op: str, label: str, name: str, args: tuple) -> Call:
    """``torch.ops.fastflow.<name>(*args, "auto")``: the custom op with the automatic backend choice."""
    try:
        packet = getattr(torch.ops.fastflow, name)
    except (AttributeError, RuntimeError) as error:
        return Call(op, label, "part", skipped=_error(error))
    return _checked(Call(op, label.replace(")", ', "auto")'), "part", lambda: packet(*args, "auto")))


def _kernel(op: str, label: str, name: str, args: tuple, device: torch.device) -> Call:
    reason = _backends.extension_reason(f"fastflow_C::{name}", "cuda" if device.type == "cuda" else "cpu")
    if reason is not None:
        return Call(op, label, KERNEL, skipped=reason)
    kernel = getattr(torch.ops.fastflow_C, name)
    return Call(op, label, KERNEL, lambda: kernel(*args))


def coupling_calls(device: torch.device) -> list[Call]:
    from fastflow import ops
    from fastflow.reference import coupling as reference

    generator = torch.Generator(device=device).manual_seed(0)
    half = (SHAPE[0], SHAPE[1] // 2, *SHAPE[2:])
    x = torch.randn(SHAPE, device=device, generator=generator)
    raw_scale = torch.randn(half, device=device, generator=generator)
    shift = torch.randn(half, device=device, generator=generator)
    grads = [t.detach().clone().requires_grad_(True) for t in (x, raw_scale, shift)]
    args = (x, raw_scale, shift, MASK_CODES["channel"], SCALE_CODES["sigmoid"], False, False, 2.0)
    return [
        Call("coupling", "fastflow.ops.affine_coupling", "public", lambda: ops.affine_coupling(x, raw_scale, shift)),
        Call("coupling", "fastflow.ops.affine_coupling, inputs require grad", "public",
             lambda: ops.affine_coupling(*grads)),
        Call("coupling", "fastflow.reference.affine_coupling (eager)", "reference",
             lambda: reference.affine_coupling(x, raw_scale, shift)),
        _custom_op("coupling", "torch.ops.fastflow.coupling_fwd(...)", "coupling_fwd", args),
        _kernel("coupling", "torch.ops.fastflow_C.coupling_fwd", "coupling_fwd", args, device),
    ]


def actnorm_invconv_calls(device: torch.device) -> list[Call]:
    from fastflow import ops
    from fastflow.reference import actnorm_invconv as reference

    channels = SHAPE[1]
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(SHAPE, device=device, generator=generator)
    params = {
        "log_scale": 0.1 * torch.randn(channels, device=device, generator=generator),
        "bias": 0.1 * torch.randn(channels, device=device, generator=generator),
        "lower": 0.1 * torch.randn(channels, channels, device=device, generator=generator),
        "upper": 0.1 * torch.randn(channels, channels, device=device, generator=generator),
        "log_s": 0.1 * torch.randn(channels, device=device, generator=generator),
    }
    fixed = {"perm": torch.arange(channels, device=device), "sign_s": torch.ones(channels, device=device)}
    grads = {name: value.detach().clone().requires_grad_(True) for name, value in params.items()}
    x_grad = x.detach().clone().requires_grad_(True)
    weight, bias = reference.folded_weight(**params, **fixed)
    weight, bias = weight.contiguous(), bias.contiguous()
    return [
        Call("actnorm_invconv", "fastflow.ops.actnorm_invconv (weight fold + op)", "public",
             lambda: ops.actnorm_invconv(x, **params, **fixed)),
        Call("actnorm_invconv", "fastflow.ops.actnorm_invconv, inputs require grad", "public",
             lambda: ops.actnorm_invconv(x_grad, **grads, **fixed)),
        Call("actnorm_invconv", "fastflow.reference.actnorm_invconv (eager)", "reference",
             lambda: reference.actnorm_invconv(x, **params, **fixed)),
        Call("actnorm_invconv", "fastflow.reference.actnorm_invconv.folded_weight (the C×C fold alone)", "part",
             lambda: reference.folded_weight(**params, **fixed)),
        _custom_op("actnorm_invconv", "torch.ops.fastflow.actnorm_invconv_fwd(x, W, b)", "actnorm_invconv_fwd",
                   (x, weight, bias)),
        _kernel("actnorm_invconv", "torch.ops.fastflow_C.actnorm_invconv_fwd", "actnorm_invconv_fwd",
                (x, weight, bias), device),
    ]


_CALLS: Mapping[str, Callable[[torch.device], list[Call]]] = {
    "coupling": coupling_calls,
    "actnorm_invconv": actnorm_invconv_calls,
}


def measure(
    device: torch.device,
    ops: Sequence[str] | None = None,
    config=None,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Time the calls of ``ops`` (default: all of :data:`OPS`) on ``device``; return the report's section."""
    from bench import harness

    config = config or harness.TimingConfig()
    selected = [op for op in OPS if not ops or op in ops]
    rows: list[dict[str, object]] = []
    automatic: dict[str, str] = {}
    with fastflow.set_backend("auto"):
        for op in selected:
            with contextlib.suppress(Exception):
                automatic[op] = _backends.select(op, device, torch.float32)
            calls = [_checked(call) for call in _CALLS[op](device)]
            ready = []
            for call in calls:
                if call.fn is None:
                    rows.append({"op": op, "call": call.label, "role": call.role, "skipped": call.skipped})
                    continue
                _, estimate = harness.warm_up(call.fn, device, config)
                ready.append((call, *harness.plan(estimate, config)))
            times: dict[str, list[float]] = {call.label: [] for call, _, _ in ready}
            for round_index in range(harness.ROUNDS):
                for call, inner, samples in ready:
                    count = samples // harness.ROUNDS + (round_index < samples % harness.ROUNDS)
                    times[call.label] += harness.sample_times(call.fn, device, inner, max(1, count))
            op_rows = []
            for call, inner, _ in ready:
                timing = harness.summarize(times[call.label], inner)
                op_rows.append({"op": op, "call": call.label, "role": call.role, "median_us": timing.median_s * 1e6,
                                "p20_us": timing.p20_s * 1e6, "p80_us": timing.p80_s * 1e6,
                                "samples": timing.samples, "inner": timing.inner})
            kernel = next((row["median_us"] for row in op_rows if row["role"] == KERNEL), None)
            for row in op_rows:
                if kernel is not None and row["role"] != KERNEL:
                    row["overhead_us"] = row["median_us"] - kernel
                rows.append(row)
                log(f"  dispatch {op:16s} {row['call'][:60]:60s} {row['median_us']:8.2f} µs")
    return {
        "device": str(device),
        "shape": list(SHAPE),
        "dtype": "float32",
        "automatic_backends": automatic,
        "kernel": "torch.ops.fastflow_C.*_fwd called directly",
        "rows": rows,
    }


def _cells(row: Mapping[str, object]) -> tuple[str, ...]:
    if "skipped" in row:
        return (str(row["op"]), str(row["call"]), "skipped", "", str(row["skipped"]))
    overhead = row.get("overhead_us")
    return (
        str(row["op"]),
        str(row["call"]),
        f"{row['median_us']:.2f}",
        f"{row['p20_us']:.2f}–{row['p80_us']:.2f}",
        "(baseline)" if row["role"] == KERNEL else ("—" if overhead is None else f"{overhead:+.2f}"),
    )


HEADER = ("op", "call", "µs per call", "p20–p80 µs", "overhead vs kernel µs")


def _intro(section: Mapping[str, object]) -> str:
    chosen = section.get("automatic_backends", {})
    automatic = ", ".join(f"{op}: {backend}" for op, backend in chosen.items())
    text = (f"Forward calls on tiny tensors (x {section['shape']}, {section['dtype']}, {section['device']}); inputs "
            f"do not require grad unless stated; the automatic backend choice ({automatic or 'unknown'}). "
            "Overhead = the row's time − the compiled kernel's (`torch.ops.fastflow_C.*_fwd`, called directly).")
    others = sorted(op for op, backend in chosen.items() if backend not in ("cpu", "cuda"))
    if others:
        # e.g. Triton on a GPU: the public rows then launch another kernel than the baseline row's.
        text += (f" For {', '.join(others)} the automatic choice is not fastflow._C, so that overhead also holds the "
                 "difference between the two backends' launches.")
    return text


def markdown(section: Mapping[str, object]) -> str:
    lines = ["## Dispatch overhead", "", _intro(section), "", "| " + " | ".join(HEADER) + " |",
             "|---|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in section["rows"]]
    return "\n".join(lines) + "\n"


def plain(section: Mapping[str, object]) -> str:
    rows = [HEADER] + [_cells(row) for row in section["rows"]]
    widths = [max(len(row[index]) for row in rows) for index in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) if index < 2 else cell.rjust(width)
                       for index, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(["Dispatch overhead: " + _intro(section), *lines])


def main(argv: list[str] | None = None) -> int:
    from bench import harness

    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__.splitlines()[0])
    parser.add_argument("--op", help=f"comma-separated, some of {', '.join(OPS)} (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else harness.default_device()
    ops = [name.strip() for name in args.op.split(",")] if args.op else None
    section = measure(device, ops, harness.QUICK_TIMING if args.quick else harness.TimingConfig())
    print()
    print(plain(section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
