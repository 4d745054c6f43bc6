"""Sampling time per image of a PixelCNN: the naive sampler against the cached one, the same images.

``python -m bench.pixelcnn_sampling [--n 16] [--hidden 128] [--layers 15] [--size 28] [--levels 2] [--gated]
[--device cpu] [--out bench/results]`` builds a randomly initialised :class:`fastflow.models.PixelCNN` (float32),
draws one set of uniforms, and samples ``n`` images from it with ``method="naive"`` (the whole network over the
whole image once per pixel and colour: ``C·H·W`` passes, what a plain PixelCNN does) and ``method="cached"`` (each
layer's output computed once, at its position, from padded buffers of its inputs). Each sampler runs once after a
one-row warm-up of both (a whole naive run takes minutes); the wall-clock time of each, per image, their ratio,
and the fraction of pixels on which the two agree (float32 sums in different orders may flip a pixel whose uniform
ties its probability to rounding; in float64 the tests require every pixel equal) are printed and written as
``<device>-<date>-pixelcnn-sampling.json``.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch

from bench.harness import device_description, write_json_result

RESULTS = Path(__file__).parent / "results"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(*, n: int, hidden: int, layers: int, size: int, levels: int, gated: bool, device: str,
            seed: int = 0) -> dict:
    """One naive and one cached sampling of ``n`` images from the same uniforms: seconds and agreement."""
    from fastflow.models import PixelCNN

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = PixelCNN(1, levels=levels, hidden_channels=hidden, num_layers=layers, gated=gated,
                     image_size=size).to(dev).eval()
    noise = torch.rand(n, 1, size, size, device=dev, generator=torch.Generator(dev).manual_seed(seed))
    # Warm-up (allocator, oneDNN primitives) on one row of the same model.
    for method in ("naive", "cached"):
        model.sample(n, noise=noise[:, :, :1], size=(1, size), method=method)
    seconds = {}
    images = {}
    for method in ("naive", "cached"):
        _synchronize(dev)
        start = time.perf_counter()
        images[method] = model.sample(n, noise=noise, method=method)
        _synchronize(dev)
        seconds[method] = time.perf_counter() - start
    return {
        "n": n, "hidden": hidden, "layers": layers, "size": size, "levels": levels, "gated": gated,
        "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        "naive_s": seconds["naive"], "cached_s": seconds["cached"],
        "naive_s_per_image": seconds["naive"] / n, "cached_s_per_image": seconds["cached"] / n,
        "speedup": seconds["naive"] / seconds["cached"],
        "equal_pixels": (images["naive"] == images["cached"]).float().mean().item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pixelcnn_sampling", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="images per sampling (default 16)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=15)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--gated", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure(n=args.n, hidden=args.hidden, layers=args.layers, size=args.size, levels=args.levels,
                     gated=args.gated, device=args.device)
    slug, name = device_description(torch.device(args.device))
    result.update(device=name, torch=torch.__version__, date=datetime.date.today().isoformat())
    kind = "gated PixelCNN" if args.gated else "PixelCNN"
    print(f"{kind}, {args.layers} layers × {args.hidden} channels, {args.size}×{args.size}, {args.levels} levels, "
          f"n = {args.n}, {name}, {result['threads']} thread(s)")
    print("| sampler | seconds | seconds per image |\n|---|---:|---:|")
    for method in ("naive", "cached"):
        print(f"| {method} | {result[method + '_s']:.2f} | {result[method + '_s_per_image']:.3f} |")
    print(f"cached is {result['speedup']:.0f}× the naive sampler; equal pixels: {100 * result['equal_pixels']:.3f} %")
    tag = "gated" if args.gated else "pixelcnn"
    write_json_result(args.out, slug, result["date"], f"{tag}-sampling", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
