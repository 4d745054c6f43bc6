"""Command line of the benchmark suite: ``python -m bench [--quick] [--op OPS] [--provider NAMES] ...``.

Times every registered case (``bench/bench_<op>.py``) for every provider and mode, most important cases first
(``harness.priority``), and the per-call dispatch overhead of the selected ops (``bench/dispatch.py``;
``--no-dispatch`` leaves it out), prints the tables and writes ``<out>/<device>-<date>.json``, ``.md``,
``-summary.md`` and one PNG of plots, ``.png``, next to it. ``--time-budget SECONDS`` bounds the whole run: the
(case, mode) groups that would no longer fit are skipped and listed (``harness.TimeBudget``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from bench import dispatch, harness, report

RESULTS_DIR = Path(__file__).parent / "results"


def _names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="acceptance shapes only, fewer repeats (minutes on a small CPU, compiles included)")
    parser.add_argument("--op", help="comma-separated ops, e.g. coupling (default: all registered)")
    parser.add_argument("--provider", help="comma-separated providers, e.g. cpu,reference (default: all of "
                        f"{', '.join(harness.ALL_PROVIDERS)} and the extra ones cases declare, e.g. plain)")
    parser.add_argument("--mode", help=f"comma-separated modes (default: {','.join(harness.MODES)})")
    parser.add_argument("--case", help="only the cases whose id contains this text, e.g. C12")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"output folder (default: {RESULTS_DIR})")
    parser.add_argument("--budget", type=float,
                        help="seconds of timing per measurement (default 1; 0.25 with --quick, and on a GPU "
                             "under --time-budget)")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="wall-clock seconds for the whole run: cases that no longer fit are skipped and "
                             "listed (most important cases first); default: no limit")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--list", action="store_true",
                        help="list the cases in the order they run and the providers, measure nothing")
    parser.add_argument("--no-dispatch", action="store_true",
                        help=f"leave out the dispatch-overhead section ({', '.join(dispatch.OPS)}; follows --op)")
    args = parser.parse_args(argv)
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be positive, got {args.time_budget:g}")
    return args


def timing_config(args: argparse.Namespace, device: torch.device) -> harness.TimingConfig:
    """The timing settings: the default on CPU, the quick ones with ``--quick`` and on a GPU under a time
    budget (CUDA events converge within a fraction of a second), ``--budget`` replacing the per-measurement
    seconds of either."""
    quick = args.quick or (args.time_budget is not None and device.type == "cuda")
    config = harness.QUICK_TIMING if quick else harness.TimingConfig()
    if args.budget:
        config = dataclasses.replace(config, budget_s=args.budget)
    return config


def dispatch_estimate_s(ops: list[str], config: harness.TimingConfig) -> float:
    """A generous guess of the dispatch section's seconds: each op times 5 or 6 calls (8 counted), each warmed up
    and then sampled for about ``config.budget_s``."""
    return harness.TimeBudget.SAFETY * len(ops) * 8 * (config.warmup_s + config.budget_s) + 1.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    # The budget counts from here: the imports before it (torch, Triton) take a few seconds of their own.
    budget = harness.TimeBudget(args.time_budget) if args.time_budget is not None else None
    device = torch.device(args.device) if args.device else harness.default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    modes = _names(args.mode) or list(harness.MODES)
    unknown = set(modes) - set(harness.MODES)
    if unknown:
        raise SystemExit(f"--mode: unknown {sorted(unknown)}; expected some of {harness.MODES}")
    cases = harness.collect_cases(device, _names(args.op), args.quick, args.case)
    if not cases:
        raise SystemExit(f"no case matches --op {args.op!r} --case {args.case!r} on {device}")
    providers = _names(args.provider)
    selected_ops = _names(args.op)
    dispatch_ops = [] if args.no_dispatch else [op for op in dispatch.OPS if not selected_ops or op in selected_ops]
    if args.list:
        print(f"{'#':>3} {'priority':8s} {'case':60s} {'provider':16s} status")
        for index, case in enumerate(cases, 1):
            for provider in harness.provider_names(case):
                if not providers or provider in providers:
                    reason = harness.why_not(case, provider, device)
                    print(f"{index:3d} {harness.priority(case):<8d} {case.id:60s} {provider:16s} "
                          f"{reason or 'available'}")
        print("priorities (lower first): " + "; ".join(f"{key} {text}" for key, text in harness.PRIORITIES.items()))
        if dispatch_ops:
            print(f"dispatch overhead: {', '.join(dispatch_ops)} (tiny tensors, forward; --no-dispatch: none)")
        return 0
    config = timing_config(args, device)
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    suffix = "-quick" if args.quick else ""
    if budget is not None:
        print(f"time budget: {budget.seconds:g} s for the whole run ({budget.reserve_s:g} s of it kept for the "
              f"reports); timing {config.budget_s:g} s per measurement")
    announced = []

    def checkpoint(document: dict[str, object]) -> None:
        # The results so far, rewritten after every group (no plots: they take seconds): a run stopped from outside
        # (a timeout) still leaves them, marked partial.
        document.update(quick=args.quick, command=command)
        paths = report.write_results(document, args.out, suffix, plots=False)
        if not announced:
            announced.append(True)
            print("results so far, rewritten after every (case, mode):")
            for path in paths:
                print(f"  {path}")

    document = harness.run(cases, device, providers, modes, config, budget=budget, checkpoint=checkpoint)
    if dispatch_ops:
        estimate = dispatch_estimate_s(dispatch_ops, config)
        if budget is not None and not budget.fits_seconds(estimate):
            document["skipped_for_budget"].append({
                "section": "dispatch", "ops": dispatch_ops, "estimate_s": estimate, "elapsed_s": budget.elapsed(),
                "reason": budget.reason})
            print(f"  dispatch overhead skipped: {budget.reason} ({budget.elapsed():.0f} s elapsed, "
                  f"estimated at {estimate:.0f} s)")
        else:
            try:
                document["dispatch"] = dispatch.measure(device, dispatch_ops, config)
            except Exception as error:  # the cases' results are still written
                document["dispatch_error"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                print(f"  dispatch overhead FAILED: {document['dispatch_error']}")
    document.update(quick=args.quick, command=command)
    if budget is not None:
        document["time_budget"] = budget.summary()
    paths = report.write_results(document, args.out, suffix)
    print()
    print(report.plain_table(document))
    measured = len({(row["op"], row["case"]) for row in document["results"] if "median_ms" in row})
    of_budget = f" of a {budget.seconds:g} s budget" if budget is not None else ""
    print(f"\n{measured} of {len(cases)} case(s) measured in {time.perf_counter() - start:.0f} s{of_budget}; wrote:")
    for path in paths:
        print(f"  {path}")
    return 0
