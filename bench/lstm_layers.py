"""``fastflow.nn.LSTM`` against ``torch.nn.LSTM`` and a Python loop of ``nn.LSTMCell``, side by side in one run.

``python -m bench.lstm_layers [--steps 100] [--batch 32] [--input 256] [--hidden 256,512] [--layers 1]
[--rounds 15] [--device cpu] [--out bench/results]``: for each hidden size, the same weights (one
``state_dict``) in

- ``torch``: ``torch.nn.LSTM`` (on a CPU: oneDNN's LSTM where it applies, else ATen's loop);
- ``fastflow``: ``fastflow.nn.LSTM`` as a user gets it (the automatic choice: where ``fastflow.ops.lstm.LAYER_AUTO``
  does not hold the device's kernel, torch's implementation, so this is torch's time plus the layer's dispatch);
- ``fastflow-cpu``: ``fastflow.nn.LSTM`` with the CPU kernel forced (the lstm op: the input projection as one GEMM,
  then at these sizes the fused recurrence of ``csrc/cpu/lstm_fused.cpp`` — AVX-512 register tiles with the
  pointwise work in place, a thread team per sequence — and the weight gradients as one GEMM each);
- ``cell-loop``: what a user writes without a sequence layer, a Python loop over time steps of ``nn.LSTMCell``
  (one layer: the comparison is made at ``--layers 1``; with more layers the loop runs each layer in turn);

two modes: ``inference`` (``torch.no_grad()``, the output sequence and final state) and ``training`` (forward and
backward: the gradients of the input and of every parameter for a fixed random cotangent of the output). A round
times every provider once, in turn, on the next of several input sets (so that nothing is timed hot in cache
across calls); the median of the rounds is reported, after two warm-up rounds. The input and the parameters are
float32. Written as ``<device>-<date>-lstm-layers.json``.

Every provider computes the same GEMM work, so each time is also given as GFLOP/s of that work (inference
2·T·B·4H·(I + H) per layer; training three times that: the forward, ∂L/∂inputs and ∂L/∂weights) beside the rate
of one large float32 matmul measured in the same run, before and after the layers (``bench.harness.matmul_rate``:
what the machine's GEMM library reaches when nothing else limits it). A speed-up over the cell loop then reads
as a fraction of that ceiling: k× the loop needs k times the loop's rate.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bench.harness import TimingConfig, device_description, matmul_rate, write_json_result

RESULTS = Path(__file__).parent / "results"
INPUT_SETS = 4
PROVIDERS = ("torch", "fastflow", "fastflow-cpu", "cell-loop")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CellLoop(nn.Module):
    """A stack of ``nn.LSTMCell`` run by a Python loop over time steps: ``[T, B, I] -> [T, B, H]``."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.cells = nn.ModuleList()
        for layer in range(lstm.num_layers):
            cell = nn.LSTMCell(lstm.input_size if layer == 0 else lstm.hidden_size, lstm.hidden_size)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(lstm, f"{name}_l{layer}"))
            self.cells.append(cell)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for cell in self.cells:
            state, outputs = None, []
            for t in range(x.shape[0]):
                state = cell(x[t], state)
                outputs.append(state[0])
            x = torch.stack(outputs)
        return x


def _modules(steps: int, batch: int, inputs: int, hidden: int, layers: int, device: torch.device):
    import fastflow
    from fastflow.nn import LSTM

    torch.manual_seed(0)
    theirs = nn.LSTM(inputs, hidden, num_layers=layers).to(device)
    ours = LSTM(inputs, hidden, num_layers=layers).to(device)
    ours.load_state_dict(theirs.state_dict())
    loop = CellLoop(theirs).to(device)
    def forced(x):
        with fastflow.set_backend("cpu" if device.type == "cpu" else "cuda"):
            return ours(x)[0]

    return {"torch": lambda x: theirs(x)[0], "fastflow": lambda x: ours(x)[0], "fastflow-cpu": forced,
            "cell-loop": loop}, {"torch": theirs, "fastflow": ours, "fastflow-cpu": ours, "cell-loop": loop}


def gemm_flops(*, steps: int, batch: int, inputs: int, hidden: int, layers: int, training: bool) -> float:
    """The GEMM FLOPs of one call: per layer the input projection and the recurrence, 2·T·B·4H·(I + H) (layers
    after the first read H inputs); training adds ∂L/∂inputs-and-state and ∂L/∂weights, the same again each."""
    forward = sum(2 * steps * batch * 4 * hidden * ((inputs if layer == 0 else hidden) + hidden)
                  for layer in range(layers))
    return 3 * forward if training else forward


