"""The CPU image built by `byoc build`: SageMaker's start, health, MME, signals, users, labels, size."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from byoc_serve.cli import main
from byoc_serve.cli.container import free_port
from byoc_serve.cli.exits import CHECK_FAILED
from harness import build_wheel, wait_for_ping

pytestmark = pytest.mark.docker

SIZE_LIMIT = 1_500_000_000
REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS_IMAGE = "byoc-serve:ci-cpu-requirements"
BUILD_TIMEOUT_S = 900


def test_image_carries_sagemaker_capability_labels(docker_client, cpu_image):
    labels = docker_client.images.get(cpu_image).labels
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"


def test_default_image_is_single_arch_and_well_under_size_limit(docker_client, cpu_image):
    attrs = docker_client.images.get(cpu_image).attrs
    print(f"\n{cpu_image} (FRAMEWORKS=sklearn,xgboost): {attrs['Size'] / 1e6:.0f} MB, {attrs['Os']}/{attrs['Architecture']}")
    assert attrs["Size"] < SIZE_LIMIT
    assert (attrs["Os"], attrs["Architecture"]) == ("linux", "amd64")
    assert attrs["Config"]["Entrypoint"] == ["serve"]  # exec form: serve is PID 1


def test_smoke_passes_for_sklearn_model(cpu_image, models, capsys):
    assert main(["smoke", cpu_image, str(models.sklearn), "--startup-timeout", "120"]) == 0
    out = capsys.readouterr().out
    for check in ("ping", "ping-steady", "invocations", "sigterm"):
        assert f"\n{check} " in out and "FAIL" not in out


def test_packaged_xgboost_archive_loads_in_container(cpu_image, models):
    assert main(["smoke", cpu_image, str(models.archive), "--startup-timeout", "120"]) == 0


def test_smoke_passes_multi_model_load_invoke_unload(cpu_image, models, capsys):
    assert main(["smoke", cpu_image, str(models.mme), "--multi-model", "--startup-timeout", "120"]) == 0
    out = capsys.readouterr().out
    for check in ("mme-load alpha", "mme-load beta", "mme-load-duplicate", "mme-invoke beta", "mme-unload alpha",
                  "mme-invoke-unloaded"):
        assert f"\n{check} " in out


def test_smoke_fails_on_broken_model_naming_the_check(cpu_image, models, capsys):
    started = time.monotonic()
    assert main(["smoke", cpu_image, str(models.broken), "--startup-timeout", "120"]) == CHECK_FAILED
    err = capsys.readouterr().err
    assert "FAILED check 'ping'" in err
    assert "phase=load" in err  # the container log tail shows the runtime's failing phase
    assert time.monotonic() - started < 60  # an exited container fails fast, not after the window


def test_smoke_passes_as_unprivileged_user(cpu_image, models):
    assert main(["smoke", cpu_image, str(models.sklearn), "--user", "1000", "--startup-timeout", "120"]) == 0


def test_docker_run_serve_is_pid_1_and_exits_0_on_sigterm(docker_client, cpu_image, models):
    port = free_port()
    box = docker_client.containers.run(
        cpu_image, command=["serve"], network_mode="host", detach=True,
        environment={"SAGEMAKER_BIND_TO_PORT": str(port)},
        volumes={str(models.sklearn): {"bind": "/opt/ml/model", "mode": "ro"}})
    try:
        if not wait_for_ping(f"http://127.0.0.1:{port}", 120):
            pytest.fail("no 200 from /ping: " + box.logs(tail=30).decode())
        pid1 = box.exec_run(["cat", "/proc/1/cmdline"]).output.split(b"\0")
        assert pid1[1].endswith(b"/serve")  # interpreter, then the serve script: no shell in between
        started = time.monotonic()
        box.stop(timeout=30)
        status = box.wait(timeout=60)
        assert status["StatusCode"] == 0
        assert time.monotonic() - started < 30
    finally:
        box.remove(force=True)


def test_check_inside_image_names_failing_phase(cpu_image, models, capsys):
    assert main(["check", str(models.xgboost), "--image", cpu_image]) == 0
    assert main(["check", str(models.broken), "--image", cpu_image]) == CHECK_FAILED
    assert "FAILED in phase 'load'" in capsys.readouterr().out


def test_byoc_run_serves_archive_until_sigterm_then_removes_container(docker_client, cpu_image, models, tmp_path):
    port = free_port()
    log = (tmp_path / "run.log").open("wb")
    cli = subprocess.Popen([sys.executable, "-c", "import sys; from byoc_serve.cli import main; sys.exit(main(sys.argv[1:]))",
                            "run", str(models.archive), "--image", cpu_image, "--port", str(port)],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_ping(f"http://127.0.0.1:{port}", 120, alive=lambda: cli.poll() is None)
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", data="0.9,0.8,0.7\n",
                               headers={"Content-Type": "text/csv"}, timeout=60)
        assert answer.status_code == 200, (tmp_path / "run.log").read_text()[-2000:]
        assert len(answer.json()) == 1
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
        log.close()
    assert docker_client.containers.list(all=True, filters={"label": "byoc-serve.cli"}) == []


def with_fixed_times(wheel: Path) -> Path:
    """Rewrite the zip with fixed entry times: the same bytes every run keep the build's layer cache."""
    with zipfile.ZipFile(wheel) as source:
        entries = [(zipfile.ZipInfo(item.filename, (1980, 1, 1, 0, 0, 0)), source.read(item)) for item in source.infolist()]
    with zipfile.ZipFile(wheel, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return wheel


def test_build_bakes_requirements_satisfied_by_given_wheels(docker_client, base_image, tmp_path):
    wheels = tmp_path / "wheels"
    with_fixed_times(build_wheel(wheels, "byoc_baked_dep", "1.0", 'VALUE = "baked-in"\n'))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("byoc-baked-dep==1.0\n")  # on no index: only the --wheels file satisfies it
    started = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).with_name("byoc")), "build", "--context", str(REPO),
                           "--base-image", base_image, "--tag", REQUIREMENTS_IMAGE,
                           "--requirements", str(requirements), "--wheels", str(wheels)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    print(f"\nbyoc build --requirements --wheels: {time.monotonic() - started:.0f}s")
    assert done.returncode == 0, done.stderr[-3000:]
    out = docker_client.containers.run(
        REQUIREMENTS_IMAGE, entrypoint=["python", "-c", "import byoc_baked_dep; print(byoc_baked_dep.VALUE)"],
        network_mode="host", remove=True)
    assert out.decode().strip() == "baked-in"


def test_build_fails_when_requirements_would_change_the_runtimes_packages(base_image, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy<1.26\n")  # the image pins numpy 1.26.x; pip must not swap it out
    done = subprocess.run([str(Path(sys.executable).with_name("byoc")), "build", "--context", str(REPO),
                           "--base-image", base_image, "--tag", REQUIREMENTS_IMAGE + "-conflict",
                           "--requirements", str(requirements)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "numpy" in done.stderr and "conflict" in done.stderr.lower(), done.stderr[-3000:]
