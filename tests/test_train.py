"""The quick start's training job, end to end on a few steps: bits/dim fall, files are written."""

from __future__ import annotations

import json
import os

import pytest
import torch

import fastflow
from fastflow.cli import main
from fastflow.train import load_checkpoint, save_checkpoint


def test_train_command_writes_metrics_samples_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "glow", "--steps", "60", "--eval-every", "30", "--hidden", "16", "--depth", "2",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "step" in line]
    assert [line["step"] for line in logged] == [10, 20, 30, 40, 50, 60]
    evaluated = [line for line in logged if "test_bpd" in line]
    assert [line["step"] for line in evaluated] == [30, 60]
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in logged)
    assert evaluated[-1]["test_bpd"] < 4.09  # below the uniform model's log2(17) bits/dim
    for name in ("samples.png", "samples_30.png", "samples_60.png", "checkpoint.pt", "loss.png",
                 "checkpoint-00000030.pt", "checkpoint-00000060.pt"):
        assert (out / name).is_file(), name
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 60
    assert "bits/dim" in capsys.readouterr().out


def test_sample_and_eval_commands_rebuild_the_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "flow", "--steps", "20", "--eval-every", "20", "--hidden", "8", "--couplings", "2",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--n", "9", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    assert main(["eval", str(out)]) == 0
    report = capsys.readouterr().out
    assert "bits/dim over 297 images" in report


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_registered_model_trains_from_the_command(tmp_path, precision):
    """Every model, fp32 and under bf16 autocast (a custom op that refused autocast's mixed dtypes would fail)."""
    import numpy as np

    from fastflow.models.registry import MODELS

    # The Bernoulli models take binary data: the digits thresholded, with a validation split.
    digits = fastflow.data.load("digits")
    binary = {split: (getattr(digits, split)[:300] >= 8).numpy().astype(np.uint8) for split in ("train", "test")}
    np.savez(tmp_path / "binary.npz", train_data=binary["train"], valid_data=binary["test"][:100],
             test_data=binary["test"][100:])
    on_binary = ["--data", f"npz:{tmp_path / 'binary.npz'}"]
    small = {"glow": ["--hidden", "8", "--depth", "1"], "realnvp": ["--hidden", "8", "--blocks", "1"],
             "nice": ["--hidden", "16", "--layers", "1"], "flow": ["--hidden", "8", "--couplings", "2"],
             "fvsbn": on_binary, "nade": [*on_binary, "--hidden", "8"],
             "made": [*on_binary, "--hidden", "8", "--layers", "2", "--masks", "2", "--direct"],
             "maf": [*on_binary, "--hidden", "8", "--layers", "2"],
             "pixelcnn": ["--hidden", "6", "--layers", "1", "--kernel", "3"]}
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    small["charrnn"] = ["--data", f"text:{tmp_path / 'text.txt'}", "--hidden", "8", "--layers", "1", "--seq-len", "8"]
    assert set(small) == set(MODELS)
    variants = {**small, "pixelcnn-gated": [*small["pixelcnn"], "--gated"]}
    for variant, options in variants.items():
        name, out = variant.split("-")[0], tmp_path / variant
        assert main(["train", name, *options, "--steps", "4", "--eval-every", "4", "--batch-size", "16",
                     "--num-samples", "4", "--precision", precision, "--out", str(out), "--no-progress"]) == 0, name
        final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
        scores = [v for k, v in final.items() if k.startswith("test_")]
        assert scores and all(torch.isfinite(torch.tensor(scores))), (variant, final)
        samples = fastflow.load_run(out).sample(2)
        if MODELS[name].data == "text":
            assert (out / "samples.txt").is_file() and len(samples) == 2 and all(isinstance(s, str) for s in samples)
        else:
            assert (out / "samples.png").is_file() and samples.shape[1:] == (1, 8, 8)


def test_presets_and_bad_options(capsys):
    assert main(["train", "--preset", "glow-cifar10", "realnvp", "--steps", "1"]) == 2
    assert "is for glow, not realnvp" in capsys.readouterr().err
    assert main(["train", "realnvp", "--depth", "3", "--steps", "1"]) == 2
    assert "takes no option depth" in capsys.readouterr().err


def test_bad_data_spec_is_a_clear_error(capsys):
    assert main(["train", "--data", "nope:x", "--steps", "1"]) == 2
    assert "unknown kind 'nope'" in capsys.readouterr().err


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_digits_data():
    data = fastflow.data.load("digits")
    assert data.train.shape == (1500, 1, 8, 8) and data.test.shape == (297, 1, 8, 8)
    assert data.train.dtype == torch.uint8 and int(data.train.max()) == 16 and data.levels == 17
    with pytest.raises(ValueError, match="takes no argument"):
        fastflow.data.load("digits:extra")


