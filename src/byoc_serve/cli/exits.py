"""Exit codes of the byoc CLI and the error that carries one."""

from __future__ import annotations

OK = 0
CHECK_FAILED = 1  # the thing under test is broken: a smoke check, a start-up phase, an unsafe archive
USAGE = 2  # bad arguments or missing inputs (argparse uses 2 as well)
ENVIRONMENT = 3  # the Docker engine, a registry or AWS refused or could not be reached


class CliError(Exception):
    """Stops a subcommand with a one-line reason and the exit code that classifies it."""

    def __init__(self, message: str, code: int = ENVIRONMENT):
        super().__init__(message)
        self.code = code
