"""What the gunicorn master imports before it loads a model is start-up time on every container start."""

from __future__ import annotations

import subprocess
import sys


def test_the_single_model_master_does_not_import_flask_before_loading():
    probe = "import sys, byoc_serve.workers; print(sorted(m for m in ('flask', 'werkzeug', 'jinja2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
