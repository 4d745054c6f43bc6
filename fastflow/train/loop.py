"""The trainer of likelihood models, from one CPU process to many GPUs under ``torchrun``.

One step: the next global batch of ``B`` images in a seeded per-epoch order (each of the ``N`` processes takes its
``B/N``), dequantisation noise drawn for the whole global batch from a generator seeded by the step (so that every
example sees the same noise whatever ``N``), the per-example bits/dim under bf16 autocast or float32, backward
through DistributedDataParallel (the mean over the global batch), gradient-norm clipping, Adam or Adamax with a
linear warm-up, and a Polyak average of the weights. Every random choice of a step is a function of the seed and
the step, so a run resumed from a checkpoint repeats the losses of an uninterrupted one exactly.

Every ``eval_every`` steps: bits/dim of the held-out split (with the averaged weights, a fixed noise), a PNG grid of
samples and the PNG loss curve; every ``checkpoint_every`` steps an atomic checkpoint (model, optimiser, schedule,
average, data position, random states). Rank 0 logs and writes; ``metrics.jsonl`` holds one JSON object per logged
step (``step``, ``loss``, ``lr``, ``grad_norm``, ``images_per_s``, and at evaluations ``test_bpd``, or ``test_nll`` in
nats for binary data, and ``valid_...`` when the data has a validation split). The losses are per-example negative
log-likelihoods in bits/dim, or in nats for binary data (``fastflow.train.objective``). With a validation split,
``checkpoint-best.pt`` holds the state of the best validation score, which ``fastflow eval`` scores.

Text (``TextData``) trains in the same loop by :class:`fastflow.train.text.TextTrainer`, which overrides the data
hooks of :class:`Trainer` (batches, loss, evaluation, samples, extra checkpoint state).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from fastflow.data.registry import ImageData
from fastflow.data.text import TextData
from fastflow.train.checkpoint import (
    BEST,
    CheckpointError,
    check_fresh_start,
    checkpoint_files,
    newest_intact_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    save_run_checkpoint,
)
from fastflow.train.distributed import Context
from fastflow.train.ema import EMA
from fastflow.train.guard import NonFiniteGuard
from fastflow.train.images import draw_samples, make_grid, save_grid
from fastflow.train.lock import RunLock, RunLockedError
from fastflow.train.monitor import Monitor, check_tensorboard
from fastflow.train.objective import BITS_PER_DIM, Objective, Unit, unit_for

__all__ = ["TrainConfig", "evaluate", "train"]

#: Fault injection for the tests of resumption: ``"RANK:STEP"`` makes that rank kill itself (SIGKILL) as it starts
#: that step, as a crashed machine would; only in a first attempt, not in processes torchrun restarted.
KILL_AT = "FASTFLOW_TEST_KILL_AT"

PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adam", "adamax")
LR_DECAYS = ("none", "cosine")


@dataclass
class TrainConfig:
    """What ``fastflow train`` sets; ``batch_size`` is the global batch (split over the processes)."""

    steps: int | None = 1500
    epochs: float | None = None  # instead of steps: passes over the training split
    batch_size: int = 64
    lr: float = 2e-3
    optimizer: str = "adam"
    warmup: int = 100
    lr_decay: str = "none"  # after the warm-up: constant, or a cosine from lr down to 0 at the last step
    weight_decay: float = 0.0  # decoupled (AdamW-style) decay of every parameter, per step, times lr
    grad_clip: float = 100.0
    ema: float | None = 0.999  # Polyak averaging decay for evaluation and samples; None: the last weights
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int | None = None  # default: eval_every
    keep: int = 3  # checkpoints kept
    log_every: int = 10
    num_samples: int = 64
    temperature: float | None = None  # of the sample grids; None: 0.7 for flows, 1.0 (exact) for discrete models
    max_minutes: float | None = None  # stop (evaluation, samples, checkpoint) once this wall-clock budget is spent
    precision: str = "fp32"
    compile: bool = False  # torch.compile the training step's forward (and so its backward), custom ops inside
    device: str = "auto"
    eval_batch_size: int = 500
    seq_len: int = 100  # text: characters per truncated back-propagation-through-time segment
    out: str = "runs/digits"
    resume: bool = False  # continue from the newest intact checkpoint in out
    overwrite: bool = False  # start afresh in an out that holds checkpoints, deleting them
    tensorboard: str | None = None  # a folder for TensorBoard event files (needs the tensorboard package)
    model_spec: dict[str, Any] = field(default_factory=dict)  # name and options, for rebuilding from checkpoints
    data_spec: str = "digits"


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (AdamW when ``weight_decay`` > 0: the decay decoupled from the gradient's scale) or Adamax."""
    params, decay = list(model.parameters()), config.weight_decay
    if config.optimizer == "adamax":
        # Adamax has no decoupled form in torch; its ``weight_decay`` is the L2 term added to the gradient.
        return torch.optim.Adamax(params, lr=config.lr, weight_decay=decay)
    # The fused kernel (one over all parameters, CPU and CUDA) halves a small model's step on the CPU against the
    # per-tensor loop, whose sqrt alone took a third of a MADE step.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if decay > 0:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=decay, fused=fused)
    return torch.optim.Adam(params, lr=config.lr, fused=fused)