def measure(*, steps: int, batch: int, inputs: int, hidden: int, layers: int, rounds: int, device: str) -> dict:
    """Median seconds per call of each provider in each mode, and the largest output difference to torch's."""
    dev = torch.device(device)
    fns, modules = _modules(steps, batch, inputs, hidden, layers, dev)
    generator = torch.Generator(dev).manual_seed(1)
    xs = [torch.randn(steps, batch, inputs, device=dev, generator=generator) for _ in range(INPUT_SETS)]
    cotangent = torch.randn(steps, batch, hidden, device=dev, generator=generator)

    def inference(name: str, x: torch.Tensor):
        with torch.no_grad():
            return fns[name](x)

    def training(name: str, x: torch.Tensor):
        x = x.detach().requires_grad_(True)
        leaves = [x, *modules[name].parameters()]
        return torch.autograd.grad(fns[name](x), leaves, cotangent)

    result = {}
    for mode, call in (("inference", inference), ("training", training)):
        times = {name: [] for name in PROVIDERS}
        for index in range(rounds + 2):
            x = xs[index % INPUT_SETS]
            for name in PROVIDERS:
                _synchronize(dev)
                start = time.perf_counter()
                call(name, x)
                _synchronize(dev)
                if index >= 2:
                    times[name].append(time.perf_counter() - start)
        result[mode] = {name: statistics.median(values) for name, values in times.items()}
    with torch.no_grad():
        reference = fns["torch"](xs[0])
        result["max_abs_difference"] = {name: (fns[name](xs[0]) - reference).abs().max().item()
                                        for name in PROVIDERS[1:]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lstm_layers", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--hidden", default="256,512", help="comma-separated hidden sizes (default 256,512)")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    slug, name = device_description(torch.device(args.device))
    ceiling = [1e3 * matmul_rate(torch.device(args.device), torch.float32, TimingConfig())]
    report = {"device": name, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "threads": torch.get_num_threads(), "steps": args.steps, "batch": args.batch, "input": args.input,
              "layers": args.layers, "rounds": args.rounds, "dtype": "float32", "results": {}}
    print(f"LSTM, T = {args.steps}, B = {args.batch}, I = {args.input}, {args.layers} layer(s), float32, {name}, "
          f"{report['threads']} thread(s); median of {args.rounds} rounds, ms per call")
    print("| H | mode | torch.nn.LSTM | fastflow.nn.LSTM | fastflow, kernel forced | LSTMCell loop | fastflow vs "
          "torch | kernel vs torch | torch vs loop | fastflow vs loop | kernel vs loop |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rates = []
    for hidden in (int(h) for h in args.hidden.split(",")):
        result = measure(steps=args.steps, batch=args.batch, inputs=args.input, hidden=hidden, layers=args.layers,
                         rounds=args.rounds, device=args.device)
        report["results"][str(hidden)] = result
        for mode in ("inference", "training"):
            t = result[mode]
            flops = gemm_flops(steps=args.steps, batch=args.batch, inputs=args.input, hidden=hidden,
                               layers=args.layers, training=mode == "training")
            result[f"{mode}_gflop"] = flops / 1e9
            result[f"{mode}_gflops"] = {name: flops / seconds / 1e9 for name, seconds in t.items()}
            rates.append((hidden, mode, result[f"{mode}_gflops"]))
            print(f"| {hidden} | {mode} | {1e3 * t['torch']:.1f} | {1e3 * t['fastflow']:.1f} | "
                  f"{1e3 * t['fastflow-cpu']:.1f} | {1e3 * t['cell-loop']:.1f} | {t['torch'] / t['fastflow']:.2f}× | "
                  f"{t['torch'] / t['fastflow-cpu']:.2f}× | {t['cell-loop'] / t['torch']:.2f}× | "
                  f"{t['cell-loop'] / t['fastflow']:.2f}× | {t['cell-loop'] / t['fastflow-cpu']:.2f}× |")
        d = result["max_abs_difference"]
        print(f"|  | max difference to torch | | {d['fastflow']:.1e} | {d['fastflow-cpu']:.1e} | "
              f"{d['cell-loop']:.1e} | | | | |")
    ceiling.append(1e3 * matmul_rate(torch.device(args.device), torch.float32, TimingConfig()))
    report["matmul_gflops"] = {"before": ceiling[0], "after": ceiling[1]}
    print(f"\nGFLOP/s of the same GEMM work; one large float32 matmul in this run: {ceiling[0]:.0f} (before) and "
          f"{ceiling[1]:.0f} (after)")
    print("| H | mode | torch.nn.LSTM | fastflow, kernel forced | LSTMCell loop | 3× the loop needs | of the matmul "
          "rate |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for hidden, mode, r in rates:
        print(f"| {hidden} | {mode} | {r['torch']:.0f} | {r['fastflow-cpu']:.0f} | {r['cell-loop']:.0f} | "
              f"{3 * r['cell-loop']:.0f} | {300 * r['cell-loop'] / max(ceiling):.0f} % |")
    write_json_result(args.out, slug, report["date"], "lstm-layers", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
