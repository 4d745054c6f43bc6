"""Training a language model on text (``TextData``) by truncated back-propagation through time, in the trainer's
loop (:class:`fastflow.train.loop.Trainer`: checkpoints, ``--resume``, warm-up and cosine schedule, clipping,
Polyak averaging, ``metrics.jsonl``, the validation split choosing ``checkpoint-best.pt``).

**Batches.** The ``N`` training characters are cut into ``B`` (``batch_size``) contiguous streams, as char-rnn and
PyTorch's word_language_model do: stream ``b`` is characters ``[o + b·L, o + (b+1)·L)`` with ``L = (N − T) // B``
and an offset ``o ∈ [0, T)`` drawn per epoch from the seed, so that the segment boundaries move between epochs.
Each step trains on the next ``T`` (``seq_len``) characters of every stream, starting from the recurrent state the
previous step ended in, detached: the gradient is truncated at the segment's start, the state is not. Each epoch
starts from the model's fixed start. Every character of a stream is thus scored once per epoch, given all of its
stream before it. The loss is the mean over the streams of nats per character. Under ``N`` processes each takes
``B/N`` streams and keeps their states; a checkpoint gathers every stream's state (one all-reduce), so that a
resumed run continues exactly, under any number of processes that divides ``B``.

**Evaluation** (:func:`evaluate_text`): nats per character of a whole split read as one text, every character
scored once: the split is cut into ``pieces`` contiguous pieces scored side by side, each after a warm-up on the
``warmup`` characters before it (not scored; the first piece starts from the model's start, as the split does),
so that the score hardly depends on the number of pieces.

**Samples**: ``samples_<step>.txt`` at each evaluation and ``samples.txt`` at the end, ``num_samples`` texts of
:data:`SAMPLE_LENGTH` characters each, drawn with a generator seeded by the step.

``metrics.jsonl`` holds what the image trainer logs, with ``chars_per_s`` for ``images_per_s`` and the scores as
``valid_nats_per_char`` and ``test_nats_per_char``.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.train.distributed import Context
from fastflow.train.loop import PRECISIONS, Trainer, _generator
from fastflow.train.objective import NATS_PER_CHAR, Unit

__all__ = ["EVAL_PIECES", "EVAL_WARMUP", "SAMPLE_LENGTH", "TextObjective", "TextTrainer", "evaluate_text",
           "format_samples"]

EVAL_PIECES = 32
EVAL_WARMUP = 200
EVAL_SEGMENT = 500  # characters per call in evaluation: bounds the memory of the logits [pieces, segment, V]
SAMPLE_LENGTH = 500


def _detached(state: Tensor | tuple[Tensor, ...] | None) -> Tensor | tuple[Tensor, ...] | None:
    if state is None or isinstance(state, Tensor):
        return None if state is None else state.detach()
    return tuple(part.detach() for part in state)


def _parts(state: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _state(parts: list[Tensor] | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    """The inverse of :func:`_parts`: ``(h, c)`` for an LSTM, ``h`` alone for an RNN."""
    return tuple(parts) if len(parts) > 1 else parts[0]


class TextObjective(nn.Module):
    """``forward(x [b, T], state) -> (nats per character [b], state')``: what DistributedDataParallel wraps."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        log_probs, state = self.model.char_log_probs(x, state)
        return -log_probs.mean(1), state


@torch.no_grad()
def evaluate_text(
    model: nn.Module,
    tokens: Tensor,
    *,
    pieces: int = EVAL_PIECES,
    warmup: int = EVAL_WARMUP,
    context: Context | None = None,
    precision: str = "fp32",
) -> float:
    """Mean nats per character of ``tokens [N]`` (int64) under the language model ``model`` (a ``CharRNN``), read as
    one text: ``pieces`` contiguous pieces side by side, each but the first after ``warmup`` unscored characters.

    Under several processes each scores its share of the pieces and the sums are all-reduced.
    """
    if not isinstance(tokens, Tensor) or tokens.dim() != 1 or tokens.is_floating_point():
        raise ValueError(f"tokens must be int64 [N], got {getattr(tokens, 'dtype', type(tokens).__name__)} "
                         f"{tuple(getattr(tokens, 'shape', ()))}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    context = context or Context()
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)
    count = len(tokens)
    if count:
        length = math.ceil(count / min(pieces, count))
        starts = torch.arange(0, count, length)  # the pieces' first characters; no piece is empty
        share = torch.arange(len(starts)).chunk(context.world_size)
        mine = share[context.rank] if context.rank < len(share) else torch.arange(0)
        was_training = model.training
        model.eval()
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                if len(mine):
                    total += _score_pieces(model, tokens, starts[mine], length, warmup, device)
        finally:
            model.train(was_training)
    total = context.all_sum(total)
    return (total[0] / total[1].clamp_min(1)).item()


def _score_pieces(model: nn.Module, tokens: Tensor, starts: Tensor, length: int, warmup: int,
                  device: torch.device) -> Tensor:
    """``[−Σ log p, number of characters]`` (float64) of the pieces ``tokens[s : s + length]`` for ``s`` in
    ``starts``."""
    count = len(tokens)
    state = None
    # Every piece but the first starts at or after `length`, so up to `length` characters precede it.
    warmup = min(warmup, length) if int(starts.max()) > 0 else 0
    if warmup > 0:
        # The W characters before each piece; the first piece's (there are none) are replaced by the start.
        before = (starts[:, None] - warmup + torch.arange(warmup)).clamp_min(0)
        _, state = model(tokens[before].to(device))
        fresh = (starts == 0).to(device)[None, :, None]
        state = _state([torch.where(fresh, torch.zeros_like(part), part) for part in _parts(state)])
    positions = starts[:, None] + torch.arange(length)  # [pieces, length]; the last piece may run past the end
    scored = (positions < count).to(device)
    text = tokens[positions.clamp_max(count - 1)].to(device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for begin in range(0, length, EVAL_SEGMENT):
        segment = slice(begin, begin + EVAL_SEGMENT)
        log_probs, state = model.char_log_probs(text[:, segment], state)
        mask = scored[:, segment]
        sums += torch.stack([-(log_probs.double() * mask).sum(), mask.sum().double()])
    return sums


def format_samples(texts: list[str], title: str = "") -> str:
    """Texts one after another, each under a header line ``==> sample 1 of 4 (title) <==``."""
    suffix = f" ({title})" if title else ""
    return "".join(f"==> sample {i + 1} of {len(texts)}{suffix} <==\n{text}\n\n" for i, text in enumerate(texts))


class TextTrainer(Trainer):
    """The trainer's loop on ``TextData`` with a ``CharRNN``: the batches, loss, scores and samples of the module
    docstring."""

    throughput = "chars"

    # ----------------------------------------------------------------------------------------------
    # The data hooks: streams of characters.

    def _prepare_data(self) -> int:
        config, data, model = self.config, self.data, self.model
        if getattr(model, "vocab_size", None) != data.vocab_size:
            raise ValueError(f"the model has a vocabulary of {getattr(model, 'vocab_size', '?')} tokens, the text "
                             f"{data.name!r} {data.vocab_size} characters: build it with vocab_size=data.vocab_size")
        if model.vocab is None:
            model.vocab = data.vocab  # so that samples can be read, and the checkpoint carries the characters
        elif model.vocab != data.vocab:
            raise ValueError(f"the model's vocabulary differs from that of the text {data.name!r}")
        need = config.batch_size * config.seq_len + config.seq_len
        if len(data.train) < need:
            raise ValueError(f"batch_size {config.batch_size} streams of seq_len {config.seq_len} characters need at "
                             f"least {need} training characters; {data.name} has {len(data.train)}: lower batch_size "
                             "or seq_len")
        self.stream_length = (len(data.train) - config.seq_len) // config.batch_size
        self.hidden: Any = None
        return self.stream_length // config.seq_len

    def _unit(self) -> Unit:
        return NATS_PER_CHAR

    def _objective(self) -> nn.Module:
        return TextObjective(self.model)

    @property
    def _examples_per_step(self) -> int:
        return self.config.batch_size * self.config.seq_len

    @property
    def _mine(self) -> slice:
        """This process's streams."""
        return slice(self.context.rank * self.local_batch, (self.context.rank + 1) * self.local_batch)

    def _start_epoch(self, epoch: int) -> None:
        config = self.config
        offset = int(torch.randint(config.seq_len, (), generator=_generator(config.seed, 0, epoch)))
        streams = self.data.train[offset : offset + config.batch_size * self.stream_length]
        self.streams = streams.view(config.batch_size, self.stream_length)[self._mine]
        self.hidden = None

    def _next_batch(self) -> tuple[Tensor, ...]:
        """The next ``seq_len`` characters ``[B/N, T]`` of this process's streams."""
        length = self.config.seq_len
        if self.cursor + length > self.stream_length:  # the streams' remainders are dropped
            self.epoch, self.cursor = self.epoch + 1, 0
            self._start_epoch(self.epoch)
        x = self.streams[:, self.cursor : self.cursor + length]
        self.cursor += length
        return (x.to(self.device),)

    def _loss(self, objective: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        (x,) = batch
        per_stream, state = objective(x, self.hidden)
        self.hidden = _detached(state)
        return per_stream

    # ----------------------------------------------------------------------------------------------
    # The state the image trainer does not have: the streams' recurrent states.

    def _gathered_hidden(self) -> list[Tensor] | None:
        """Every stream's recurrent state ``[num_layers, B, H]`` (``h`` and, for an LSTM, ``c``), on the CPU."""
        if self.hidden is None:
            return None
        gathered = []
        for part in _parts(self.hidden):
            full = part.new_zeros(part.shape[0], self.config.batch_size, part.shape[2])
            full[:, self._mine] = part
            gathered.append(self.context.all_sum(full).cpu())
        return gathered

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["text"] = {"hidden": self._gathered_hidden(), "vocab": list(self.data.vocab)}
        return state

    def load_state_dict(self, state: dict[str, Any], source: str = "the checkpoint") -> None:
        stored = state.get("text") or {}
        if stored.get("vocab") not in (None, list(self.data.vocab)):  # before the weights, whose shapes differ then
            raise ValueError(f"{source} was trained on a text of another vocabulary ({len(stored['vocab'])} "
                             f"characters) than {self.data.name!r} ({self.data.vocab_size}): give the run's --data "
                             f"({state.get('data_spec', '?')})")
        super().load_state_dict(state, source)
        hidden = stored.get("hidden")
        if hidden is not None:
            self.hidden = _state([part[:, self._mine].to(self.device) for part in hidden])

    # ----------------------------------------------------------------------------------------------
    # Scores and samples.

    def _write_samples(self, name: str, seed: int) -> None:
        temperature = 1.0 if self.config.temperature is None else self.config.temperature
        generator = torch.Generator(self.device).manual_seed(seed)
        texts = self.model.sample_text(self.config.num_samples, SAMPLE_LENGTH, temperature, generator=generator)
        with open(os.path.join(self.config.out, name), "w", encoding="utf-8") as file:
            file.write(format_samples(texts, f"step {self.step}, temperature {temperature:g}"))

    def _evaluate_and_sample(self) -> tuple[dict[str, float], Tensor | None]:
        config = self.config
        scores = {}
        splits = {"test": self.data.test, **({"valid": self.data.valid} if self.data.valid is not None else {})}
        swap = self.ema.swapped(self.model) if self.ema else contextlib.nullcontext(self.model)
        with swap:
            for split, tokens in splits.items():
                scores[f"{split}_{self.unit.key}"] = evaluate_text(self.model, tokens, context=self.context,
                                                                   precision=config.precision)
            if self.context.is_main:
                self._write_samples(f"samples_{self.step}.txt", config.seed + self.step)
        return scores, None

    def _save_final_samples(self) -> None:
        self._write_samples("samples.txt", self.config.seed)
