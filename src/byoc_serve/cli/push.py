"""`byoc push`: push an image to ECR (or any registry) and prove SageMaker can use the manifest."""

from __future__ import annotations

import argparse
import base64
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlparse

from byoc_serve.cli.engine import docker_client, docker_errors
from byoc_serve.cli.exits import CHECK_FAILED, ENVIRONMENT, OK, USAGE, CliError
from byoc_serve.cli.output import Progress, human_bytes, say

DOCKER_V2_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
PUSH_PERMISSIONS = ("ecr:BatchCheckLayerAvailability, ecr:InitiateLayerUpload, ecr:UploadLayerPart, "
                    "ecr:CompleteLayerUpload and ecr:PutImage")

HELP = "push an image to ECR (default) or another registry and verify its manifest type"
DESCRIPTION = f"""\
Push IMAGE as REGISTRY/REPOSITORY:TAG. Without --registry the target is Amazon ECR: a login token
comes from ecr:GetAuthorizationToken (boto3, the usual AWS credential chain and --region), and the
repository is created if it does not exist. With --registry HOST[:PORT] any registry is used with
the Docker engine's own credentials (docker login). After the push the manifest is fetched back:
SageMaker CreateModel accepts only a single-architecture Docker v2 manifest
({DOCKER_V2_MANIFEST}), not an OCI index with provenance attestations.
Exit codes: 0 pushed and verified, 1 the manifest is not one SageMaker accepts, 2 usage error,
3 Docker, registry or AWS problem (permission problems are explained)."""