def _compiled(objective: nn.Module, model: nn.Module) -> nn.Module:
    """``torch.compile`` of the training objective: fastflow's ops are custom ops, which dynamo keeps in the graph
    (a Glow or RealNVP step compiles without a graph break, ``tests/test_train.py``); the evaluations and samples
    stay eager. The memory-saving backward is refused: it walks the layers calling ``torch.autograd.grad`` one
    layer at a time, which dynamo does not trace (every level would break the graph)."""
    if any(getattr(module, "memory_efficient", False) for module in model.modules()):
        raise ValueError("--compile does not combine with --memory-efficient: the memory-saving backward calls "
                         "torch.autograd.grad layer by layer, which torch.compile does not trace; drop one of them")
    return torch.compile(objective)


def _lr_factor(warmup: int, total: int, decay: str, step: int) -> float:
    """The learning rate's multiplier at ``step``: a linear warm-up over ``warmup`` steps, then constant or a
    cosine that reaches 0 at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "cosine" and total > warmup:
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))
    return 1.0


def _check_config(config: TrainConfig) -> None:
    positive = ["batch_size", "eval_every", "keep", "log_every", "num_samples", "eval_batch_size", "seq_len"]
    if config.epochs is None:
        positive.append("steps")
    for name in positive:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if config.epochs is not None and not config.epochs > 0:
        raise ValueError(f"epochs must be positive, got {config.epochs}")
    if config.checkpoint_every is not None and config.checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be a positive int, got {config.checkpoint_every}")
    if not config.lr > 0:
        raise ValueError(f"lr must be positive, got {config.lr}")
    if config.warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {config.warmup}")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise ValueError(f"max_minutes must be positive or None, got {config.max_minutes}")
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {config.precision!r}")
    if config.lr_decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {config.lr_decay!r}")
    if not (isinstance(config.weight_decay, (int, float)) and math.isfinite(config.weight_decay)
            and config.weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {config.weight_decay!r}")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    if config.ema is not None and not 0 < config.ema < 1:
        raise ValueError(f"ema must be in (0, 1) or None, got {config.ema}")
    if config.temperature is not None and not (isinstance(config.temperature, (int, float))
                                               and math.isfinite(config.temperature) and config.temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {config.temperature!r}")
    if not config.grad_clip > 0:
        raise ValueError(f"grad_clip must be positive, got {config.grad_clip}")
    if config.resume and config.overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or start it afresh")
    if config.tensorboard:
        check_tensorboard()


def _generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator whose state depends only on the seed and the stream's numbers (epoch, step, ...)."""
    value = seed
    for number in stream:
        value = (value * 1_000_003 + number + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    *,
    vector: bool = False,
    batch_size: int = 500,
    seed: int = 1234,
    context: Context | None = None,
    precision: str = "fp32",
    unit: Unit = BITS_PER_DIM,
) -> float:
    """Mean negative log-likelihood of ``images`` in ``unit`` (bits/dim, or nats for binary data), with a fixed
    dequantisation noise (evaluations compare across runs and steps).

    Under several processes each evaluates its share and the sums are all-reduced.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    context = context or Context()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    objective = Objective(model, vector, unit)
    noise = torch.rand(images.shape, generator=_generator(seed))
    share = torch.arange(len(images)).chunk(context.world_size)
    mine = share[context.rank] if context.rank < len(share) else torch.arange(0)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for index in mine.split(batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = objective(images[index].to(device), noise[index].to(device))
        total += torch.stack([loss.double().sum(), torch.tensor(float(len(index)), device=device)])
    model.train(was_training)
    total = context.all_sum(total)
    return (total[0] / total[1].clamp_min(1)).item()


class Trainer:
    """The loop of the module docstring for ``ImageData``; a subclass for other data overrides the hooks: what the
    data allow (:meth:`_prepare_data`), the objective, the batches and their loss, the held-out scores and samples,
    and extra checkpoint state."""

    #: What the throughput counts, ``<throughput>_per_s`` in the metrics: examples per step times steps per second.
    throughput = "images"

    def __init__(self, model: nn.Module, data: ImageData, config: TrainConfig, context: Context, progress: bool):
        _check_config(config)
        self.model, self.data, self.config, self.context, self.progress = model, data, config, context, progress
        world = context.world_size
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes {world}")
        self.vector = bool(config.model_spec.get("vector", False))
        self.best: dict[str, Any] | None = None  # {"step", "valid"}: the evaluation the validation split chose
        self.device = context.device
        self.local_batch = config.batch_size // world
        self.steps_per_epoch = self._prepare_data()
        self.unit = self._unit()
        self.total_steps = (
            config.steps if config.epochs is None else max(1, math.ceil(config.epochs * self.steps_per_epoch))
        )
        self.checkpoint_every = config.checkpoint_every or config.eval_every
        model.to(self.device).train()
        self.objective = self.plain_objective = self._objective()
        if context.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = DistributedDataParallel(self.objective, device_ids=ids)
        if config.compile:
            self.objective = _compiled(self.objective, model)
        self.optimizer = _optimizer(model, config)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, functools.partial(_lr_factor, max(1, config.warmup), self.total_steps, config.lr_decay))
        self.ema = EMA(model, config.ema) if config.ema is not None else None
        self.step = self.epoch = self.cursor = 0
        self._start_epoch(0)
        self.metrics_path = os.path.join(config.out, "metrics.jsonl")
        self.monitor: Monitor | None = None

    # ----------------------------------------------------------------------------------------------
    # The data hooks: images.

    def _prepare_data(self) -> int:
        """Refuse data the configuration cannot train on; the number of steps of one epoch."""
        if len(self.data.train) < self.config.batch_size:
            raise ValueError(f"batch_size {self.config.batch_size} exceeds the {len(self.data.train)} training images")
        return len(self.data.train) // self.config.batch_size

    def _unit(self) -> Unit:
        return unit_for(self.data.levels)

    def _objective(self) -> nn.Module:
        """The module the training step calls (wrapped by DistributedDataParallel under several processes)."""
        return Objective(self.model, self.vector, self.unit)

    @property
    def _examples_per_step(self) -> int:
        """What one step trains on, in the unit of :attr:`throughput` (all processes together)."""
        return self.config.batch_size

    def _epoch_order(self, epoch: int) -> Tensor:
        return torch.randperm(len(self.data.train), generator=_generator(self.config.seed, 0, epoch))

    def _start_epoch(self, epoch: int) -> None:
        """Set up the data order of ``epoch`` (also when a checkpoint of that epoch is resumed)."""
        self.order = self._epoch_order(epoch)

    def _next_batch(self) -> tuple[Tensor, ...]:
        """This process's share of the next global batch, and its dequantisation noise."""
        batch = self.config.batch_size
        if self.cursor + batch > len(self.order):  # the remainder of an epoch is dropped
            self.epoch, self.cursor = self.epoch + 1, 0
            self._start_epoch(self.epoch)
        indices = self.order[self.cursor : self.cursor + batch]
        self.cursor += batch
        images = self.data.train[indices]
        noise = torch.rand(images.shape, generator=_generator(self.config.seed, 1, self.step))
        mine = slice(self.context.rank * self.local_batch, (self.context.rank + 1) * self.local_batch)
        return images[mine].to(self.device), noise[mine].to(self.device)

    def _loss(self, objective: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """The per-example losses ``[b]`` of this process's ``batch``, through ``objective``."""
        return objective(*batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "config": asdict(self.config),
            "model_spec": self.config.model_spec,
            "data_spec": self.config.data_spec,
            "data_shape": list(self.data.shape),
            "levels": self.data.levels,
            "unit": self.unit.name,
            "best": self.best,
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "the checkpoint") -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            stored = state.get("model_spec", {})
            raise ValueError(
                f"{source} holds a {stored.get('name', '?')} with options {stored.get('options', {})}, which does not "
                f"fit the model given ({self.config.model_spec.get('options', {})}): "
                f"{str(error).strip().splitlines()[-1].strip()}"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch, self.cursor = state["step"], state["epoch"], state["cursor"]
        self.best = state.get("best")
        self._start_epoch(self.epoch)
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def _resume(self) -> None:
        """Continue from the newest intact checkpoint; newer damaged ones are skipped with a warning, and a folder
        whose checkpoints are all damaged is an error (never a fresh start over them)."""
        folder = self.config.out
        # On the CPU: the random states must stay CPU tensors; load_state_dict moves the rest to the device.
        path, state, skipped = newest_intact_checkpoint(folder, map_location="cpu")
        if self.context.is_main:
            for _, why in skipped:
                print(f"fastflow: warning: {why}; skipped", file=sys.stderr, flush=True)
        if path is None:
            if skipped:
                from fastflow.train.run import _no_intact_message

                raise CheckpointError(_no_intact_message(folder, skipped))
            if self.context.is_main:
                tqdm.write(f"--resume: no checkpoint in {folder} yet; starting the run")
            return
        self.load_state_dict(state, source=f"checkpoint {path!r}")
        if self.context.is_main:
            self._truncate_metrics(self.step)
            tqdm.write(f"resuming from {path} at step {self.step}")

    def _last_metrics(self) -> dict[str, Any]:
        """The last logged metrics of the run (with its last test score), for a run with nothing left to do."""
        metrics: dict[str, Any] = {"step": self.step}
        if os.path.isfile(self.metrics_path):
            with open(self.metrics_path) as file:
                for line in file:
                    record = json.loads(line)
                    if "step" in record:
                        metrics.update(record)
        metrics["step"] = self.step
        metrics["unit"] = self.unit.name
        return metrics

    def _truncate_metrics(self, step: int) -> None:
        """Drop the lines a killed run logged after its last checkpoint, so that the file reads as one run."""
        if not os.path.isfile(self.metrics_path):
            return
        with open(self.metrics_path) as file:
            lines = [line for line in file if "step" not in json.loads(line) or json.loads(line)["step"] <= step]
        with open(self.metrics_path, "w") as file:
            file.writelines(lines)

    # ----------------------------------------------------------------------------------------------
    # The loop.

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as file:
            file.write(json.dumps(record) + "\n")

    def _sample(self, seed: int) -> Tensor:
        """``num_samples`` images ``[N, C, H, W]`` from the model (its own random state left untouched)."""
        return draw_samples(self.model, self.config.num_samples, self.data.shape,
                            temperature=self.config.temperature, seed=seed)

    def _evaluate_and_sample(self) -> tuple[dict[str, float], Tensor | None]:
        """The held-out scores (every process): ``test_<key>`` and, with a validation split, ``valid_<key>``; and
        the sample grid ``[C, H, W]`` (rank 0; None elsewhere)."""
        config = self.config
        grid, scores = None, {}
        splits = {"test": self.data.test, **({"valid": self.data.valid} if self.data.valid is not None else {})}
        swap = self.ema.swapped(self.model) if self.ema else contextlib.nullcontext(self.model)
        with swap:
            for split, images in splits.items():
                scores[f"{split}_{self.unit.key}"] = evaluate(
                    self.model, images, vector=self.vector, batch_size=config.eval_batch_size, context=self.context,
                    precision=config.precision, unit=self.unit)
            if self.context.is_main:
                samples = self._sample(config.seed + self.step)
                save_grid(samples, os.path.join(config.out, f"samples_{self.step}.png"), scale=4)
                grid = make_grid(samples)
        return scores, grid

    def _save_final_samples(self) -> None:
        """The samples of the finished run (rank 0, averaged weights): ``samples.png``."""
        save_grid(self._sample(self.config.seed), os.path.join(self.config.out, "samples.png"), scale=4)

    def _keep_best(self, scores: dict[str, float]) -> None:
        """With a validation split: the state of the best validation score so far as ``checkpoint-best.pt`` (what
        ``fastflow eval`` scores, so that the test split never chooses)."""
        valid = scores.get(f"valid_{self.unit.key}")
        if valid is None or not math.isfinite(valid) or (self.best is not None and valid >= self.best["valid"]):
            return
        self.best = {"step": self.step, "valid": valid}
        state = self.state_dict()  # on every process: a subclass may gather state across them
        if self.context.is_main:
            save_checkpoint(state, os.path.join(self.config.out, BEST))

    def _plot(self) -> None:
        from fastflow.train.plot import save_curves

        curves: dict[str, list[tuple[float, float]]] = {"train": [], "valid": [], "test": []}
        keys = {"train": "loss", "valid": f"valid_{self.unit.key}", "test": f"test_{self.unit.key}"}
        with open(self.metrics_path) as file:
            for line in file:
                record = json.loads(line)
                for curve, key in keys.items():
                    if key in record:
                        curves[curve].append((record["step"], record[key]))
        save_curves(os.path.join(self.config.out, "loss.png"), {k: v for k, v in curves.items() if v},
                    title=f"{self.config.model_spec.get('name', 'model')} on {self.config.data_spec} "
                          f"({self.unit.name})", ylabel=self.unit.name)

    def _diagnose(self, batch: tuple[Tensor, ...], first: int) -> None:
        """A non-finite loss appeared since step ``first``: name the first layer that produced it, then stop."""
        guard = NonFiniteGuard(self.model)
        try:
            guard.start()
            with torch.no_grad():
                loss = self._loss(self.plain_objective, batch).mean()
            guard.check(self.step, loss)
        finally:
            guard.close()
        raise FloatingPointError(
            f"steps {first}-{self.step}: the loss was not finite (the current batch is finite again); lower --lr"
        )

    def _lock(self) -> RunLock | None:
        """Rank 0 takes the run folder's lock; every process learns whether it could, before any work."""
        lock, failure = None, None
        if self.context.is_main:
            try:
                os.makedirs(self.config.out, exist_ok=True)
                lock = RunLock(self.config.out).acquire()
            except OSError as error:
                failure = error
        if bool(self.context.all_sum(torch.tensor(float(failure is not None))).item()):
            raise failure or RunLockedError(f"rank 0 could not take the lock of the run folder {self.config.out}")
        if lock is not None and lock.stale:
            tqdm.write(f"note: {self.config.out} was locked by a run that ended without releasing it "
                       f"(pid {lock.stale.get('pid', '?')} on {lock.stale.get('host', '?')}); taken over")
        return lock

    def _start(self) -> None:
        """Resume, or start afresh; a fresh start over existing checkpoints needs ``overwrite``."""
        config, context = self.config, self.context
        if context.is_main:
            remove_stale_temporaries(config.out)  # ours to clear: we hold the lock
        context.barrier()
        if config.resume:
            self._resume()
            return
        if not config.overwrite:
            check_fresh_start(config.out)
        existing = checkpoint_files(config.out)
        context.barrier()
        if existing and context.is_main:
            for path in existing:
                os.unlink(path)
            for name in ("checkpoint.pt", BEST):
                if os.path.lexists(os.path.join(config.out, name)):
                    os.unlink(os.path.join(config.out, name))

    def run(self) -> dict[str, Any]:
        lock = self._lock()
        try:
            return self._run()
        finally:
            if self.monitor is not None:
                self.monitor.close()
            if lock is not None:
                lock.release()

    def _run(self) -> dict[str, Any]:
        config, context = self.config, self.context
        self._start()
        if self.step >= self.total_steps:
            if context.is_main:
                tqdm.write(f"{config.out} is already at step {self.step} of {self.total_steps}: nothing to train "
                           "(give a larger --steps or --epochs to train on)")
            return self._last_metrics()
        if context.is_main and self.step == 0:
            with open(self.metrics_path, "w") as file:
                file.write(json.dumps({"config": asdict(config), "world_size": context.world_size}) + "\n")
        kill_rank, _, kill_step = os.environ.get(KILL_AT, "").partition(":")
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            kill_step = ""
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        metrics: dict[str, Any] = {"step": self.step}
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        first_logged, window_start = self.step + 1, time.perf_counter()
        started = time.perf_counter()
        self.monitor = monitor = Monitor(total=self.total_steps, initial=self.step, enabled=context.is_main,
                                         progress=self.progress, tensorboard=config.tensorboard, unit=self.unit,
                                         throughput=self.throughput)
        rate_key = f"{self.throughput}_per_s"
        while self.step < self.total_steps:
            self.step += 1
            step = self.step
            if kill_step and int(kill_rank) == context.rank and int(kill_step) == step:
                os.kill(os.getpid(), signal.SIGKILL)
            batch = self._next_batch()
            with autocast:
                per_example = self._loss(self.objective, batch)
            loss = per_example.float().mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            if self.ema is not None:
                self.ema.update(self.model)
            bad |= ~torch.isfinite(loss)
            monitor.update()
            logging = step % config.log_every == 0 or step == self.total_steps
            evaluating = step % config.eval_every == 0 or step == self.total_steps
            out_of_time = False
            if config.max_minutes is not None and logging:
                # Every process must stop at the same step: rank 0's clock decides.
                late = torch.tensor(float(time.perf_counter() - started > 60 * config.max_minutes))
                out_of_time = bool(context.all_sum(late * (context.rank == 0)).item())
                evaluating = evaluating or out_of_time
            if logging or evaluating:
                if bool(context.all_sum(bad.float()).item()):
                    self._diagnose(batch, first_logged)
                sums = context.all_sum(torch.stack([per_example.detach().double().sum()]).to(self.device))
                elapsed = time.perf_counter() - window_start
                metrics = {
                    "step": step,
                    "epoch": self.epoch,
                    "loss": sums[0].item() / config.batch_size,
                    "lr": self.schedule.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    rate_key: (step - first_logged + 1) * self._examples_per_step / max(elapsed, 1e-9),
                    "seconds": time.perf_counter() - started,
                }
                first_logged, window_start = step + 1, time.perf_counter()
                monitor.log(metrics)
            if evaluating:
                scores, grid = self._evaluate_and_sample()
                metrics.update(scores)
                self._keep_best(scores)
                monitor.evaluation(step, scores, grid)
                unit = self.unit.name
                valid = scores.get(f"valid_{self.unit.key}")
                monitor.write(f"step {step:6d}  train {metrics['loss']:.3f} {unit}  "
                              + (f"valid {valid:.3f} {unit}  " if valid is not None else "")
                              + f"test {scores[f'test_{self.unit.key}']:.3f} {unit}  "
                              f"({metrics[rate_key]:.0f} {self.throughput}/s)")
            if (logging or evaluating) and context.is_main:
                self._log(metrics)
            if evaluating and context.is_main:
                self._plot()
            if step % self.checkpoint_every == 0 or step == self.total_steps or out_of_time:
                state = self.state_dict()  # on every process: a subclass may gather state across them
                if context.is_main:
                    save_run_checkpoint(state, config.out, keep=config.keep)
                context.barrier()
            if out_of_time:
                monitor.write(f"stopping at step {step}: the {config.max_minutes:g}-minute budget is spent")
                break
        monitor.close()
        if context.is_main:
            swap = self.ema.swapped(self.model) if self.ema else contextlib.nullcontext(self.model)
            with swap:
                self._save_final_samples()
        test = metrics.get(f"test_{self.unit.key}")
        if test is not None and not math.isfinite(test):
            raise FloatingPointError(f"training ended with a non-finite test {self.unit.name}")
        metrics["unit"] = self.unit.name
        return metrics


def train(model: nn.Module, data: ImageData | TextData, config: TrainConfig, *,
          progress: bool = True) -> dict[str, Any]:
    """Maximise the likelihood of ``data.train`` under ``model`` (see the module docstring; text by truncated
    back-propagation through time, ``fastflow.train.text``); returns the last logged metrics. Under ``torchrun``
    every process calls this with the same arguments."""
    from fastflow.train.text import TextTrainer

    trainer = TextTrainer if isinstance(data, TextData) else Trainer
    context = Context.from_environment(config.device)
    try:
        torch.manual_seed(config.seed)
        return trainer(model, data, config, context, progress).run()
    finally:
        context.close()
