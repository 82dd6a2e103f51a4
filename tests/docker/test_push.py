"""`byoc push` against a real registry (Debian's docker-registry on 127.0.0.1): round trip with the
same digest, and the ECR path with only the AWS API stood in for by a botocore Stubber."""

from __future__ import annotations

import base64
import uuid

import boto3
import pytest
from botocore.stub import Stubber

from byoc_serve.cli import main, push

pytestmark = pytest.mark.docker


def test_push_to_registry_round_trips_with_same_digest(docker_client, cpu_image, registry, capsys):
    tag = f"ci-{uuid.uuid4().hex[:8]}"
    assert main(["push", cpu_image, "--repository", "byoc-serve", "--registry", registry, "--tag", tag]) == 0
    captured = capsys.readouterr()
    reference, digest = captured.out.strip().splitlines()[-1].split("@")
    assert reference == f"{registry}/byoc-serve:{tag}"
    assert f"verified {reference}: {push.DOCKER_V2_MANIFEST}" in captured.err

    docker_client.images.remove(reference)
    pulled = docker_client.images.pull(f"{registry}/byoc-serve", tag=tag)
    try:
        assert f"{registry}/byoc-serve@{digest}" in pulled.attrs["RepoDigests"]
        assert pulled.id == docker_client.images.get(cpu_image).id
    finally:
        docker_client.images.remove(reference)


def test_ecr_push_logs_in_creates_repository_and_verifies_manifest(docker_client, cpu_image, registry):
    ecr = boto3.client("ecr", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    repository, tag = f"byoc-ecr-{uuid.uuid4().hex[:6]}", "v1"
    token = base64.b64encode(b"AWS:not-a-real-password").decode()
    with Stubber(ecr) as stubber:
        # ECR's answers are stood in for; the docker push itself goes to the real local registry.
        stubber.add_response("get_authorization_token", {"authorizationData": [
            {"authorizationToken": token, "proxyEndpoint": f"http://{registry}"}]}, {})
        stubber.add_client_error("describe_repositories", "RepositoryNotFoundException", "no such repository",
                                 expected_params={"repositoryNames": [repository]})
        stubber.add_response("create_repository", {"repository": {"repositoryName": repository}},
                             {"repositoryName": repository})
        pushed = push.push_to_ecr(docker_client, ecr, cpu_image, repository, tag)
        stubber.assert_no_pending_responses()
    try:
        assert pushed.reference == f"{registry}/{repository}:{tag}"
        assert pushed.media_type == push.DOCKER_V2_MANIFEST
        assert pushed.digest.startswith("sha256:")
    finally:
        docker_client.images.remove(pushed.reference)