@dataclass
class Pushed:
    reference: str
    digest: str
    media_type: str


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("push", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="local image, e.g. byoc-serve:cpu")
    parser.add_argument("--repository", required=True, help="repository name, e.g. byoc-serve")
    parser.add_argument("--tag", help="tag to push (default: IMAGE's tag, else latest)")
    parser.add_argument("--region", help="AWS region of the ECR registry (default: from the AWS configuration)")
    parser.add_argument("--registry", help="push to this registry host[:port] instead of ECR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.registry and args.region:
        raise CliError("--region applies to ECR; leave it out with --registry", USAGE)
    tag = args.tag or _tag_of(args.image)
    client = docker_client()
    if args.registry:
        pushed = push_to_registry(client, args.image, args.registry, args.repository, tag)
    else:
        pushed = push_to_ecr(client, ecr_client(args.region), args.image, args.repository, tag)
    print(f"{pushed.reference}@{pushed.digest}")
    return OK


def ecr_client(region: str | None) -> Any:
    import boto3

    with aws_errors("create an ECR client"):
        return boto3.client("ecr", region_name=region)


def push_to_ecr(client: Any, ecr: Any, image: str, repository: str, tag: str) -> Pushed:
    """Log in with a fresh ECR token, create the repository if missing, push and verify."""
    with aws_errors("get an ECR login token", "ecr:GetAuthorizationToken"):
        data = ecr.get_authorization_token()["authorizationData"][0]
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    registry = urlparse(data["proxyEndpoint"]).netloc or data["proxyEndpoint"]
    ensure_repository(ecr, repository)
    return push_to_registry(client, image, registry, repository, tag, {"username": username, "password": password})


def ensure_repository(ecr: Any, repository: str) -> None:
    from botocore.exceptions import ClientError

    with aws_errors(f"look up ECR repository {repository}", "ecr:DescribeRepositories"):
        try:
            ecr.describe_repositories(repositoryNames=[repository])
            return
        except ClientError as exc:
            if _code(exc) != "RepositoryNotFoundException":
                raise
    with aws_errors(f"create ECR repository {repository}", "ecr:CreateRepository"):
        ecr.create_repository(repositoryName=repository)
    say(f"created ECR repository {repository}")


def push_to_registry(client: Any, image: str, registry: str, repository: str, tag: str,
                     auth: dict[str, str] | None = None) -> Pushed:
    """Tag and push with streamed progress, then check the manifest the registry now serves."""
    target = f"{registry}/{repository}"
    reference = f"{target}:{tag}"
    with docker_errors("push"):
        client.images.get(image).tag(target, tag)
        say(f"pushing {image} as {reference}")
        digest = _stream_push(client, target, tag, auth)
        descriptor = client.api.inspect_distribution(reference, auth_config=auth)
    media_type = descriptor["Descriptor"]["mediaType"]
    platforms = descriptor.get("Platforms") or []
    if media_type != DOCKER_V2_MANIFEST or len(platforms) > 1:
        raise CliError(f"{reference} has manifest type {media_type} for {len(platforms)} platform(s); SageMaker needs "
                       f"one {DOCKER_V2_MANIFEST}. Rebuild with `byoc build` (classic builder, no provenance) "
                       f"or docker buildx --provenance=false --output type=docker", CHECK_FAILED)
    say(f"verified {reference}: {media_type}, digest {descriptor['Descriptor']['digest']}")
    return Pushed(reference, digest or descriptor["Descriptor"]["digest"], media_type)


def _stream_push(client: Any, target: str, tag: str, auth: dict[str, str] | None) -> str | None:
    """Push, drawing one bar over all layers; returns the digest the registry reported."""
    layers: dict[str, tuple[int, int]] = {}
    reused: set[str] = set()
    progress = Progress(f"pushing {target}:{tag}")
    digest = None
    for event in client.api.push(target, tag=tag, auth_config=auth, stream=True, decode=True):
        if "error" in event:
            raise CliError(explain_push_error(event["error"], target), ENVIRONMENT)
        layer, status = event.get("id"), event.get("status", "")
        detail = event.get("progressDetail") or {}
        if layer and detail.get("total"):
            layers[layer] = (detail.get("current", 0), detail["total"])
        elif layer and status == "Pushed" and layer in layers:
            layers[layer] = (layers[layer][1], layers[layer][1])
        elif layer and (status == "Layer already exists" or status.startswith("Mounted from")):
            reused.add(layer)
        if layers:
            progress.update(sum(c for c, _ in layers.values()), sum(t for _, t in layers.values()))
        digest = (event.get("aux") or {}).get("Digest", digest)
    progress.done(f"{len(layers)} layer(s) uploaded ({human_bytes(progress.total)}), {len(reused)} already there")
    return digest


def explain_push_error(message: str, target: str) -> str:
    """The registry's refusal in plain words, with the permission or step that fixes it."""
    low = message.lower()
    if "not authorized to perform" in low or "denied" in low:
        if ".ecr." in target:
            return (f"ECR refused the push ({message.strip()}). The AWS identity needs {PUSH_PERMISSIONS} on the "
                    f"repository (the managed policy AmazonEC2ContainerRegistryPowerUser has them).")
        return f"the registry refused the push ({message.strip()}); log in first: docker login {target.split('/')[0]}"
    if "no basic auth credentials" in low or "authorization token has expired" in low:
        return f"the registry wants credentials ({message.strip()}); ECR tokens last 12 hours - run byoc push again"
    return f"push to {target} failed: {message.strip()}"


@contextmanager
def aws_errors(action: str, permission: str = "") -> Iterator[None]:
    """Turn botocore failures into a sentence saying what is missing (credentials, region, a permission)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        yield
    except NoCredentialsError:
        raise CliError(f"cannot {action}: no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID and "
                       f"AWS_SECRET_ACCESS_KEY, or run `aws sso login`", ENVIRONMENT) from None
    except NoRegionError:
        raise CliError(f"cannot {action}: no AWS region; pass --region or set AWS_REGION", ENVIRONMENT) from None
    except ClientError as exc:
        code, message = _code(exc), exc.response.get("Error", {}).get("Message", "")
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
            text = (f"cannot {action}: AWS denied it ({message}). The identity needs the IAM permission "
                    f"{permission}; ask an administrator to grant it (AmazonEC2ContainerRegistryPowerUser covers push)")
        elif code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired"):
            text = f"cannot {action}: the AWS credentials have expired; refresh them (e.g. `aws sso login`)"
        elif code in ("UnrecognizedClientException", "InvalidSignatureException", "InvalidClientTokenId"):
            text = (f"cannot {action}: AWS does not recognise these credentials ({code}); check the access key, "
                    f"secret and session token")
        else:
            text = f"cannot {action}: {code}: {message}"
        raise CliError(text, ENVIRONMENT) from exc
    except BotoCoreError as exc:
        raise CliError(f"cannot {action}: {exc}", ENVIRONMENT) from None


def _code(exc: Any) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _tag_of(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name and "@" not in name else "latest"
