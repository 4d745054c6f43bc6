"""Training at scale, end to end through the ``fastflow`` command: 2 gloo processes under ``torchrun`` give the
losses of one process with the same global batch; a rank killed mid-run and the same command rerun with
``--resume`` end where an uninterrupted run ends; a kill during a checkpoint write never leaves a truncated
checkpoint; ``--resume`` repeats the losses exactly; bf16 training of Glow keeps float32 log-determinants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastflow.train import load_checkpoint
from fastflow.train.checkpoint import KILL_DURING_WRITE
from fastflow.train.loop import KILL_AT

# A small Glow on the built-in digits: every step is a few milliseconds, the processes' start-up dominates. CPU
# processes (gloo) unless a test says otherwise: on a one-GPU machine two NCCL ranks would share the GPU.
MODEL = ["glow", "--depth", "2", "--hidden", "16", "--num-samples", "4", "--log-every", "1", "--no-progress"]


def _run(out: Path, *args: str, processes: int = 1, env: dict | None = None, check: bool = True, restarts: int = 0,
         device: str = "cpu"):
    train = ["-m", "fastflow", "train", *MODEL, "--device", device, "--out", str(out), *args]
    command = [sys.executable, *train]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   f"--max-restarts={restarts}", *train]
    environment = {key: value for key, value in os.environ.items() if key not in (KILL_AT, KILL_DURING_WRITE)}
    environment.update(OMP_NUM_THREADS="1", **(env or {}))
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                             f"{done.stderr[-4000:]}")
    return done


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def _final_model(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["model"]


def test_two_gloo_processes_match_one_process(tmp_path):
    args = ["--steps", "20", "--batch-size", "32", "--eval-every", "20"]
    _run(tmp_path / "one", *args)
    _run(tmp_path / "two", *args, processes=2)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 21))
    for step in one:
        assert abs(two[step] - one[step]) <= 1e-4 * abs(one[step]), (step, one[step], two[step])
    meta = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert meta["world_size"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_nccl_processes_match_one_gpu_process(tmp_path):
    """The gloo test's rule on GPUs: 2 NCCL processes, one GPU each, give the per-step losses of one process on one
    GPU with the same global batch; prints the throughput of each (the GPU check reports it)."""
    args = ["--steps", "20", "--batch-size", "64", "--eval-every", "20"]
    _run(tmp_path / "one", *args, device="cuda")
    _run(tmp_path / "two", *args, processes=2, device="cuda")
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 21))
    for step in one:
        assert abs(two[step] - one[step]) <= 1e-4 * abs(one[step]), (step, one[step], two[step])
    rates = {}
    for name in ("one", "two"):
        lines = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        rates[name] = [line["images_per_s"] for line in lines if "images_per_s" in line][-1]
    print(f"throughput: 1 GPU {rates['one']:.0f} images/s, 2 GPUs {rates['two']:.0f} images/s")


def test_killed_rank_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    args = ["--steps", "24", "--batch-size", "16", "--eval-every", "8"]
    _run(tmp_path / "whole", *args, processes=2)
    killed = _run(tmp_path / "crash", *args, processes=2, env={KILL_AT: "1:13"}, check=False)
    assert killed.returncode != 0
    checkpoint = load_checkpoint(tmp_path / "crash" / "checkpoint.pt")
    assert checkpoint["step"] == 8  # the last one written before the kill
    _run(tmp_path / "crash", *args, "--resume", processes=2)
    assert _losses(tmp_path / "crash") == _losses(tmp_path / "whole")
    whole, resumed = _final_model(tmp_path / "whole"), _final_model(tmp_path / "crash")
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0, msg=name)


def test_repeated_kills_at_random_points_then_resume_end_like_an_uninterrupted_run(tmp_path):
    """SIGKILL at seeded random steps (one of them in the middle of a checkpoint write), resumed after each: every
    kill loses at most the steps since the last checkpoint, and the run ends in the uninterrupted run's state."""
    import random

    args = ["--steps", "40", "--batch-size", "16", "--eval-every", "20", "--checkpoint-every", "6"]
    _run(tmp_path / "whole", *args)
    out = tmp_path / "crash"
    draw = random.Random(9)
    kills = sorted(draw.sample(range(2, 40), 3))
    faults = [{KILL_AT: f"0:{kills[0]}"}, {KILL_DURING_WRITE: "18"}, {KILL_AT: f"0:{kills[1]}"},
              {KILL_AT: f"0:{kills[2]}"}]
    for fault in faults:
        done = _run(out, *args, "--resume", env=fault, check=False)
        if done.returncode == 0:  # this kill's step was already behind the resumed run
            continue
        assert done.returncode == -9, done.stderr[-2000:]
        logged = max(_losses(out))
        latest = out / "checkpoint.pt"
        resumed_from = load_checkpoint(latest)["step"] if latest.exists() else 0
        assert logged - resumed_from < 6 + 1, (fault, logged, resumed_from)  # lost at most one checkpoint interval
    _run(out, *args, "--resume")
    assert _losses(out) == _losses(tmp_path / "whole")
    whole, resumed = _final_model(tmp_path / "whole"), _final_model(out)
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0, msg=name)


