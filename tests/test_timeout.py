"""``FASTFLOW_TEST_TIMEOUT`` (``tests/conftest.py``) fails a test that runs longer, with a message naming it: the GPU
check relies on it so that one hung test cannot eat a GPU machine's minutes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_test_past_the_timeout_fails_with_its_name(tmp_path):
    (tmp_path / "test_sleepy.py").write_text("import time\n\ndef test_sleeps():\n    time.sleep(30)\n")
    env = {**os.environ, "FASTFLOW_TEST_TIMEOUT": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )
    assert done.returncode == 1, done.stdout
    assert "test_sleeps ran longer than FASTFLOW_TEST_TIMEOUT=1 s" in done.stdout
