"""Character-level text data sets for language models: spec ``text:PATH``, a UTF-8 text file, and
``tinyshakespeare``, the char-rnn corpus found by itself.

Each distinct character is one token: the vocabulary is the sorted set of the file's characters and a token is a
character's index in it. The splits are contiguous: the last 10% of the characters are the test split, the 5%
before them the validation split (which chooses the checkpoint a run is scored with; none for a text under 20
characters), the rest the training split. A relative ``PATH`` is taken from the current directory, else from
``$FASTFLOW_DATA``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastflow.data.paths import find_named_data, resolve_data_path
from fastflow.data.registry import register_loader

__all__ = ["TEST_PERCENT", "VALID_PERCENT", "TextData", "load_text", "load_tinyshakespeare", "text_data"]

TEST_PERCENT = 10
VALID_PERCENT = 5


@dataclass
class TextData:
    """Tokenised characters: ``train`` int64 ``[N_train]``, ``test`` int64 ``[N_test]`` and ``valid`` int64
    ``[N_valid]`` (or None), indices into ``vocab``; in the text's order, ``train + valid + test``.

    ``vocab``: the distinct characters, sorted; ``vocab[t]`` is the character of token ``t``. As the models'
    registry sees it, a token is a scalar (``shape`` is ``()``) with ``levels`` = ``vocab_size`` values.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    vocab: list[str]
    valid: torch.Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def shape(self) -> tuple[()]:
        return ()

    @property
    def levels(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """The tokens ``[len(text)]`` (int64) of ``text``; a character outside ``vocab`` is a ``ValueError``."""
        index = {char: token for token, char in enumerate(self.vocab)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary of {self.name!r}: {''.join(unknown)!r}")
        return torch.tensor([index[char] for char in text], dtype=torch.int64)

    def decode(self, tokens: torch.Tensor) -> str:
        """The text of ``tokens [N]``, e.g. a sample of a language model."""
        return "".join(self.vocab[token] for token in tokens.tolist())


def text_data(name: str, text: str, *, where: str) -> TextData:
    """``TextData`` of ``text`` (at least 2 characters) split as the module says; ``where`` names it in errors."""
    if len(text) < 2:
        found = "an empty file" if not text else "a single character"
        raise ValueError(f"{where}: expected text of at least 2 characters (a train and a test part), found {found}")
    # One uint32 code point per character; sorting code points sorts the characters as Python's str does.
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    unique, tokens = np.unique(code_points, return_inverse=True)
    tokens = torch.from_numpy(tokens.astype(np.int64).reshape(-1))
    n_test = max(1, len(text) * TEST_PERCENT // 100)
    n_valid = len(text) * VALID_PERCENT // 100
    train_end = len(text) - n_test - n_valid
    return TextData(
        name=name,
        train=tokens[:train_end].clone(),
        test=tokens[-n_test:].clone(),
        vocab=[chr(code) for code in unique.tolist()],
        valid=tokens[train_end:-n_test].clone() if n_valid else None,
    )


@register_loader("text")
def load_text(argument: str | None = None) -> TextData:
    """``TextData`` from the UTF-8 text file ``argument``; tiny-shakespeare: 1,115,394 characters, 65 distinct."""
    if argument is None:
        raise ValueError("data spec 'text' needs a file: expected 'text:PATH' with PATH a UTF-8 text file")
    path = resolve_data_path(argument, folder=False, what="text file", hint="it should be a UTF-8 text file")
    raw = path.read_bytes()
    try:
        # utf-8-sig: a byte-order mark written by some editors is not a character of the text.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not UTF-8 text: expected UTF-8, found byte 0x{raw[error.start]:02x} at offset {error.start} "
            f"({error.reason})"
        ) from error
    return text_data(path.stem, text, where=str(path))


@register_loader("tinyshakespeare")
def load_tinyshakespeare(argument: str | None = None) -> TextData:
    """tiny-shakespeare (Karpathy's char-rnn corpus) from ``$FASTFLOW_DATA/tinyshakespeare/input.txt``, else
    ``../shared/data/tinyshakespeare/input.txt`` beside the checkout: 1,115,394 characters, 65 distinct; train
    948,086, valid 55,769, test 111,539."""
    if argument is not None:
        raise ValueError(f"data spec 'tinyshakespeare' takes no argument, got 'tinyshakespeare:{argument}'")
    path = find_named_data("tinyshakespeare", "input.txt", folder=False, what="tiny-shakespeare",
                           holds="tinyshakespeare/input.txt, or use 'text:PATH'")
    data = load_text(str(path))
    data.name = "tinyshakespeare"
    return data
