"""Every GPU kernel of fastflow once, forward and backward, on small CUDA tensors: what ``.ci/gpu`` runs under
compute-sanitizer (memcheck over all of it, racecheck over ``--one-per-op``).

The calls are the generic op suite's cases (``tests/ops/cases_<op>.py``: every mask, scale and direction of the
coupling, both paths of the actnorm_invconv backward, empty batches, strided views) and each op's other calls
(``OpEntry.other_calls``: nade's sampler), run once per GPU backend
(``triton``, ``cuda``) and dtype; the values are not checked here (``pytest -m gpu`` does that), only that every
kernel runs clean. Prints one line per (op, backend) with the stages that ran, and exits 1 if a call raised.

    compute-sanitizer --tool memcheck --error-exitcode 1 python .ci/gpu_kernels.py [--one-per-op] [--dtypes ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastflow import _backends  # noqa: E402
from tests.ops.registry import discover  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_case(case, backend: str, dtype: torch.dtype, device: torch.device) -> list[tuple[str, str, str]]:
    """One forward and one backward of ``case`` under ``backend``: the (op, stage, backend) that ran."""
    generator = torch.Generator().manual_seed(case.seed)
    leaves = {name: t.detach().requires_grad_(True) for name, t in case.leaves(device, dtype, generator).items()}
    with _backends.set_backend(backend), _backends.trace() as calls:
        outputs = case.call(**leaves)
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
        differentiable = [out for out in outputs if out.requires_grad]
        if differentiable:
            torch.autograd.grad([out.float().sum() for out in differentiable], list(leaves.values()),
                                allow_unused=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # a kernel's fault shows up here, attributed to this call
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one-per-op", action="store_true", help="the first case of each op only (racecheck)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated, default float32,bfloat16")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_kernels: no CUDA device is visible; nothing to run")
        return 0
    device = torch.device("cuda")
    dtypes = [DTYPES[name] for name in args.dtypes.split(",") if name]
    failures, start = 0, time.perf_counter()
    for entry in discover().values():
        if entry.op.startswith("toy"):
            continue  # the test suite's toy op has no GPU kernel
        op = _backends.get_op(entry.op)
        cases = [case for case in entry.cases if case.opcheck][:1] if args.one_per_op else list(entry.cases)
        cases += list(entry.other_calls[:1] if args.one_per_op else entry.other_calls)  # e.g. nade's sampler
        for backend in ("triton", "cuda"):
            reason = op.why_not(backend, device, torch.float32)
            if reason is not None:
                print(f"gpu_kernels: {entry.op:16s} {backend:7s} skipped: {reason}")
                continue
            stages: Counter[str] = Counter()
            for dtype in dtypes:
                if op.why_not(backend, device, dtype) is not None:
                    continue
                for case in cases:
                    try:
                        for name, stage, ran_on in run_case(case, backend, dtype, device):
                            stages[f"{name}:{stage}:{ran_on}"] += 1
                    except Exception as error:  # report every failing call, then fail the run
                        failures += 1
                        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                        print(f"gpu_kernels: FAILED {entry.op} {case.name} {backend} {dtype}: "
                              f"{type(error).__name__}: {first_line}")
            ran = ", ".join(f"{key} ×{count}" for key, count in sorted(stages.items())) or "nothing"
            print(f"gpu_kernels: {entry.op:16s} {backend:7s} {len(cases)} case(s) × {len(dtypes)} dtype(s): {ran}")
    print(f"gpu_kernels: {failures} failure(s) in {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
