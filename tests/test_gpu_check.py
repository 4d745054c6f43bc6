"""``bash .ci/gpu`` on a machine without a GPU: it installs fastflow into the given Python, reports every GPU
stage as skipped with the reason, prints its summary and exits 0 (the GPU check itself runs on GPU machines)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine this would be the whole GPU check")
def test_gpu_check_without_a_gpu_runs_to_its_summary_and_exits_0(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / ".ci" / "gpu"), str(tmp_path), "300"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600, stdin=subprocess.DEVNULL)
    summary = done.stdout[done.stdout.index("===== summary"):]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gpu: install   passed" in summary
    for stage in ("tests", "sanitize", "bench"):
        assert f"gpu: {stage:9s} skipped     0s  no CUDA device" in summary, summary
    assert "needs two" in summary
    assert list(tmp_path.iterdir()) == []  # no GPU, no result files
