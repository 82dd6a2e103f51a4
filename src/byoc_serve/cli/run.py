"""`byoc run`: serve a model locally in the image exactly as SageMaker would start it."""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

from byoc_serve.cli import container as serving
from byoc_serve.cli.engine import docker_client, docker_errors
from byoc_serve.cli.exits import CHECK_FAILED, OK, USAGE, CliError
from byoc_serve.cli.output import say
from byoc_serve.cli.staging import container_path, model_directory, multi_model_directories

HELP = "serve a model in the image locally, mounted and configured as on SageMaker"
DESCRIPTION = """\
docker run IMAGE serve with the model mounted read-only at /opt/ml/model (a directory, or a
model.tar.gz extracted to a temporary directory first), or with --multi-model DIR every model in
DIR mounted at /opt/ml/models/{name}/model and SAGEMAKER_MULTI_MODEL=true. Uses the host network,
port 8080 unless --port (then SAGEMAKER_BIND_TO_PORT is set, as in a serial pipeline). Streams the
container log until Ctrl-C, then stops it with SIGTERM like SageMaker (SIGKILL after 30 s).
Exit codes: 0 stopped cleanly, 1 the container exited non-zero, 2 usage error, 3 Docker problem."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, nargs="?", help="model directory or model.tar.gz")
    parser.add_argument("--multi-model", type=Path, metavar="DIR", help="directory of model directories or archives (MME)")
    parser.add_argument("--image", default="byoc-serve:cpu", help="image to run (default: byoc-serve:cpu)")
    parser.add_argument("--port", type=int, default=serving.SAGEMAKER_PORT, help="port to serve on (default 8080)")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra environment variable (repeatable)")
    parser.add_argument("--user", help="run as this user instead of root (e.g. 1000)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.multi_model is None):
        raise CliError("give either MODEL or --multi-model DIR", USAGE)
    env = serving.parse_env(args.env)
    client = docker_client()
    with ExitStack() as stack:
        if args.multi_model is not None:
            models = stack.enter_context(multi_model_directories(args.multi_model))
            spec = serving.ServingSpec(args.image, port=args.port, models=models, env=env, user=args.user)
        else:
            if not args.model.exists():
                raise CliError(f"{args.model} does not exist", USAGE)
            spec = serving.ServingSpec(args.image, port=args.port, model_dir=stack.enter_context(model_directory(args.model)),
                                       env=env, user=args.user)
        with docker_errors("run"):
            box = serving.start(client, spec)
            stack.callback(serving.remove, box)
            _print_usage(spec)
            code = _follow(box)
    return OK if code == 0 else CHECK_FAILED


def _print_usage(spec: serving.ServingSpec) -> None:
    base = f"http://127.0.0.1:{spec.port}"
    say(f"serving {spec.image} on {base} (Ctrl-C stops it)")
    say(f"  curl {base}/ping")
    if spec.multi_model:
        for name in spec.models:
            say(f"  curl -X POST {base}/models -H 'Content-Type: application/json' "
                f"-d '{{\"model_name\": \"{name}\", \"url\": \"{container_path(name)}\"}}'")
        say(f"  curl -X POST {base}/models/NAME/invoke -H 'Content-Type: text/csv' --data-binary @payload.csv")
    else:
        say(f"  curl -X POST {base}/invocations -H 'Content-Type: text/csv' --data-binary @payload.csv")


def _follow(box) -> int:  # type: ignore[no-untyped-def]
    """Stream the log until the container exits or Ctrl-C/SIGTERM (which stops it gracefully);
    returns the container's exit code."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        for chunk in box.logs(stream=True, follow=True):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        code = int(box.wait().get("StatusCode", -1))
    except KeyboardInterrupt:
        say("stopping (SIGTERM, SIGKILL after 30 s)...")
        code, seconds = serving.stop(box)
        say(f"stopped in {seconds:.1f}s with exit code {code}")
    return code
