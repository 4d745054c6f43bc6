"""Command line of the benchmark suite: ``python -m bench [--quick] [--op OPS] [--provider NAMES] ...``.

Times every registered case (``bench/bench_<op>.py``) for every provider and mode, and the per-call dispatch
overhead of the selected ops (``bench/dispatch.py``; ``--no-dispatch`` leaves it out), prints the tables and
writes ``<out>/<device>-<date>.json``, the markdown tables and PNG plots next to it.
"""

from __future__ import annotations

import argparse
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
                        help="seconds of timing per measurement (default 1, quick 0.25)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--list", action="store_true", help="list the cases and providers, measure nothing")
    parser.add_argument("--no-dispatch", action="store_true",
                        help=f"leave out the dispatch-overhead section ({', '.join(dispatch.OPS)}; follows --op)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        for case in cases:
            for provider in harness.provider_names(case):
                if not providers or provider in providers:
                    reason = harness.why_not(case, provider, device)
                    print(f"{case.id:60s} {provider:16s} {reason or 'available'}")
        if dispatch_ops:
            print(f"dispatch overhead: {', '.join(dispatch_ops)} (tiny tensors, forward; --no-dispatch: none)")
        return 0
    config = harness.QUICK_TIMING if args.quick else harness.TimingConfig()
    if args.budget:
        config = harness.TimingConfig(**{**config.__dict__, "budget_s": args.budget})
    start = time.perf_counter()
    document = harness.run(cases, device, providers, modes, config)
    if dispatch_ops:
        document["dispatch"] = dispatch.measure(device, dispatch_ops, config)
    document["quick"] = args.quick
    document["command"] = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    paths = report.write_results(document, args.out, "-quick" if args.quick else "")
    print()
    print(report.plain_table(document))
    print(f"\n{len(cases)} case(s) in {time.perf_counter() - start:.0f} s; wrote:")
    for path in paths:
        print(f"  {path}")
    return 0
