"""CharRNN sampling: the incremental sampler against the naive loop that reruns the network over the prefix.

``python -m bench.charrnn_sampling [--n 64] [--length 500] [--hidden 512] [--layers 2] [--vocab 65]
[--device cpu] [--out bench/results]`` builds a randomly initialised :class:`fastflow.models.CharRNN` (float32,
eval mode) and draws ``n`` texts of ``length`` characters after a one-character prime twice, from generators seeded
alike:

- ``naive``: for each new character the whole network runs over the whole prefix (``forward`` of the prefix and a
  placeholder, the last position's logits): ``length`` passes over sequences of 1 … ``length`` characters, what a
  model without a carried state costs;
- ``incremental``: ``CharRNN.sample``, the prime once and then one recurrent step per character from the carried
  state, the draws on the device.

Both draw with ``torch.multinomial`` from the same generator, so they agree character for character unless float32
sums in different orders move a probability across a draw (the fraction of equal characters is reported). Written
as ``<device>-<date>-charrnn-sampling.json``.
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


@torch.no_grad()
def naive_sample(model, prime: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 1 + length]`` tokens: each character from a fresh forward pass over the prefix."""
    tokens = torch.empty(prime.shape[0], prime.shape[1] + length, dtype=torch.int64, device=prime.device)
    tokens[:, :prime.shape[1]] = prime
    placeholder = torch.zeros(prime.shape[0], 1, dtype=torch.int64, device=prime.device)
    for t in range(prime.shape[1], tokens.shape[1]):
        # logits[:, t] is the distribution of position t given the positions before it.
        logits, _ = model(torch.cat([tokens[:, :t], placeholder], dim=1))
        probabilities = torch.softmax(logits[:, t].float(), dim=1)
        tokens[:, t] = torch.multinomial(probabilities, 1, generator=generator)[:, 0]
    return tokens


def measure(*, n: int, length: int, hidden: int, layers: int, vocab: int, device: str, seed: int = 0) -> dict:
    from fastflow.models import CharRNN

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = CharRNN(vocab, hidden, layers).to(dev).eval()
    prime = torch.randint(0, vocab, (n, 1), device=dev, generator=torch.Generator(dev).manual_seed(seed))
    # Warm-up: a few characters of each.
    naive_sample(model, prime, 3, torch.Generator(dev).manual_seed(seed))
    model.sample(n, 3, prime=prime, generator=torch.Generator(dev).manual_seed(seed))
    seconds, texts = {}, {}
    for method in ("incremental", "naive"):
        generator = torch.Generator(dev).manual_seed(seed + 1)
        _synchronize(dev)
        start = time.perf_counter()
        if method == "naive":
            texts[method] = naive_sample(model, prime, length, generator)
        else:
            texts[method] = model.sample(n, length, prime=prime, generator=generator)
        _synchronize(dev)
        seconds[method] = time.perf_counter() - start
    return {
        "n": n, "length": length, "hidden": hidden, "layers": layers, "vocab": vocab,
        "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        "naive_s": seconds["naive"], "incremental_s": seconds["incremental"],
        "speedup": seconds["naive"] / seconds["incremental"],
        "equal_characters": (texts["naive"] == texts["incremental"]).float().mean().item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.charrnn_sampling", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure(n=args.n, length=args.length, hidden=args.hidden, layers=args.layers, vocab=args.vocab,
                     device=args.device)
    slug, name = device_description(torch.device(args.device))
    result.update(device=name, torch=torch.__version__, date=datetime.date.today().isoformat())
    print(f"CharRNN {args.layers}×{args.hidden} LSTM, vocabulary {args.vocab}, {args.n} texts × {args.length} "
          f"characters, {name}, {result['threads']} thread(s)")
    print("| sampler | seconds |\n|---|---:|")
    for method in ("naive", "incremental"):
        print(f"| {method} | {result[method + '_s']:.2f} |")
    print(f"incremental is {result['speedup']:.0f}× the naive loop; equal characters: "
          f"{100 * result['equal_characters']:.2f} %")
    write_json_result(args.out, slug, result["date"], "charrnn-sampling", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
