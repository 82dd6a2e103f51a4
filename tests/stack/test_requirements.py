"""code/requirements.txt on the real stack: checked by default, installed with BYOC_REQUIREMENTS=install
(offline from code/wheels/ here: the artifact ships the wheel), cached across restarts."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness import ServeProcess, model_needing_a_package, scratch_dir, train_sklearn_classifier

ROW = {"data": "0.5,1.0,-0.3,2.0", "headers": {"Content-Type": "text/csv"}}


def test_install_mode_installs_what_is_missing_and_a_restart_reuses_it(tmp_path):
    # scikit-learn is in the image: only the missing package is installed (offline, no index needed).
    model = model_needing_a_package(tmp_path / "model", "byoc-fixture-dep==1.0\nscikit-learn  # the image has it\n")
    run_dir = scratch_dir("run-")  # nginx's workers cannot reach into tmp_path
    try:
        for attempt in ("fresh", "restart"):
            server = ServeProcess(model, {"BYOC_REQUIREMENTS": "install", "BYOC_RUN_DIR": str(run_dir)})
            try:
                server.start(timeout=120)
                response = server.post("/invocations", **ROW)
                assert response.status_code == 200, response.text
                assert response.json() == {"tag": "from-the-wheel", "prediction": [1]}
                phase = next(line for line in server.log().splitlines() if "phase=requirements ok" in line)
                assert "installed=1" in phase and f"cached={attempt == 'restart'}" in phase, phase
            finally:
                assert server.stop() == 0
        installed = [p.name for p in (run_dir / "requirements").iterdir()]
        assert len(installed) == 1 and not installed[0].startswith("."), installed  # no staging directory left
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_check_mode_is_the_default_and_a_failed_import_says_how_to_fix_it(tmp_path):
    model = model_needing_a_package(tmp_path / "model", "byoc-fixture-dep==1.0\n")
    server = ServeProcess(model).start(wait_ready=False)
    try:
        assert server.proc.wait(60) != 0
        log = server.log()
        assert "not installed: byoc-fixture-dep==1.0" in log
        fatal = next(line for line in log.splitlines() if "FATAL start-up failed in phase=handler" in line)
        assert "No module named 'byoc_fixture_dep'" in fatal and "BYOC_REQUIREMENTS=install" in fatal, fatal
        assert not (server.run_dir / "requirements").exists()  # check mode never runs pip
    finally:
        server.stop()


def test_requirements_the_image_meets_start_without_pip_or_warnings(serve_factory, tmp_path):
    model = train_sklearn_classifier(tmp_path / "model")
    (model / "code").mkdir()
    (model / "code" / "requirements.txt").write_text("scikit-learn>=1.0\nnumpy\nwinreg-only ; sys_platform == 'win32'\n")
    server = serve_factory(model, {"BYOC_REQUIREMENTS": "install"})
    assert server.post("/invocations", **ROW).status_code == 200
    phase = next(line for line in server.log().splitlines() if "phase=requirements ok" in line)
    assert "missing=0" in phase, phase
    assert "WARNING" not in server.log()
    assert not (server.run_dir / "requirements").exists()


def test_a_failed_install_is_fatal_in_its_phase_with_pips_reason(tmp_path):
    model = model_needing_a_package(tmp_path / "model", "byoc-fixture-dep==1.0\nbyoc-not-shipped==2.0\n")
    server = ServeProcess(model, {"BYOC_REQUIREMENTS": "install"}).start(wait_ready=False)
    try:
        assert server.proc.wait(120) != 0
        fatal = next(line for line in server.log().splitlines() if "FATAL start-up failed in phase=requirements" in line)
        assert "pip could not install code/requirements.txt" in fatal and "byoc-not-shipped" in fatal, fatal
        assert [p.name for p in (server.run_dir / "requirements").iterdir()] == []  # the staging dir is gone
    finally:
        server.stop()
