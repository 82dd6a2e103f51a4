"""`byoc build`: build the CPU or GPU image as a single-architecture Docker v2 image."""

from __future__ import annotations

import argparse
import re
import tarfile
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import IO

from byoc_serve.cli.engine import docker_client, docker_errors, host_platform, image_platform
from byoc_serve.cli.exits import ENVIRONMENT, OK, USAGE, CliError
from byoc_serve.cli.output import human_bytes, say

CPU_FRAMEWORKS = "sklearn,xgboost"
GPU_FRAMEWORKS = "sklearn,xgboost,torch"
WHEEL_FORM_FRAMEWORKS = "sklearn,xgboost"  # PyPI torch is a multi-GB CUDA build: opt in with a CPU wheel
KNOWN_FRAMEWORKS = {"sklearn", "xgboost", "torch", "tensorflow", "onnx", "s3", "triton"}
TRITON_SOURCES = ("base", "pytriton-wheel")
STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_TAIL_LINES = 40

HELP = "build the serving image (CPU, or GPU with --gpu) through the Docker engine"
DESCRIPTION = """\
Build Dockerfile (or Dockerfile.gpu with --gpu) from --context (default: the current directory,
a byoc-serve checkout). The classic builder is used, so the result is a single-architecture image
with a Docker v2 manifest and no provenance attestation or OCI index - the only kind SageMaker
CreateModel accepts. Warns when the target platform differs from this machine's (an arm64 image
for Graviton instances will not run here, and vice versa: "exec format error").

GPU image: --triton-source base (default) takes tritonserver from --base-image (NVIDIA's Triton
image); pytriton-wheel takes it from the nvidia-pytriton wheel (for machines without NVIDIA's
image). The wheel form defaults to --frameworks sklearn,xgboost because PyPI's torch is a
multi-GB CUDA build; add torch and pass --wheels DIR holding a CPU torch wheel to include it.

--requirements FILE (e.g. a model's code/requirements.txt) is pip-installed into the image right
after the runtime's dependencies, so nothing is installed at container start; wheels given with
--wheels satisfy it without an index. It is constrained to the versions the runtime installed,
so a requirement that would change one of them (say numpy<1.26) fails the build.
Exit codes: 0 built, 2 usage error, 3 the build or the Docker engine failed."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("build", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="build Dockerfile.gpu (Triton base) instead of the CPU image")
    parser.add_argument("--frameworks", help=f"comma-separated extras (default: {CPU_FRAMEWORKS}; GPU: {GPU_FRAMEWORKS})")
    parser.add_argument("--tag", help="image tag (default: byoc-serve:cpu or byoc-serve:gpu)")
    parser.add_argument("--base-image", help="BASE_IMAGE build argument (e.g. byoc-base:bookworm)")
    parser.add_argument("--platform", help="target platform, e.g. linux/amd64 or linux/arm64 (default: the engine's)")
    parser.add_argument("--triton-source", choices=TRITON_SOURCES, default="base", help="GPU image: where tritonserver comes from")
    parser.add_argument("--wheels", type=Path, help="directory of extra wheels (e.g. a CPU torch) preferred by pip in the build")
    parser.add_argument("--requirements", type=Path, metavar="FILE",
                        help="pip requirements file (e.g. a model's code/requirements.txt) baked into the image")
    parser.add_argument("--build-arg", action="append", metavar="KEY=VALUE", help="extra build argument (repeatable)")
    parser.add_argument("--context", type=Path, default=Path("."), help="build context: a byoc-serve checkout (default: .)")
    parser.add_argument("--verbose", action="store_true", help="print the full build log instead of one line per step")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dockerfile = "Dockerfile.gpu" if args.gpu else "Dockerfile"
    context = args.context.resolve()
    if not (context / dockerfile).is_file():
        raise CliError(f"{context} has no {dockerfile}; run from a byoc-serve checkout or pass --context", USAGE)
    if args.wheels is not None and not args.wheels.is_dir():
        raise CliError(f"--wheels {args.wheels} is not a directory", USAGE)
    if args.requirements is not None and not args.requirements.is_file():
        raise CliError(f"--requirements {args.requirements} is not a file", USAGE)
    build_args = build_arguments(args)
    tag = args.tag or ("byoc-serve:gpu" if args.gpu else "byoc-serve:cpu")
    client = docker_client()
    target = args.platform or image_platform(client.info() | {"Os": "linux"})
    if target != host_platform():
        say(f"warning: building for {target} on a {host_platform()} machine: the build runs emulated (slow, needs "
            f"binfmt/qemu) and the image will not run here. SageMaker: Graviton (ml.*g*) instances need linux/arm64, "
            f"all others linux/amd64.")
    say(f"building {tag} from {context / dockerfile} for {target} ({', '.join(f'{k}={v}' for k, v in build_args.items())})")
    started = time.monotonic()
    with tempfile.TemporaryFile() as context_tar, docker_errors("build"):
        write_context(context, dockerfile, args.wheels, args.requirements, context_tar)
        context_tar.seek(0)
        image_id = _stream_build(client, context_tar, dockerfile, tag, build_args, args.platform, args.verbose)
        attrs = client.images.get(image_id).attrs
    built = image_platform(attrs)
    say(f"built {tag} {attrs['Id'][:19]} {built} {human_bytes(attrs['Size'])} in {time.monotonic() - started:.0f}s")
    if args.platform and built != args.platform:
        raise CliError(f"asked for {args.platform} but the engine built {built}", ENVIRONMENT)
    print(tag)
    return OK


def build_arguments(args: argparse.Namespace) -> dict[str, str]:
    """Build arguments for the Dockerfile from the options; --build-arg wins over derived values."""
    if args.frameworks is not None:
        frameworks = args.frameworks
    elif args.gpu:
        frameworks = WHEEL_FORM_FRAMEWORKS if args.triton_source == "pytriton-wheel" else GPU_FRAMEWORKS
    else:
        frameworks = CPU_FRAMEWORKS
    unknown = {f.strip() for f in frameworks.split(",") if f.strip()} - KNOWN_FRAMEWORKS
    if unknown:
        raise CliError(f"unknown framework(s) {', '.join(sorted(unknown))}; choose from {', '.join(sorted(KNOWN_FRAMEWORKS))}", USAGE)
    values = {"FRAMEWORKS": ",".join(f.strip() for f in frameworks.split(",") if f.strip())}
    if args.base_image:
        values["BASE_IMAGE"] = args.base_image
    if args.gpu:
        values["TRITON_SOURCE"] = args.triton_source
    elif args.triton_source != "base":
        raise CliError("--triton-source applies to --gpu builds only", USAGE)
    for pair in args.build_arg or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--build-arg {pair!r}: expected KEY=VALUE", USAGE)
        values[key] = value
    return values


def write_context(root: Path, dockerfile: str, wheels: Path | None, requirements: Path | None,
                  out: IO[bytes]) -> None:
    """The build context as a tar: root filtered by its .dockerignore, plus wheel files and the
    requirements file (as requirements.txt) under wheels/, which the Dockerfile copies to /tmp/deps."""
    from docker.utils.build import exclude_paths

    ignore = root / ".dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines()] if ignore.is_file() else []
    patterns = [p for p in patterns if p and not p.startswith("#")]
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in sorted(exclude_paths(str(root), patterns, dockerfile=dockerfile)):
            tar.add(root / name, arcname=name, recursive=False)
        if wheels is not None:
            for wheel in sorted(wheels.glob("*.whl")):
                tar.add(wheel.resolve(), arcname=f"wheels/{wheel.name}")  # a linked wheel is sent as the file
        if requirements is not None:
            tar.add(requirements.resolve(), arcname="wheels/requirements.txt")


def _stream_build(client, context_tar: IO[bytes], dockerfile: str, tag: str,  # type: ignore[no-untyped-def]
                  build_args: dict[str, str], target: str | None, verbose: bool) -> str:
    """Run the build, printing one line per Dockerfile step (or everything with verbose);
    on failure show the last lines of the log with the engine's error."""
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    image_id = None
    started = time.monotonic()
    for event in client.api.build(fileobj=context_tar, custom_context=True, dockerfile=dockerfile, tag=tag,
                                  buildargs=build_args, network_mode="host", platform=target, rm=True,
                                  forcerm=True, decode=True):
        if "error" in event:
            say("\n".join(tail))
            raise CliError(f"build failed: {event['error'].strip()}", ENVIRONMENT)
        if "aux" in event and "ID" in event["aux"]:
            image_id = event["aux"]["ID"]
        for line in ANSI.sub("", event.get("stream", "")).splitlines():
            tail.append(line)
            step = STEP.match(line)
            if verbose:
                say(line)
            elif step:
                say(f"[{int(step[1]):>2}/{step[2]}] {time.monotonic() - started:4.0f}s  {step[3][:100]}")
            if line.startswith("Successfully built "):
                image_id = image_id or line.split()[-1]
    if image_id is None:
        raise CliError(f"build of {tag} ended without an image; last lines:\n" + "\n".join(tail), ENVIRONMENT)
    return image_id