def test_diverging_run_stops_and_names_the_layer(tmp_path, capsys):
    code = main(["train", "flow", "--hidden", "8", "--couplings", "2", "--lr", "1e30", "--warmup", "0",
                 "--steps", "20", "--log-every", "5", "--eval-every", "20", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    assert code == 2
    assert "non-finite value first in flow.0.conditioner" in capsys.readouterr().err


def test_binary_data_with_a_validation_split_reports_nats_and_keeps_the_best(tmp_path, capsys):
    """Binary images are scored in nats per example (the autoregressive papers' unit); the validation split
    chooses checkpoint-best.pt, which eval and sample use, and the test split never chooses."""
    import numpy as np

    draw = np.random.default_rng(0)
    prototypes = draw.random((4, 64)) < 0.5
    def split(n):
        flips = draw.random((n, 64)) < 0.1
        return (prototypes[draw.integers(0, 4, n)] ^ flips).astype(np.uint8)
    np.savez(tmp_path / "binary.npz", train_data=split(512), valid_data=split(128), test_data=split(128))
    out = tmp_path / "run"
    assert main(["train", "flow", "--data", f"npz:{tmp_path / 'binary.npz'}", "--hidden", "8", "--couplings", "2",
                 "--steps", "30", "--eval-every", "10", "--batch-size", "32", "--warmup", "5", "--num-samples", "4",
                 "--out", str(out), "--no-progress"]) == 0
    report = capsys.readouterr().out
    assert "nats" in report and "bits/dim" not in report
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [line for line in logged if "test_nll" in line]
    assert [line["step"] for line in evaluated] == [10, 20, 30]
    assert all("valid_nll" in line and "test_bpd" not in line for line in evaluated)
    best = min(evaluated, key=lambda line: line["valid_nll"])
    chosen = load_checkpoint(out / "checkpoint-best.pt")
    assert chosen["step"] == best["step"] and chosen["best"]["valid"] == best["valid_nll"]
    assert evaluated[-1]["test_nll"] < evaluated[0]["test_nll"]
    assert main(["eval", str(out)]) == 0
    line = capsys.readouterr().out
    assert f"(step {best['step']} (the best validation score))" in line and "nats over 128 images" in line
    score = float(line.split(": ")[1].split()[0])
    assert abs(score - best["test_nll"]) < 1e-3  # the same weights, the same fixed noise
    assert main(["eval", str(out), "--checkpoint", "latest", "--split", "valid"]) == 0
    assert "(step 30)" in capsys.readouterr().out


def test_learning_rate_schedule_and_weight_decay(tmp_path):
    """--lr-decay cosine: the linear warm-up, then lr·(1 + cos(π·t))/2 down to 0 at the last step; --weight-decay
    makes the optimiser AdamW with that decay (decoupled: it shrinks weights whose gradient is zero)."""
    import math

    from fastflow.train.loop import _lr_factor

    assert [_lr_factor(4, 20, "cosine", step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert _lr_factor(4, 20, "cosine", 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert _lr_factor(4, 20, "cosine", 20) == pytest.approx(0.0, abs=1e-12)
    assert _lr_factor(4, 20, "none", 19) == 1.0
    out = tmp_path / "run"
    assert main(["train", "flow", "--hidden", "4", "--couplings", "2", "--steps", "20", "--warmup", "4",
                 "--lr-decay", "cosine", "--weight-decay", "0.1", "--eval-every", "20", "--num-samples", "4",
                 "--out", str(out), "--no-progress"]) == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = logged[0]["config"]
    assert config["lr_decay"] == "cosine" and config["weight_decay"] == 0.1
    rates = [line["lr"] for line in logged[1:] if "lr" in line]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.05 * config["lr"]
    groups = load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"]
    assert [group["weight_decay"] for group in groups] == [0.1]


@pytest.mark.parametrize("family", ["glow", "realnvp"])
def test_training_objective_compiles_without_a_graph_break(family):
    """What ``fastflow train --compile`` compiles: the training objective of a flow, fastflow's custom ops inside,
    traced by dynamo in one graph (after ActNorm's data-dependent initialisation, which the first step runs)."""
    from fastflow.models import Glow, RealNVP
    from fastflow.train.objective import Objective

    torch.manual_seed(0)
    model = (Glow(3, 16, levels=2, depth=2, hidden_channels=8) if family == "glow"
             else RealNVP(3, 16, levels=2, hidden_channels=8, num_blocks=1))
    objective = Objective(model, vector=False)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    noise = torch.rand(4, 3, 16, 16)
    objective(x, noise)
    explanation = torch._dynamo.explain(objective)(x, noise)
    assert explanation.graph_break_count == 0, [str(reason.reason)[:300] for reason in explanation.break_reasons]


def test_train_compile_runs_and_refuses_the_memory_saving_backward(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "glow", "--compile", "--steps", "2", "--eval-every", "2", "--hidden", "4", "--depth", "1",
                 "--levels", "2", "--batch-size", "8", "--log-every", "1", "--out", str(out), "--no-progress"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["config"]["compile"] is True
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 2 and torch.isfinite(torch.tensor(losses)).all()
    assert main(["train", "glow", "--compile", "--memory-efficient", "--steps", "1", "--out",
                 str(tmp_path / "other"), "--no-progress"]) == 2
    assert "--compile does not combine with --memory-efficient" in capsys.readouterr().err
