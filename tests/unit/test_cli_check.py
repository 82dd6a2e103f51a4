"""`byoc check` runs the real start-up phases on real (tiny) models and names the first failure."""

from __future__ import annotations

import os
import tarfile

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from byoc_serve.cli import main
from byoc_serve.cli.exits import CHECK_FAILED, USAGE


@pytest.fixture
def sklearn_model(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    features = np.random.RandomState(0).rand(30, 3)
    joblib.dump(LogisticRegression().fit(features, features[:, 0] > 0.5), model_dir / "model.joblib")
    (model_dir / "code" / "warmup.csv").write_text("0.1,0.2,0.3\n")
    return model_dir


def test_check_passes_good_model_and_prints_each_phase(sklearn_model, capsys):
    assert main(["check", str(sklearn_model)]) == 0
    out = capsys.readouterr().out
    for phase in ("config", "handler", "load", "warm-up"):
        assert f"\n{phase} " in out
    assert "handler=sklearn" in out
    assert "passed every start-up phase" in out


def test_check_runs_payload_through_the_pipeline(sklearn_model, tmp_path, capsys):
    payload = tmp_path / "rows.csv"
    payload.write_text("0.9,0.1,0.1\n0.1,0.1,0.1\n")
    assert main(["check", str(sklearn_model), "--payload", str(payload)]) == 0
    invoke_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("invoke"))
    assert "application/json" in invoke_row


def test_check_names_load_as_failing_phase_for_corrupt_pickle(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.joblib").write_bytes(b"not a pickle at all")
    assert main(["check", str(broken)]) == CHECK_FAILED
    assert "FAILED in phase 'load'" in capsys.readouterr().err


def test_check_names_config_for_invalid_setting(sklearn_model, capsys):
    assert main(["check", str(sklearn_model), "--env", "BYOC_WORKERS=zero"]) == CHECK_FAILED
    assert "FAILED in phase 'config'" in capsys.readouterr().err


def test_check_extracts_archive_and_loads_it(sklearn_model, tmp_path, capsys):
    archive = tmp_path / "model.tar.gz"
    assert main(["package", str(sklearn_model), "-o", str(archive)]) == 0
    assert main(["check", str(archive)]) == 0
    assert "\nextract " in capsys.readouterr().out


def test_check_refuses_archive_with_symlink(sklearn_model, tmp_path, capsys):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sklearn_model / "model.joblib", arcname="model.joblib")
        link = tarfile.TarInfo("code")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    assert main(["check", str(archive)]) == CHECK_FAILED
    err = capsys.readouterr().err
    assert "FAILED in phase 'extract'" in err and "link" in err


def test_check_missing_model_is_a_usage_error(tmp_path):
    assert main(["check", os.fspath(tmp_path / "missing")]) == USAGE
