"""The registered benchmark cases through pytest-benchmark: one test per case x provider x mode.

Unavailable providers are skipped with their reason. Speed is never asserted: the byte count and the
achieved GB/s go to ``extra_info`` (shown by ``--benchmark-json``), nothing else; where the provider does no
work (``Case.work_free``) the reason goes there instead of a bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from bench import harness

DEVICE = harness.default_device()


def _params(quick: bool) -> list:
    params = []
    for case in harness.collect_cases(DEVICE, quick=quick):
        for provider in harness.provider_names(case):
            for mode in harness.MODES:
                params.append(pytest.param(case, provider, mode, id=f"{case.id}-{mode}-{provider}"))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if {"case", "provider", "mode"} <= set(metafunc.fixturenames):
        quick = metafunc.config.getoption("bench_quick", default=False)
        metafunc.parametrize(("case", "provider", "mode"), _params(quick))


def test_benchmark(benchmark, case: harness.Case, provider: str, mode: str) -> None:
    reason = harness.why_not(case, provider, DEVICE)
    if reason is not None:
        pytest.skip(f"{provider}: {reason}")
    prepared = harness.prepare(case, provider, mode, DEVICE, harness.input_sets_needed(case, DEVICE))
    call = prepared.rotating()
    if DEVICE.type == "cuda":
        run_call = call

        def call() -> None:  # pytest-benchmark reads a wall clock: wait for the GPU
            run_call()
            torch.cuda.synchronize(DEVICE)

    with prepared.context():
        harness.warm_up(call, DEVICE, harness.QUICK_TIMING)  # compiles (compile) and autotunes (triton)
        benchmark.group = f"{case.id}-{mode}"
        benchmark.extra_info.update(bytes=case.bytes.get(mode), flops=case.flops.get(mode),
                                    dtype=harness.dtype_name(case.dtype), input_sets=len(prepared.calls))
        work_free = case.work_free.get(mode) if provider in harness.FASTFLOW_PROVIDERS else None
        if work_free:
            benchmark.extra_info["work_free"] = work_free
        benchmark(call)
    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None)
    if median and case.bytes.get(mode) and not work_free:
        benchmark.extra_info["gbps"] = case.bytes[mode] / median / 1e9
