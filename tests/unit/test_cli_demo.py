"""`byoc demo`: the README's first command starts the real stack and prints a prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import scratch_dir


@pytest.mark.slow
def test_demo_prints_prediction_and_stops_the_stack_leaving_nothing_behind():
    tmp = scratch_dir("demo-tmp-")
    tmp.chmod(0o755)  # serve runs nginx's workers as nobody: they must reach the run dir made in here
    demo = subprocess.run([sys.executable, "-c", "import sys; from byoc_serve.cli import main; sys.exit(main(['demo']))"],
                          capture_output=True, text=True, timeout=150,
                          env={**{k: v for k, v in os.environ.items() if k != "BYOC_RUN_DIR"}, "TMPDIR": str(tmp)})
    assert demo.returncode == 0, demo.stderr[-2000:]
    line = next(l for l in demo.stdout.splitlines() if l.startswith("prediction"))
    assert json.loads(line.split(": ", 1)[1]) == [0, 2]  # iris setosa, virginica
    assert "demo: stopped (exit code 0)" in demo.stderr
    assert list(tmp.iterdir()) == []  # the run dir with its demo model, sockets and nginx files is gone