def test_elastic_restart_resumes_from_the_last_checkpoint(tmp_path):
    """torchrun --max-restarts restarts both processes after one is killed; --resume continues from step 8."""
    args = ["--steps", "16", "--batch-size", "16", "--eval-every", "8"]
    _run(tmp_path / "whole", *args, processes=2)
    # torchrun shares its rendezvous store with the processes unless told not to, and a restarted round can then
    # read the previous round's addresses (pytorch/pytorch#135712).
    env = {KILL_AT: "1:11", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    _run(tmp_path / "elastic", *args, "--resume", processes=2, env=env, restarts=1)
    assert _losses(tmp_path / "elastic") == _losses(tmp_path / "whole")
    whole, elastic = _final_model(tmp_path / "whole"), _final_model(tmp_path / "elastic")
    for name in whole:
        torch.testing.assert_close(elastic[name], whole[name], rtol=0, atol=0, msg=name)


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["--steps", "20", "--batch-size", "16", "--eval-every", "5", "--checkpoint-every", "5"]
    killed = _run(out, *args, env={KILL_DURING_WRITE: "15"}, check=False)
    assert killed.returncode != 0
    checkpoint = load_checkpoint(out / "checkpoint.pt")  # loads: whole, not truncated
    assert checkpoint["step"] == 10
    assert any(name.startswith(".tmp-") for name in os.listdir(out))  # the interrupted write, never renamed
    _run(out, *args, "--resume")
    assert not any(name.startswith(".tmp-") for name in os.listdir(out))
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 20
    assert sorted(name for name in os.listdir(out) if name.startswith("checkpoint-")) == [
        "checkpoint-00000010.pt", "checkpoint-00000015.pt", "checkpoint-00000020.pt"]  # the newest 3 kept


def test_resume_repeats_the_loss_sequence_exactly(tmp_path):
    _run(tmp_path / "whole", "--steps", "30", "--batch-size", "16", "--eval-every", "10")
    _run(tmp_path / "parts", "--steps", "10", "--batch-size", "16", "--eval-every", "10")
    _run(tmp_path / "parts", "--steps", "30", "--batch-size", "16", "--eval-every", "10", "--resume")
    assert _losses(tmp_path / "parts") == _losses(tmp_path / "whole")
    whole, parts = _final_model(tmp_path / "whole"), _final_model(tmp_path / "parts")
    for name in whole:
        torch.testing.assert_close(parts[name], whole[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_bf16_training_of_glow_stays_within_two_percent_of_float32(tmp_path):
    args = ["--steps", "200", "--batch-size", "64", "--eval-every", "200", "--log-every", "50"]
    _run(tmp_path / "fp32", *args)
    _run(tmp_path / "bf16", *args, "--precision", "bf16")
    fp32 = [json.loads(line) for line in (tmp_path / "fp32" / "metrics.jsonl").read_text().splitlines()][-1]
    bf16 = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()][-1]
    assert all(torch.isfinite(torch.tensor(v)) for v in _losses(tmp_path / "bf16").values())
    assert abs(bf16["test_bpd"] - fp32["test_bpd"]) <= 0.02 * fp32["test_bpd"], (fp32["test_bpd"], bf16["test_bpd"])


def test_bf16_autocast_keeps_log_determinants_in_float32():
    from fastflow.models import Glow

    torch.manual_seed(0)
    model = Glow(1, 8, levels=2, depth=2, hidden_channels=8, num_levels=17)
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    model(x)  # ActNorm's initialisation
    conditioner_dtypes = []
    hook = model.levels[0][1].coupling.conditioner.register_forward_hook(
        lambda module, inputs, output: conditioner_dtypes.append(output.dtype)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zs, logdet = model(x)
        log_prob = model.log_prob(x)
    hook.remove()
    assert conditioner_dtypes[0] == torch.bfloat16  # the conditioners' convolutions run in bf16
    assert zs[0].dtype == torch.float32  # the invertible state stays in float32
    assert logdet.dtype == torch.float32 and log_prob.dtype == torch.float32
    assert torch.isfinite(log_prob).all()
