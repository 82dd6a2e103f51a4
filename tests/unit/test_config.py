import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from byoc_serve.config import MIB, ConfigError, load_settings
from byoc_serve.nginx_conf import render_nginx_conf, worker_servers, write_nginx_conf


def test_defaults_fit_a_real_time_endpoint():
    settings = load_settings({})
    assert settings.port == 8080
    assert settings.timeout_s == 60
    assert settings.max_payload_bytes == 6 * MIB
    assert settings.default_accept == "application/json"
    assert not settings.multi_model and not settings.batch


def test_sagemaker_variables_are_honoured_and_ours_win():
    env = {
        "SAGEMAKER_BIND_TO_PORT": "9000",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "600",
        "SAGEMAKER_MULTI_MODEL": "TRUE",
        "SAGEMAKER_BATCH_STRATEGY": "single_record",
    }
    settings = load_settings(env)
    assert (settings.port, settings.max_payload_bytes, settings.timeout_s) == (9000, 100 * MIB, 600)
    assert settings.multi_model and settings.batch_strategy == "SINGLE_RECORD"
    assert load_settings({**env, "BYOC_TIMEOUT": "30"}).timeout_s == 30


@pytest.mark.parametrize(
    "name, value",
    [
        ("SAGEMAKER_BIND_TO_PORT", "70000"),
        ("BYOC_TIMEOUT", "0"),
        ("BYOC_WORKERS", "many"),
        ("SAGEMAKER_MULTI_MODEL", "perhaps"),
        ("BYOC_PREDICT_METHOD", "fit"),
        ("BYOC_CACHE_POLICY", "fifo"),
        ("BYOC_REQUIREMENTS", "always"),
        ("SAGEMAKER_SAFE_PORT_RANGE", "9000"),
        ("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "image/png"),
        ("BYOC_TF_RESPONSE", "predictions"),
    ],
)
def test_invalid_values_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_threads_per_worker_split_the_cores():
    settings = load_settings({"BYOC_WORKERS": "1"})
    assert settings.intra_op_threads >= 1
    assert load_settings({"BYOC_WORKERS": "64"}).intra_op_threads == 1


def test_request_threads_default_to_one_per_worker_except_for_mme():
    assert load_settings({}).threads == 1
    assert load_settings({"SAGEMAKER_MULTI_MODEL": "true"}).threads == 4
    assert load_settings({"SAGEMAKER_MULTI_MODEL": "true", "BYOC_THREADS": "2"}).threads == 2


def test_one_timeout_and_one_payload_limit_reach_nginx():
    conf = render_nginx_conf(load_settings({"BYOC_TIMEOUT": "17", "BYOC_MAX_PAYLOAD_MB": "3", "BYOC_RUN_DIR": "/x", "BYOC_WORKERS": "1"}))
    assert "proxy_read_timeout 17s;" in conf
    assert f"client_max_body_size {3 * MIB};" in conf
    assert "server unix:/x/workers/0.sock" in conf and "server unix:/x/workers/1.sock" not in conf
    assert "{{" not in conf


def test_every_worker_is_a_ranked_primary_and_a_backup_and_nginx_accepts_the_weights(tmp_path):
    """Up to 5 slots rank strictly (10,000 : 1 each), later ones tie; nginx parses the largest weight."""
    servers = worker_servers(Path("/r"), 7)
    weights = [int(re.search(r"weight=(\d+)", line).group(1)) for line in servers[:7]]
    assert weights == [10_000**4, 10_000**3, 10_000**2, 10_000, 1, 1, 1]
    assert all("max_conns=1" in line and "max_fails=1" in line for line in servers[:7])
    assert servers[7:] == [f"server unix:/r/workers/{slot}.sock backup max_fails=0;" for slot in range(7)]
    settings = load_settings({"BYOC_RUN_DIR": str(tmp_path), "BYOC_WORKERS": "7", "SAGEMAKER_BIND_TO_PORT": "18123"})
    conf = write_nginx_conf(settings)
    checked = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-t", "-c", str(conf), "-e", str(tmp_path / "error.log")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_unknown_template_placeholder_is_an_error():
    with pytest.raises(KeyError, match="nope"):
        render_nginx_conf(load_settings({}), "listen {{ nope }};")


def test_default_accept_is_normalised():
    assert load_settings({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "Text/CSV; charset=utf-8"}).default_accept == "text/csv"


class RecordingEnv(Mapping):
    """An empty environment that remembers every variable name asked for."""

    def __init__(self):
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:  # Mapping's get() and `in` come through here too
        self.asked.add(name)
        raise KeyError(name)

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


def test_every_variable_the_settings_read_has_a_readme_row_and_every_row_is_read():
    env = RecordingEnv()
    load_settings(env)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    first_cells = re.findall(r"^\| (`[A-Z_]+`(?:, `[A-Z_]+`)*) \|", readme, flags=re.MULTILINE)
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z_]+)`", cell)}
    assert len(env.asked) > 20
    assert env.asked - documented == set(), "read by load_settings but missing from the README table"
    assert documented - env.asked == set(), "in the README table but never read by load_settings"
