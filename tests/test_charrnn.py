"""CharRNN (issue 12): the character-level language model, its training by truncated back-propagation through time
from the command line, the built-in text corpus and the text splits.

1. Exact normalisation over every sequence, continuation through the returned state, sample frequencies that match
   ``exp(log_prob)``, and the autoregressive property through the Jacobian of the logits.
2. Sampling: reproducible with a generator, the prime kept, temperature 0 the greedy chain.
3. Bad input: one table, each case a ValueError/TypeError naming the argument.
4. The command line: train (loss falls, files written), an exact --resume, sample and eval of the run.
5. Data: the ``pysource`` corpus, ``evaluate_text`` read as one text.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import fastflow
from fastflow.cli import main
from fastflow.models import CharRNN
from fastflow.models.registry import build_model
from fastflow.train.text import evaluate_text


def _model(cell: str = "lstm", vocab_size: int = 3, hidden: int = 6, layers: int = 2, seed: int = 0,
           std: float = 0.8) -> CharRNN:
    """A float64 model with large random weights (the default initialisation would give near-uniform outputs)."""
    torch.manual_seed(seed)
    model = CharRNN(vocab_size, hidden, layers, cell=cell, vocab="abcdefgh"[:vocab_size]).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, std)
    return model


CELLS = ["lstm", "rnn"]


# --------------------------------------------------------------------------------------------------
# 1. Likelihood.


@pytest.mark.parametrize("cell", CELLS)
def test_log_prob_sums_to_one_over_every_sequence(cell):
    model = _model(cell)
    every = torch.tensor(list(itertools.product(range(3), repeat=3)))  # all 27 sequences of length 3
    assert model.log_prob(every).exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # Also from a given state: that after a prefix "ab", the same for every sequence.
    _, state = model(torch.tensor([[0, 1]]))
    state = tuple(part.expand(-1, 27, -1) for part in state) if cell == "lstm" else state.expand(-1, 27, -1)
    assert model.log_prob(every, state).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_scoring_in_pieces_through_the_state_equals_scoring_whole(cell):
    model = _model(cell)
    x = torch.randint(0, 3, (4, 9), generator=torch.Generator().manual_seed(1))
    first, state = model.char_log_probs(x[:, :4])
    second, _ = model.char_log_probs(x[:, 4:], state)
    whole, _ = model.char_log_probs(x)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-12)
    assert torch.allclose(model.nats_per_char(x), -whole.mean(1)) and model.log_prob(x).shape == (4,)
    assert torch.allclose(model.bits_per_char(x), model.nats_per_char(x) / math.log(2))


@pytest.mark.parametrize("cell", CELLS)
def test_logits_depend_only_on_earlier_characters(cell):
    """The Jacobian of logits[t] w.r.t. the embedded input at s is zero for s >= t and non-zero for every s < t."""
    model = _model(cell, vocab_size=4, hidden=5)
    length = 6
    x = torch.randint(0, 4, (1, length), generator=torch.Generator().manual_seed(2))
    embedded = model.embedding(x).detach()

    def logits_of(e: torch.Tensor) -> torch.Tensor:
        handle = model.embedding.register_forward_hook(lambda module, inputs, output: e)
        try:
            return model(x)[0][0]  # [T, V]
        finally:
            handle.remove()

    jacobian = torch.autograd.functional.jacobian(logits_of, embedded)[:, :, 0]  # [T, V, T, E]
    dependence = jacobian.abs().sum((1, 3))  # [t, s]
    for t, s in itertools.product(range(length), repeat=2):
        if s >= t:
            assert dependence[t, s] == 0, (t, s)
        else:
            assert dependence[t, s] > 0, (t, s)


@pytest.mark.parametrize("cell", CELLS)
def test_sample_frequencies_match_the_likelihood(cell):
    model = _model(cell).float()
    generator = torch.Generator().manual_seed(0)
    samples = model.sample(40_000, 2, generator=generator)
    every = torch.tensor(list(itertools.product(range(3), repeat=2)))
    expected = model.log_prob(every).exp()
    counts = torch.stack([(samples == sequence).all(1).sum() for sequence in every]).double() / len(samples)
    # 40,000 draws: a frequency's standard deviation is at most 0.0025; 4 of them.
    torch.testing.assert_close(counts, expected.double().detach(), rtol=0, atol=0.01)


# --------------------------------------------------------------------------------------------------
# 2. Sampling.


def test_sampling_is_reproducible_and_keeps_the_prime():
    model = _model(vocab_size=5)
    draw = lambda seed, **kw: model.sample(3, 12, generator=torch.Generator().manual_seed(seed), **kw)  # noqa: E731
    assert torch.equal(draw(7), draw(7)) and not torch.equal(draw(7), draw(8))
    primed = draw(7, prime="cab")
    assert primed.shape == (3, 15) and (primed[:, :3] == torch.tensor([2, 0, 1])).all()
    assert torch.equal(primed, draw(7, prime=torch.tensor([2, 0, 1])))
    assert torch.equal(primed, draw(7, prime=[2, 0, 1]))
    texts = model.sample_text(3, 12, prime="cab", generator=torch.Generator().manual_seed(7))
    assert texts == model.decode(primed) and all(text.startswith("cab") and len(text) == 15 for text in texts)
    # Temperature 0: the greedy chain, the same for every sample.
    greedy = model.sample(2, 6, 0.0, prime="a")
    logits, _ = model(greedy[:1])
    assert torch.equal(greedy[0, 1:], logits[0, 1:].argmax(-1)) and torch.equal(greedy[0], greedy[1])
    assert model.sample((2, 3), 4).shape == (2, 3, 4) and model.sample(0, 4).shape == (0, 4)
    assert model.sample(2, 0, prime="ab").shape == (2, 2)
    model.train()
    model.sample(1, 3)
    assert model.training  # sampling runs without dropout but leaves the mode as it was


def test_vocabulary_travels_in_the_state_dict_and_registry_builds_text_models():
    model = build_model("charrnn", (), 3, vocab=["x", "y", "z"], hidden=4, layers=1, cell="rnn")
    assert isinstance(model, CharRNN) and model.cell == "rnn" and model.embedding_size == 3
    copy = build_model("charrnn", (), 3, hidden=4, layers=1, cell="rnn")
    assert copy.vocab is None
    copy.load_state_dict(model.state_dict())
    assert copy.vocab == ["x", "y", "z"] and copy.decode(torch.tensor([2, 0])) == "zx"
    with pytest.raises(ValueError, match="charrnn models text"):
        build_model("charrnn", (1, 8, 8), 17)
    with pytest.raises(ValueError, match="glow models images"):
        build_model("glow", (), 65)


# --------------------------------------------------------------------------------------------------
# 3. Bad input.

_M = lambda: CharRNN(3, 4, 1, vocab="abc")  # noqa: E731
_NO_VOCAB = lambda: CharRNN(3, 4, 1)  # noqa: E731
_X = torch.zeros(2, 5, dtype=torch.long)

BAD_INPUT = {
    "token-negative": (lambda: _M().log_prob(torch.tensor([[0, -1]])), ValueError, r"x must hold tokens in \[0, 3\)"),
    "token-too-big": (lambda: _M()(torch.tensor([[0, 3]])), ValueError, r"x must hold tokens in \[0, 3\).*e\.g\. 3"),
    "float-tokens": (lambda: _M().log_prob(torch.zeros(2, 5)), TypeError, "x must be an integer tensor.*float32"),
    "bool-tokens": (lambda: _M().log_prob(torch.zeros(2, 5, dtype=torch.bool)), TypeError, "x must be an integer"),
    "not-a-tensor": (lambda: _M().log_prob([[0, 1]]), TypeError, "x must be a torch.Tensor"),
    "one-dim": (lambda: _M().log_prob(torch.zeros(5, dtype=torch.long)), ValueError, r"x must be \[B, T\].*\(5,\)"),
    "three-dim": (lambda: _M()(torch.zeros(1, 2, 5, dtype=torch.long)), ValueError, r"x must be \[B, T\]"),
    "state-shape": (lambda: _M()(_X, (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))), ValueError,
                    r"state must be .*\[1, 2, 4\].*\(1, 3, 4\)"),
    "state-type": (lambda: _M()(_X, torch.zeros(1, 2, 4)), TypeError, r"state must be None or a tuple \(h, c\)"),
    "cell": (lambda: CharRNN(3, cell="gru"), ValueError, "cell must be one of 'lstm', 'rnn', got 'gru'"),
    "vocab-size": (lambda: CharRNN(0), ValueError, "vocab_size must be a positive int"),
    "hidden-float": (lambda: CharRNN(3, 4.0), TypeError, "hidden_size must be an int"),
    "dropout-one": (lambda: CharRNN(3, dropout=1.0), ValueError, r"dropout must lie in \[0, 1\)"),
    "dropout-str": (lambda: CharRNN(3, dropout="0.1"), TypeError, "dropout must be a number"),
    "vocab-length": (lambda: CharRNN(3, vocab="ab"), ValueError, "vocab must hold 3 distinct characters"),
    "vocab-repeated": (lambda: CharRNN(3, vocab="aab"), ValueError, "vocab must hold 3 distinct.*2 distinct"),
    "vocab-type": (lambda: CharRNN(3, vocab=[1, 2, 3]), TypeError, "vocab must be a string"),
    "temperature-negative": (lambda: _M().sample(2, 3, -1.0), ValueError, "temperature must be a finite number"),
    "temperature-nan": (lambda: _M().sample(2, 3, math.nan), ValueError, "temperature must be a finite number"),
    "temperature-str": (lambda: _M().sample(2, 3, "hot"), TypeError, "temperature must be a number"),
    "length-negative": (lambda: _M().sample(2, -1), ValueError, "length must be an int >= 0"),
    "n-negative": (lambda: _M().sample(-2, 3), ValueError, "n must be a non-negative int"),
    "prime-unknown-characters": (lambda: _M().sample(2, 3, prime="abz"), ValueError,
                                 "prime has characters not in the model's vocabulary: 'z'"),
    "prime-text-without-vocab": (lambda: _NO_VOCAB().sample(2, 3, prime="ab"), ValueError,
                                 r"prime as a string needs the model's vocabulary"),
    "prime-token-too-big": (lambda: _M().sample(2, 3, prime=[0, 7]), ValueError, r"prime must hold tokens in \[0, 3\)"),
    "prime-rows": (lambda: _M().sample(2, 3, prime=torch.zeros(3, 2, dtype=torch.long)), ValueError,
                   r"prime must be \[P\].*n = 2"),
    "prime-type": (lambda: _M().sample(2, 3, prime=1.5), TypeError, "prime must be a str"),
    "generator-type": (lambda: _M().sample(2, 3, generator=0), TypeError, "generator must be a torch.Generator"),
    "decode-without-vocab": (lambda: _NO_VOCAB().decode(torch.tensor([0])), ValueError, "decode needs the model's"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_names_the_argument(case):
    call, error, message = BAD_INPUT[case]
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------------------------------
# 4. The command line.


@pytest.fixture
def tiny_text(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)  # 2,700 characters, 29 distinct
    return path


_TRAIN = ["train", "charrnn", "--hidden", "24", "--layers", "2", "--batch-size", "8", "--seq-len", "20", "--lr",
          "0.01", "--warmup", "0", "--grad-clip", "5", "--eval-every", "15", "--log-every", "5", "--num-samples", "2",
          "--no-progress"]


def _logged(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]


def test_train_resume_sample_and_eval_from_the_command_line(tmp_path, tiny_text, capsys):
    data = ["--data", f"text:{tiny_text}"]
    whole, half = tmp_path / "whole", tmp_path / "half"
    assert main([*_TRAIN, *data, "--steps", "30", "--out", str(whole)]) == 0
    report = capsys.readouterr().out
    assert "nats/char" in report and "a vocabulary of 29" in report
    logged = _logged(whole)
    assert [line["step"] for line in logged] == [5, 10, 15, 20, 25, 30]
    assert logged[-1]["loss"] < logged[0]["loss"] - 0.5  # from about log(29) = 3.37 nats/char
    assert logged[-1]["valid_nats_per_char"] < 2.5 and "test_nats_per_char" in logged[-1]
    assert all("chars_per_s" in line for line in logged)
    for name in ("samples.txt", "samples_15.txt", "samples_30.txt", "checkpoint.pt", "checkpoint-best.pt",
                 "loss.png"):
        assert (whole / name).is_file(), name
    assert (whole / "samples.txt").read_text().startswith("==> sample 1 of 2 (step 30, temperature 1) <==\n")

    # Killed after step 15 and resumed: the same losses and scores, to the last bit (streams, state, offsets).
    assert main([*_TRAIN, *data, "--steps", "15", "--out", str(half)]) == 0
    assert main([*_TRAIN, *data, "--steps", "30", "--out", str(half), "--resume"]) == 0
    assert _logged(half) == [{**line, "chars_per_s": mine["chars_per_s"], "seconds": mine["seconds"]}
                             for line, mine in zip(_logged(whole), _logged(half), strict=True)]
    capsys.readouterr()

    assert main(["sample", str(whole), "--n", "2", "--length", "30", "--prime", "the ", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    texts = re.split(r"==> sample \d of 2 \(charrnn, step \d+, temperature 1, seed 1\) <==\n", printed)[1:]
    assert len(texts) == 2 and all(text.startswith("the ") and len(text.rstrip("\n")) >= 30 for text in texts)
    assert main(["sample", str(whole), "--out", str(tmp_path / "texts.txt")]) == 0
    assert (tmp_path / "texts.txt").read_text().count("==> sample") == 4
    assert main(["sample", str(whole), "--out", str(tmp_path / "texts.png")]) == 2
    assert "give a file name ending in .txt" in capsys.readouterr().err
    assert fastflow.load_run(whole).sample(2, length=5, prime="the") == main_samples(whole)

    assert main(["eval", str(whole), "--split", "valid"]) == 0
    best = [line for line in _logged(whole) if "valid_nats_per_char" in line]
    best = min(best, key=lambda line: line["valid_nats_per_char"])
    assert f"on tiny valid: {best['valid_nats_per_char']:.4f} nats/char over 135 characters" in capsys.readouterr().out


def test_two_gloo_processes_match_one_and_a_resumed_run_continues_in_one(tmp_path, tiny_text):
    """Under torchrun each process trains its half of the streams; the checkpoint gathers every stream's state, so
    that one process resumes the two's run where they stopped and ends where one uninterrupted process ends."""
    train = [sys.executable, "-m", "fastflow", *_TRAIN, "--data", f"text:{tiny_text}", "--eval-every", "10"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in ([*train, "--steps", "20", "--out", str(tmp_path / "one")],
                    [*torchrun, *train[1:], "--steps", "10", "--out", str(tmp_path / "two")],
                    [*train, "--steps", "20", "--out", str(tmp_path / "two"), "--resume"]):
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = _logged(tmp_path / "one"), _logged(tmp_path / "two")
    assert [line["step"] for line in one] == [line["step"] for line in two] == [5, 10, 15, 20]
    for mine, theirs in zip(one, two, strict=True):
        for key in ("loss", "valid_nats_per_char", "test_nats_per_char"):
            if key in mine:
                assert theirs[key] == pytest.approx(mine[key], rel=1e-4), (mine["step"], key)


def main_samples(run) -> list[str]:
    """What ``Run.sample`` gives, through the model directly (seed 0, the run's averaged weights)."""
    model = fastflow.load_run(run).model
    return model.sample_text(2, 5, prime="the", generator=torch.Generator().manual_seed(0))


def test_models_and_data_of_different_kinds_are_refused(tmp_path, tiny_text, capsys):
    assert main(["train", "glow", "--data", f"text:{tiny_text}", "--steps", "1", "--out", str(tmp_path / "a")]) == 2
    assert "is text: glow models images; train a text model such as charrnn" in capsys.readouterr().err
    assert main(["train", "charrnn", "--data", "digits", "--steps", "1", "--out", str(tmp_path / "b")]) == 2
    assert "is images: charrnn models text" in capsys.readouterr().err
    assert main([*_TRAIN, "--data", f"text:{tiny_text}", "--batch-size", "200", "--out", str(tmp_path / "c")]) == 2
    assert "--batch-size 200 streams of --seq-len 20 characters need at least 4020" in capsys.readouterr().err
    for flag, value, message in [("--cell", "gru", "argument --cell: invalid choice: 'gru'"),
                                 ("--dropout", "1", "argument --dropout: must be a number in [0, 1), got 1")]:
        with pytest.raises(SystemExit):
            main([*_TRAIN, "--data", f"text:{tiny_text}", flag, value])
        assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# 5. Data and evaluation.


def test_pysource_corpus_is_the_standard_library_and_deterministic():
    data = fastflow.data.load("pysource:20000")
    again = fastflow.data.load("pysource:20000")
    assert data.name == "pysource" and len(data.train) + len(data.valid) + len(data.test) == 20_000
    assert (len(data.valid), len(data.test)) == (1000, 2000)
    assert torch.equal(data.train, again.train) and data.vocab == again.vocab
    assert all(ord(char) < 128 for char in data.vocab) and "\n" in data.vocab
    assert "def " in data.decode(data.train) or "import " in data.decode(data.train)
    with pytest.raises(ValueError, match="pysource:N"):
        fastflow.data.load("pysource:lots")


@pytest.mark.parametrize("cell", CELLS)
def test_evaluation_reads_a_split_as_one_text(cell):
    # Weights of a moderate size: an LSTM of large random weights can latch onto a state for good, and no warm-up
    # then recovers the context (neither would the trained model need it).
    model = _model(cell, vocab_size=5, hidden=8, std=0.3)
    tokens = torch.randint(0, 5, (1000,), generator=torch.Generator().manual_seed(3))
    one_text = model.nats_per_char(tokens[None]).item()
    assert evaluate_text(model, tokens, pieces=1) == pytest.approx(one_text, rel=1e-12)
    # Side by side in 7 pieces (the last one shorter), each warmed up on the 60 characters before it.
    assert evaluate_text(model, tokens, pieces=7, warmup=60) == pytest.approx(one_text, rel=1e-8)
    assert evaluate_text(model, tokens, pieces=7, warmup=0) != pytest.approx(one_text, rel=1e-5)


@pytest.mark.gpu
def test_on_a_gpu_sampling_and_scoring_stay_on_the_device():
    model = _model(vocab_size=5).float().cuda()
    draw = lambda: model.sample(4, 50, prime="ab", generator=torch.Generator("cuda").manual_seed(0))  # noqa: E731
    samples = draw()
    assert samples.is_cuda and torch.equal(samples, draw()) and (samples[:, :2] == torch.tensor([0, 1]).cuda()).all()
    torch.testing.assert_close(model.log_prob(samples).cpu(), _model(vocab_size=5).float().log_prob(samples.cpu()))
    # A bad token inside autograd is not read on the host (no synchronisation): its sequence scores NaN, no crash.
    bad = samples.clone()
    bad[0, 3] = 7
    scores = model.log_prob(bad)
    assert torch.isnan(scores[0]) and torch.isfinite(scores[1:]).all()
    with torch.no_grad(), pytest.raises(ValueError, match=r"x must hold tokens in \[0, 5\)"):
        model.log_prob(bad)
    with pytest.raises(ValueError, match="generator is on cpu but the model is on cuda"):
        model.sample(2, 3, generator=torch.Generator())
