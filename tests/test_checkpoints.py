"""Checkpoints that cannot be silently damaged or run code, one writer per run folder, and ``fastflow.load_run``.

The command-line faults (a damaged checkpoint given to ``sample``/``eval``, a second writer, a conflicting
``--resume``) are rows of the table in ``tests/test_cli_bad_input.py``; this file checks the mechanisms.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fastflow
from fastflow.cli import main
from fastflow.train import (
    CheckpointError,
    RunLock,
    RunLockedError,
    TrainConfig,
    load_checkpoint,
    newest_intact_checkpoint,
    save_checkpoint,
    train,
)
from fastflow.train.checkpoint import content_digest
from fastflow.train.lock import LOCK_FILE
from tests.faults import overwrite_middle, overwrite_tensor_bytes, truncate

TINY = ["flow", "--hidden", "8", "--couplings", "2", "--batch-size", "16", "--num-samples", "4", "--no-progress"]


def _train(out, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run of 20 steps with checkpoints at 10 and 20 (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert _train(out, "--steps", "20", "--eval-every", "10") == 0
    return out


def _copy(run_folder, tmp_path):
    target = tmp_path / "run"
    subprocess.run(["cp", "-a", str(run_folder), str(target)], check=True)
    return target


def test_every_checkpoint_carries_a_checksum_and_loads_with_weights_only(run_folder):
    raw = torch.load(run_folder / "checkpoint.pt", weights_only=True)  # loads as plain data: acceptance 3
    assert raw["checksum"]["sha256"] == content_digest(raw)
    state = load_checkpoint(run_folder / "checkpoint.pt")
    assert "checksum" not in state and state["step"] == 20


@pytest.mark.parametrize("damage", [overwrite_tensor_bytes, overwrite_middle, truncate,
                                    lambda path: open(path, "wb").close()],
                         ids=["tensor-bytes", "middle-bytes", "truncated", "empty"])
def test_a_damaged_checkpoint_is_refused_with_its_name(run_folder, tmp_path, damage):
    out = _copy(run_folder, tmp_path)
    path = out / "checkpoint-00000020.pt"
    damage(path)
    with pytest.raises(CheckpointError, match="checkpoint-00000020.pt"):
        load_checkpoint(path)


def test_tensor_bytes_overwritten_still_unpickle_but_fail_the_checksum(run_folder, tmp_path):
    """The case the checksum exists for: torch.load alone reads the damaged weights without complaint."""
    out = _copy(run_folder, tmp_path)
    path = out / "checkpoint-00000020.pt"
    overwrite_tensor_bytes(path)
    torch.load(path, weights_only=True)  # no error: without the checksum this would train on
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(path)


def test_resume_falls_back_to_the_newest_intact_checkpoint(run_folder, tmp_path, capsys):
    out = _copy(run_folder, tmp_path)
    overwrite_tensor_bytes(out / "checkpoint-00000020.pt")  # also checkpoint.pt: the same file (a hard link)
    path, state, skipped = newest_intact_checkpoint(out)
    assert path.endswith("checkpoint-00000010.pt") and state["step"] == 10
    assert [os.path.basename(p) for p, _ in skipped] == ["checkpoint-00000020.pt"]
    capsys.readouterr()
    assert _train(out, "--steps", "30", "--eval-every", "10", "--resume") == 0
    captured = capsys.readouterr()
    assert "checkpoint-00000020.pt" in captured.err and "skipped" in captured.err
    assert "resuming from" in captured.out and "at step 10" in captured.out
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 30
    steps = [json.loads(line).get("step") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[1:] == list(range(10, 31, 10)) or steps[1:] == sorted(set(steps[1:]))  # one run, no repeats


def test_resume_never_starts_afresh_over_damaged_checkpoints(run_folder, tmp_path, capsys):
    out = _copy(run_folder, tmp_path)
    for path in out.glob("checkpoint-*.pt"):
        truncate(path)
    before = sorted((p.name, p.stat().st_size) for p in out.iterdir())
    assert _train(out, "--steps", "30", "--resume") == 2
    error = capsys.readouterr().err
    assert "no intact checkpoint" in error and "refusing to start afresh" in error
    assert sorted((p.name, p.stat().st_size) for p in out.iterdir()) == before  # nothing written


def test_a_damaged_lone_checkpoint_pt_is_not_a_fresh_start(run_folder, tmp_path, capsys):
    """Only checkpoint.pt (copied by hand), damaged: an error, not a new run over it."""
    out = tmp_path / "lone"
    out.mkdir()
    data = (run_folder / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    assert _train(out, "--steps", "30", "--resume") == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    assert (out / "checkpoint.pt").stat().st_size == len(data) // 3


def test_a_fresh_run_over_checkpoints_needs_overwrite(run_folder, tmp_path, capsys):
    out = _copy(run_folder, tmp_path)
    assert _train(out, "--steps", "5") == 2
    assert "--resume" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 20  # untouched
    assert _train(out, "--steps", "5", "--eval-every", "5", "--overwrite") == 0
    assert sorted(p.name for p in out.glob("checkpoint-*.pt")) == ["checkpoint-00000005.pt"]


def test_resume_of_a_finished_run_says_so_and_changes_nothing(run_folder, tmp_path, capsys):
    out = _copy(run_folder, tmp_path)
    before = (out / "checkpoint.pt").read_bytes()
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert _train(out, "--steps", "20", "--resume") == 0
    report = capsys.readouterr().out
    assert "already at step 20 of 20" in report and "nan" not in report
    assert (out / "checkpoint.pt").read_bytes() == before
    assert (out / "metrics.jsonl").read_text() == metrics


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's, about the raw pickle below
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*weights_only=True"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    with open(tmp_path / "raw.pt", "wb") as file:  # a plain pickle, not even a torch zip
        pickle.dump(_Exploit(), file)
    with pytest.raises(CheckpointError, match="raw.pt"):
        load_checkpoint(tmp_path / "raw.pt")
    assert not (tmp_path / "pwned").exists()


def test_only_plain_data_is_saved(tmp_path):
    with pytest.raises(TypeError, match=r"state\['when'\].*datetime"):
        import datetime

        save_checkpoint({"step": 1, "when": datetime.datetime.now()}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_the_checksum_sees_every_kind_of_value():
    base = {"a": torch.arange(4.0), "b": [1, 2.0, "x", None, True], "c": (torch.zeros(2, dtype=torch.bfloat16),)}
    digest = content_digest(base)
    variants = [
        {**base, "a": torch.arange(4.0).reshape(2, 2)},
        {**base, "a": torch.arange(4.0).double()},
        {**base, "b": [1, 2, "x", None, True]},
        {**base, "b": [1, 2.0, "x", None, 1]},
        {**base, "c": [torch.zeros(2, dtype=torch.bfloat16)]},
        {"b": base["b"], "a": base["a"], "c": base["c"]},
    ]
    assert all(content_digest(v) != digest for v in variants)
    assert content_digest({**base, "checksum": "ignored"}) == digest


# --------------------------------------------------------------------------------------------------
# One writer per run folder.

def test_a_second_writer_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "busy"
    with RunLock(out):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            RunLock(out).acquire()
        assert _train(out, "--steps", "5") == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert not (out / "metrics.jsonl").exists()
    assert not (out / LOCK_FILE).exists()  # released
    assert _train(out, "--steps", "2", "--eval-every", "2") == 0


def test_a_second_writer_process_is_refused_while_the_first_trains(tmp_path):
    out = tmp_path / "two"
    command = [sys.executable, "-m", "fastflow", "train", *TINY, "--out", str(out)]
    first = subprocess.Popen([*command, "--steps", "100000", "--eval-every", "100000"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (out / "metrics.jsonl").exists() or first.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert first.poll() is None, first.communicate()
        second = subprocess.run([*command, "--steps", "2"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    # The first writer died by SIGKILL: its lock is stale, and the next run takes it over.
    assert (out / LOCK_FILE).exists()
    third = subprocess.run([*command, "--steps", "2", "--eval-every", "2", "--overwrite"], capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert "taken over" in third.stdout + third.stderr


# --------------------------------------------------------------------------------------------------
# load_run.

def test_load_run_gives_the_samples_of_the_sample_command(run_folder, tmp_path, capsys):
    png = tmp_path / "cli.png"
    assert main(["sample", str(run_folder), "--n", "6", "--seed", "3", "--temperature", "0.5", "--scale", "1",
                 "--out", str(png)]) == 0
    run = fastflow.load_run(run_folder)
    assert (run.name, run.step, run.data_shape) == ("flow", 20, (1, 8, 8))
    assert not run.model.training and run.device.type == "cpu"
    samples = run.sample(6, temperature=0.5, seed=3)
    from fastflow.train.images import save_grid

    save_grid(samples, tmp_path / "api.png")
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "api.png")))
    assert torch.equal(samples, run.sample(6, temperature=0.5, seed=3))  # the seed decides, not the global state


def test_load_run_averaged_or_raw_weights(run_folder):
    averaged, raw = fastflow.load_run(run_folder), fastflow.load_run(run_folder, weights="raw")
    checkpoint = load_checkpoint(run_folder / "checkpoint.pt")
    for name, value in raw.model.state_dict().items():
        torch.testing.assert_close(value, checkpoint["model"][name], rtol=0, atol=0)
    shadow = checkpoint["ema"]["shadow"]
    for name, p in averaged.model.named_parameters():
        torch.testing.assert_close(p.detach(), shadow[name], rtol=0, atol=0)
    assert any(not torch.equal(shadow[n], checkpoint["model"][n]) for n in shadow)
    one_file = fastflow.load_run(run_folder / "checkpoint-00000010.pt")
    assert one_file.step == 10
    with pytest.raises(ValueError, match="weights must be one of"):
        fastflow.load_run(run_folder, weights="ema")


def test_load_run_without_the_compiled_extension(run_folder):
    """The weights do not depend on the backend: a machine with no fastflow._C samples the same images."""
    code = (
        "import sys; sys.modules['fastflow._C'] = None\n"
        "import torch, fastflow\n"
        "from fastflow._backends import extension_reason\n"
        f"run = fastflow.load_run({str(run_folder)!r})\n"
        "torch.save(run.sample(5, seed=1), sys.argv[1])\n"
    )
    target = run_folder.parent / "no_extension.pt"
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    torch.testing.assert_close(torch.load(target), fastflow.load_run(run_folder).sample(5, seed=1),
                               rtol=1e-4, atol=1e-4)


def test_load_run_errors_name_the_file(tmp_path, run_folder):
    with pytest.raises(CheckpointError, match="nowhere"):
        fastflow.load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        fastflow.load_run(tmp_path / "empty")
    save_checkpoint({"step": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt.*which model"):
        fastflow.load_run(tmp_path / "other.pt")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            fastflow.load_run(run_folder, device="cuda")


def test_train_from_python_with_tensorboard(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    from fastflow.models.registry import build_model

    data = fastflow.data.load("digits")
    model = build_model("flow", data.shape, data.levels, couplings=2, hidden=8)
    config = TrainConfig(out=str(tmp_path / "tb"), steps=6, eval_every=3, log_every=3, batch_size=16,
                         num_samples=4, tensorboard=str(tmp_path / "tb" / "events"),
                         model_spec={"name": "flow", "options": {"couplings": 2, "hidden": 8}})
    train(model, data, config, progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "events"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/bits_per_dim", "test/bits_per_dim", "train/lr", "train/grad_norm",
            "train/images_per_s"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/bits_per_dim")] == [3, 6]
    assert [e.step for e in events.Images("samples")] == [3, 6]


def test_progress_in_a_log_file_is_one_line_per_interval(tmp_path):
    """Standard error not a terminal: plain lines, no carriage returns."""
    command = [sys.executable, "-m", "fastflow", "train", *[a for a in TINY if a != "--no-progress"],
               "--out", str(tmp_path / "log"), "--steps", "20", "--log-every", "5", "--eval-every", "20"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["5/20", "10/20", "15/20", "20/20"]
    assert all("bits/dim" in line and "images/s" in line for line in lines)
