"""CharRNN: a character-level language model, embedding → LSTM (or tanh RNN) stack → linear → softmax.

``p(x_1, …, x_T | s) = Π_t p(x_t | x_{<t}, s)``, each conditional a softmax over the vocabulary of the top layer's
hidden state after ``x_{<t}``. ``s`` is the recurrent state the sequence starts from: ``None`` is the model's fixed
start (zero hidden and cell states, so that ``p(x_1)`` is ``softmax(b)`` of the output layer's bias), or the state a
previous call returned, so that a long text is scored (or trained on, by truncated back-propagation through time)
in consecutive pieces with every character scored exactly once:

- ``forward(x, state) -> (logits [B, T, V], state')``: ``logits[:, t]`` are the logits of ``x[:, t]`` given
  ``x[:, :t]`` and ``state``, and depend on nothing after; ``state'`` is the state after all of ``x``.
- ``log_prob(x, state) -> [B]``: ``log p(x | state)`` in nats, every character of ``x`` scored;
  ``char_log_probs`` gives the ``[B, T]`` terms and ``state'``; ``nats_per_char`` and ``bits_per_char`` the means.
- ``sample(n, length, temperature, prime=...)``: the incremental cell, one step per character on the model's
  device, no host round trip until the caller reads the tokens.

Tokens are int64 indices into the vocabulary (``fastflow.data.TextData.encode``); the model can keep its
vocabulary (``vocab=``, saved in its ``state_dict`` as code points), to take a text ``prime`` and to ``decode``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow._checks import check_int, check_tokens, sample_arguments
from fastflow.nn.rnn import LSTM, RNN
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["CELLS", "CharRNN"]

CELLS = ("lstm", "rnn")

#: ``(h, c)`` of an LSTM stack, ``h`` of an RNN stack: ``[num_layers, B, hidden_size]`` each.
State = tuple[Tensor, Tensor] | Tensor


class CharRNN(nn.Module):
    """A character-level language model (Karpathy's char-rnn; the lecture's RNN with ``cell="rnn"``).

    Args:
        vocab_size: ``V``, the number of distinct characters.
        hidden_size: ``H``, the width of every recurrent layer.
        num_layers: recurrent layers stacked.
        cell: ``"lstm"`` (``fastflow.nn.LSTM``) or ``"rnn"`` (``fastflow.nn.RNN``, ``h_t = tanh(W x_t + U h_{t−1} +
            b)``).
        dropout: dropout between recurrent layers and before the output layer (Zaremba et al. 2014), in ``[0, 1)``.
        embedding_size: ``E``, the width of the character embedding; by default ``min(V, H)``: an embedding as wide
            as the vocabulary feeding the first layer is exactly as expressive as char-rnn's one-hot input, and
            capped at ``H`` for large vocabularies.
        vocab: optionally the characters of the tokens (a string or a sequence of ``V`` distinct characters).
    """

    def __init__(self, vocab_size: int, hidden_size: int = 512, num_layers: int = 2, *, cell: str = "lstm",
                 dropout: float = 0.0, embedding_size: int | None = None, vocab: str | Sequence[str] | None = None):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size)
        self.hidden_size = check_int("hidden_size", hidden_size)
        self.num_layers = check_int("num_layers", num_layers)
        if not isinstance(cell, str) or cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))}, got {cell!r}")
        self.cell = cell
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout must be a number in [0, 1), got {type(dropout).__name__} {dropout!r}")
        dropout = float(dropout)
        if not 0.0 <= dropout < 1.0:  # NaN is refused too
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.embedding_size = (min(self.vocab_size, self.hidden_size) if embedding_size is None
                               else check_int("embedding_size", embedding_size))
        self.embedding = nn.Embedding(self.vocab_size, self.embedding_size)
        recurrent = LSTM if cell == "lstm" else RNN
        # torch's layers apply their dropout between layers only (and warn when there is no "between").
        self.rnn = recurrent(self.embedding_size, self.hidden_size, self.num_layers, batch_first=True,
                             dropout=dropout if self.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.hidden_size, self.vocab_size)
        # The characters as Unicode code points (-1: unknown), a buffer so that a state_dict carries them.
        self.register_buffer("code_points", torch.full((self.vocab_size,), -1, dtype=torch.int64))
        if vocab is not None:
            self.vocab = vocab
        self._init_forget_gate()

    def _init_forget_gate(self) -> None:
        """Forget-gate biases of 1 (Jozefowicz et al. 2015): the cell state is kept by default early in training,
        so that gradients reach back over long spans from the first steps on."""
        if self.cell != "lstm":
            return
        hidden = self.hidden_size
        with torch.no_grad():
            for layer in range(self.num_layers):
                # torch's gate order is i, f, g, o; the two biases add, so one carries the 1.
                getattr(self.rnn, f"bias_ih_l{layer}")[hidden : 2 * hidden].fill_(1.0)
                getattr(self.rnn, f"bias_hh_l{layer}")[hidden : 2 * hidden].zero_()

    # ----------------------------------------------------------------------------------------------
    # The vocabulary.

    @property
    def vocab(self) -> list[str] | None:
        """The characters of tokens ``0 … V−1``, or None when the model was not given them."""
        codes = self.code_points.tolist()
        return None if any(code < 0 for code in codes) else [chr(code) for code in codes]

    @vocab.setter
    def vocab(self, vocab: str | Sequence[str]) -> None:
        if isinstance(vocab, (str, Sequence)) and all(isinstance(c, str) and len(c) == 1 for c in vocab):
            characters = list(vocab)
        else:
            raise TypeError(f"vocab must be a string or a sequence of single characters, got {vocab!r:.80}")
        if len(characters) != self.vocab_size or len(set(characters)) != len(characters):
            raise ValueError(f"vocab must hold {self.vocab_size} distinct characters (vocab_size), got "
                             f"{len(characters)} of which {len(set(characters))} distinct")
        self.code_points.copy_(torch.tensor([ord(c) for c in characters], dtype=torch.int64))

    def _known_vocab(self, what: str) -> list[str]:
        vocab = self.vocab
        if vocab is None:
            raise ValueError(f"{what} needs the model's vocabulary: build it with CharRNN(..., vocab=data.vocab) or "
                             "set model.vocab, or give tokens")
        return vocab

    def encode(self, text: str, *, name: str = "text") -> Tensor:
        """The tokens ``[len(text)]`` (int64, on the model's device) of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a str, got {type(text).__name__}")
        index = {char: token for token, char in enumerate(self._known_vocab(f"{name} as a string"))}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ValueError(f"{name} has characters not in the model's vocabulary: {''.join(unknown)!r}")
        return torch.tensor([index[char] for char in text], dtype=torch.int64, device=self.code_points.device)

    def decode(self, tokens: Tensor) -> str | list[str]:
        """The text of ``tokens [T]`` (a string) or ``[N, T]`` (a list of ``N`` strings); one host transfer."""
        vocab = self._known_vocab("decode")
        dims = tokens.dim() if isinstance(tokens, Tensor) and tokens.dim() in (1, 2) else 2
        tokens, _ = check_tokens("tokens", tokens, self.vocab_size, dims=dims)
        rows = tokens.cpu().reshape(-1, tokens.shape[-1]).tolist()
        texts = ["".join(vocab[token] for token in row) for row in rows]
        return texts[0] if dims == 1 else texts

    # ----------------------------------------------------------------------------------------------
    # Scoring.

    def initial_state(self, batch_size: int) -> State:
        """The fixed start: zero hidden (and cell) states ``[num_layers, batch_size, H]``."""
        parameter = self.head.weight
        zeros = parameter.new_zeros(self.num_layers, batch_size, self.hidden_size)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def _check_state(self, state: object, batch: int) -> State:
        expected = f"[{self.num_layers}, {batch}, {self.hidden_size}]"
        if self.cell == "lstm":
            kind, parts = "a tuple (h, c) of tensors", state if isinstance(state, tuple) and len(state) == 2 else ()
        else:
            kind, parts = "a tensor h", (state,)
        if not parts or not all(isinstance(part, Tensor) for part in parts):
            raise TypeError(f"state must be None or {kind} {expected} (as a previous call returns), got "
                            f"{type(state).__name__}")
        parameter = self.head.weight
        for part in parts:
            if tuple(part.shape) != (self.num_layers, batch, self.hidden_size):
                raise ValueError(f"state must be {kind} {expected} (num_layers, batch, hidden_size), got shape "
                                 f"{tuple(part.shape)}")
            if part.device != parameter.device:
                raise ValueError(f"state is on {part.device} but the model is on {parameter.device}")
        return state

    def _input(self, x: object, state: object) -> tuple[Tensor, Tensor | None, State | None]:
        x, invalid = check_tokens("x", x, self.vocab_size)
        device = self.head.weight.device
        if x.device != device:
            raise ValueError(f"x is on {x.device} but the model is on {device}; move x with x.to(...)")
        if state is not None:
            state = self._check_state(state, x.shape[0])
        return x, invalid, state

    def _top(self, state: State | None, batch: int) -> Tensor:
        """The top layer's hidden state ``[B, H]`` that predicts the next character."""
        if state is None:
            return self.head.weight.new_zeros(batch, self.hidden_size)
        return (state[0] if self.cell == "lstm" else state)[-1]

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State | None]:
        """``x [B, T]`` int64 tokens → ``(logits [B, T, V], state')``.

        ``logits[:, t]`` are those of ``p(x_t | x_{<t}, state)``: the first from ``state`` alone (``None``: the
        model's start), each depending on no token at ``t`` or after. ``state'`` (``(h, c)`` for the LSTM, ``h``
        for the RNN, ``[num_layers, B, H]`` each) is the state after the whole of ``x``: pass it (detached, in
        training) to the next call to continue the text.
        """
        x, invalid, state = self._input(x, state)
        return self._logits(x, invalid, state)

    def _logits(self, x: Tensor, invalid: Tensor | None, state: State | None) -> tuple[Tensor, State | None]:
        batch, length = x.shape
        first = self.head(self.dropout(self._top(state, batch)))[:, None]  # [B, 1, V]
        if length == 0:
            return first[:, :0], state
        outputs, new_state = self.rnn(self.embedding(x), state)  # [B, T, H]
        # The output after x_t predicts x_{t+1}; the last one only goes on in the state.
        logits = torch.cat([first, self.head(self.dropout(outputs[:, :-1]))], dim=1)
        if invalid is not None:
            # Out-of-range tokens that could not be checked on the host: what depends on them is NaN.
            after = torch.cumsum(invalid, dim=1) - invalid.long() > 0
            logits = torch.where(after[..., None], torch.full_like(logits, math.nan), logits)
        return logits, new_state

    def char_log_probs(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State | None]:
        """``(log p(x_t | x_{<t}, state) [B, T] in nats, state')``: float32 (float64 for float64 parameters)."""
        x, invalid, state = self._input(x, state)
        logits, new_state = self._logits(x, invalid, state)
        dtype = accumulation_dtype(logits.dtype)
        log_probs = -F.cross_entropy(logits.to(dtype).transpose(1, 2), x, reduction="none")
        if invalid is not None:
            log_probs = torch.where(invalid, torch.full_like(log_probs, math.nan), log_probs)
        return log_probs, new_state

    def log_prob(self, x: Tensor, state: State | None = None) -> Tensor:
        """``log p(x | state)`` in nats, ``[B]``: the sum over every character of ``x [B, T]``."""
        return self.char_log_probs(x, state)[0].sum(1)

    def nats_per_char(self, x: Tensor, state: State | None = None) -> Tensor:
        """``−log p(x | state) / T`` in nats per character, ``[B]``."""
        log_probs, _ = self.char_log_probs(x, state)
        return -log_probs.mean(1)

    def bits_per_char(self, x: Tensor, state: State | None = None) -> Tensor:
        """``−log₂ p(x | state) / T``, ``[B]`` (the unit of the character-level language-model papers)."""
        return self.nats_per_char(x, state) / math.log(2.0)

    # ----------------------------------------------------------------------------------------------
    # Sampling.

    def _prime(self, prime: object, count: int) -> Tensor:
        """The prime as tokens ``[count, P]`` on the model's device."""
        device = self.head.weight.device
        if prime is None:
            return torch.zeros(count, 0, dtype=torch.int64, device=device)
        if isinstance(prime, str):
            tokens = self.encode(prime, name="prime")
        elif isinstance(prime, Tensor):
            dims = prime.dim() if prime.dim() in (1, 2) else 1
            tokens, _ = check_tokens("prime", prime.to(device), self.vocab_size, dims=dims)
            if dims == 2 and tokens.shape[0] != count:
                raise ValueError(f"prime must be [P] (one prime for every sample) or [n, P] with n = {count}, got "
                                 f"shape {tuple(tokens.shape)}")
        elif isinstance(prime, Sequence) and all(isinstance(t, numbers.Integral) and not isinstance(t, bool)
                                                 for t in prime):
            tokens, _ = check_tokens("prime", torch.tensor(list(prime), dtype=torch.int64, device=device),
                                     self.vocab_size, dims=1)
        else:
            raise TypeError(f"prime must be a str, a tensor of tokens or a list of ints, got {type(prime).__name__}")
        return tokens.expand(count, -1) if tokens.dim() == 1 else tokens

    @torch.no_grad()
    def sample(self, n: int | tuple[int, ...], length: int = 100, temperature: float = 1.0, *,
               prime: str | Tensor | Sequence[int] | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` texts as tokens ``[n, P + length]`` (``[*n, P + length]`` for a shape ``n``) on the model's device:
        the prime's ``P`` tokens, then ``length`` characters drawn one at a time from ``softmax(logits / T)``.

        ``prime``: a string (needs the model's ``vocab``), tokens ``[P]`` shared by every sample or ``[n, P]``;
        None starts from the model's fixed start. ``temperature`` ``0`` takes the most likely character.
        ``generator``: a ``torch.Generator`` on the model's device, for reproducible samples.

        The incremental cell: the prime in one call of the recurrent stack, then one step per character, its
        input the token just drawn, the draws written into a preallocated tensor on the device; no host
        synchronisation. Dropout is off while sampling.
        """
        shape, count, temperature = sample_arguments(n, temperature)
        length = check_int("length", length, minimum=0)
        device = self.head.weight.device
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            if generator.device.type != device.type:
                raise ValueError(f"generator is on {generator.device} but the model is on {device}; use "
                                 f"torch.Generator(device={str(device)!r})")
        prime_tokens = self._prime(prime, count)
        primed = prime_tokens.shape[1]
        tokens = torch.empty(count, primed + length, dtype=torch.int64, device=device)
        tokens[:, :primed] = prime_tokens
        if count == 0:
            return tokens.reshape(*shape, primed + length)
        draw = torch.empty(count, 1, dtype=torch.int64, device=device)
        was_training = self.training
        self.eval()
        try:
            state = None
            if primed:
                _, state = self.rnn(self.embedding(prime_tokens), None)
            top = self._top(state, count)
            for t in range(primed, primed + length):
                logits = self.head(top).float()
                if temperature == 0:
                    torch.argmax(logits, dim=1, keepdim=True, out=draw)
                else:
                    torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator, out=draw)
                tokens[:, t] = draw[:, 0]
                if t + 1 < primed + length:
                    outputs, state = self.rnn(self.embedding(draw), state)
                    top = outputs[:, 0]
        finally:
            self.train(was_training)
        return tokens.reshape(*shape, primed + length)

    def sample_text(self, n: int, length: int = 100, temperature: float = 1.0, *, prime: str | None = None,
                    generator: torch.Generator | None = None) -> list[str]:
        """``n`` sampled texts as strings, each the prime then ``length`` characters: :meth:`sample`, then
        :meth:`decode` (one host transfer)."""
        self._known_vocab("sample_text")
        n = check_int("n", n, minimum=0)
        tokens = self.sample(n, length, temperature, prime=prime, generator=generator)
        return self.decode(tokens) if tokens.shape[1] else [""] * n

    def extra_repr(self) -> str:
        return f"cell={self.cell!r}, vocab_size={self.vocab_size}"
