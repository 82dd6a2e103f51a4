"""The `byoc` entry: help for every subcommand, usage errors, and a fast import."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from byoc_serve.cli import main
from byoc_serve.cli.exits import USAGE

SUBCOMMANDS = ["demo", "build", "run", "smoke", "check", "package", "push"]


def test_help_lists_every_subcommand_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in out
    assert "exit codes: 0 ok, 1 a check failed, 2 usage error, 3 Docker" in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_help_explains_its_exit_codes(capsys, name):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "Exit codes:" in capsys.readouterr().out


def test_unknown_subcommand_exits_with_usage_code(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy"])
    assert exit_info.value.code == USAGE


def test_run_needs_exactly_one_of_model_and_multi_model(tmp_path, capsys):
    assert main(["run"]) == USAGE
    assert main(["run", str(tmp_path), "--multi-model", str(tmp_path)]) == USAGE
    assert "either MODEL or --multi-model" in capsys.readouterr().err


def test_bad_env_pair_is_a_usage_error(tmp_path, capsys):
    assert main(["smoke", "img", str(tmp_path), "--env", "NOEQUALS"]) == USAGE
    assert "KEY=VALUE" in capsys.readouterr().err


def test_import_and_help_do_not_load_docker_or_boto3():
    code = ("import sys; from byoc_serve.cli import parser; parser().format_help(); "
            "print(sorted(m for m in ('docker', 'boto3', 'botocore', 'requests', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_in_a_fresh_process_is_fast():
    started = time.monotonic()
    byoc = subprocess.run([sys.executable, "-c", "import sys; from byoc_serve.cli import main; sys.exit(main(['--help']))"],
                          capture_output=True, text=True, timeout=10)
    assert byoc.returncode == 0
    assert "usage: byoc" in byoc.stdout
    assert time.monotonic() - started < 3  # ~0.15 s here; heavy imports would push it past a second
