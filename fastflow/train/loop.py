"""The training loop for image flows: Adam with linear warm-up, gradient clipping, a progress bar in
bits/dim, periodic evaluation on the held-out split, ``metrics.jsonl``, PNG sample grids and checkpoints."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from fastflow.data.registry import ImageData
from fastflow.train.checkpoint import save_checkpoint
from fastflow.train.images import save_grid

__all__ = ["TrainConfig", "train"]


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    grad_clip: float = 100.0
    seed: int = 0
    eval_every: int = 250
    num_samples: int = 64
    temperature: float = 0.7  # Glow's sampling temperature
    #: Wall-clock budget: stop (with a final evaluation, samples and checkpoint) once it is spent; None: no limit.
    max_minutes: float | None = None
    out: str = "runs/digits"
    device: str = "cpu"


def _check_config(config: TrainConfig) -> None:
    for name in ("steps", "batch_size", "eval_every", "num_samples"):
        value = getattr(config, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not config.lr > 0:
        raise ValueError(f"lr must be positive, got {config.lr}")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise ValueError(f"max_minutes must be positive or None, got {config.max_minutes}")


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, batch_size: int = 500, seed: int = 1234) -> float:
    """Mean test bits/dim, with a fixed dequantisation noise so that evaluations compare."""
    was_training = model.training
    model.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    total = sum(model.bits_per_dim(batch).sum().item() for batch in images.split(batch_size))
    torch.random.set_rng_state(state)
    model.train(was_training)
    return total / len(images)


def train(model: nn.Module, data: ImageData, config: TrainConfig, *, progress: bool = True) -> dict[str, float]:
    """Maximise the likelihood of ``data.train`` under ``model`` (which has ``bits_per_dim`` and ``sample``).

    Writes ``config.out``/``metrics.jsonl`` (one JSON object per logged step: ``step``, ``loss``, …),
    ``samples_<step>.png`` at each evaluation and ``samples.png`` at the end, and ``checkpoint.pt`` (atomic).
    Returns the final metrics.
    """
    _check_config(config)
    os.makedirs(config.out, exist_ok=True)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model.to(device).train()
    train_images, test_images = data.train.to(device), data.test.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / config.warmup))
    batches = torch.Generator().manual_seed(config.seed)
    order, cursor = torch.randperm(len(train_images), generator=batches), 0
    metrics_path = os.path.join(config.out, "metrics.jsonl")
    metrics: dict[str, float] = {}
    started = time.perf_counter()
    with open(metrics_path, "w") as log:
        log.write(json.dumps({"config": asdict(config)}) + "\n")
        bar = tqdm(range(1, config.steps + 1), disable=not progress, desc="train", unit="step")
        for step in bar:
            if cursor + config.batch_size > len(order):
                order, cursor = torch.randperm(len(train_images), generator=batches), 0
            batch = train_images[order[cursor : cursor + config.batch_size]]
            cursor += config.batch_size
            loss = model.bits_per_dim(batch).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: the loss is not finite ({loss.item()}); lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            out_of_time = (config.max_minutes is not None
                           and time.perf_counter() - started > 60 * config.max_minutes)
            last = step == config.steps or out_of_time
            if step % 25 == 0 or last:
                bar.set_postfix(bpd=f"{loss.item():.3f}")
            if step % config.eval_every == 0 or last:
                metrics = {
                    "step": step,
                    "loss": loss.item(),
                    "train_bpd": loss.item(),
                    "test_bpd": evaluate(model, test_images),
                    "grad_norm": float(grad_norm),
                    "lr": schedule.get_last_lr()[0],
                    "seconds": time.perf_counter() - started,
                }
                log.write(json.dumps(metrics) + "\n")
                log.flush()
                samples = model.sample(config.num_samples, temperature=config.temperature)
                save_grid(samples, os.path.join(config.out, f"samples_{step}.png"), scale=4)
                save_checkpoint(
                    {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "config": asdict(config)},
                    os.path.join(config.out, "checkpoint.pt"),
                )
                tqdm.write(
                    f"step {step:5d}  train {metrics['train_bpd']:.3f} bits/dim  "
                    f"test {metrics['test_bpd']:.3f} bits/dim"
                )
            if out_of_time:
                tqdm.write(f"stopping at step {step}: the {config.max_minutes:g}-minute budget is spent")
                break
    samples = model.sample(config.num_samples, temperature=config.temperature)
    save_grid(samples, os.path.join(config.out, "samples.png"), scale=4)
    if not math.isfinite(metrics.get("test_bpd", float("nan"))):
        raise FloatingPointError("training ended with a non-finite test bits/dim")
    return metrics
