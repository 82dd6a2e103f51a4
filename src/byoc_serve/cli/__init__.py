"""`byoc`: the developer CLI - build, run, smoke-test, package, check and push serving images.

Subcommands live in one module each; docker and boto3 are imported only when a subcommand needs
them, so `byoc --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from byoc_serve.cli import build, check, demo, package, push, run, smoke
from byoc_serve.cli.exits import CliError

SUBCOMMANDS = (demo, build, run, smoke, check, package, push)

EPILOG = """\
typical loop:
  byoc demo                                     # the stack answers on this machine
  byoc build                                    # byoc-serve:cpu (Docker v2, single arch)
  byoc package model/ -o model.tar.gz           # archive SageMaker extracts cleanly
  byoc check model.tar.gz                       # start-up phases, first failure named
  byoc smoke byoc-serve:cpu model.tar.gz        # the container passes SageMaker's checks
  byoc push byoc-serve:cpu --repository NAME    # to ECR, manifest verified

exit codes: 0 ok, 1 a check failed, 2 usage error, 3 Docker, registry or AWS problem"""


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="byoc", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"byoc {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"byoc {args.command}: interrupted", file=sys.stderr)
        return 130
