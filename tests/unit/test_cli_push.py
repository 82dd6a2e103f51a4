"""`byoc push`: the AWS side (ECR token, repository creation, IAM errors) against a botocore Stubber.

The real push to a local registry, including the ECR path, is in tests/docker/test_push.py.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from byoc_serve.cli import push
from byoc_serve.cli.exits import ENVIRONMENT, CliError


@pytest.fixture
def ecr():
    client = boto3.client("ecr", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                          aws_secret_access_key="secret")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_existing_repository_is_not_created_again(ecr):
    client, stubber = ecr
    stubber.add_response("describe_repositories", {"repositories": [{"repositoryName": "byoc"}]},
                         {"repositoryNames": ["byoc"]})
    push.ensure_repository(client, "byoc")


def test_missing_repository_is_created(ecr, capsys):
    client, stubber = ecr
    stubber.add_client_error("describe_repositories", "RepositoryNotFoundException", "not found")
    stubber.add_response("create_repository", {"repository": {"repositoryName": "byoc"}}, {"repositoryName": "byoc"})
    push.ensure_repository(client, "byoc")
    assert "created ECR repository byoc" in capsys.readouterr().err


def test_denied_create_names_the_missing_permission(ecr):
    client, stubber = ecr
    stubber.add_client_error("describe_repositories", "RepositoryNotFoundException", "not found")
    stubber.add_client_error("create_repository", "AccessDeniedException",
                             "User: arn:aws:iam::123456789012:user/dev is not authorized to perform: ecr:CreateRepository")
    with pytest.raises(CliError) as error:
        push.ensure_repository(client, "byoc")
    assert error.value.code == ENVIRONMENT
    assert "needs the IAM permission ecr:CreateRepository" in str(error.value)


def test_expired_credentials_are_explained(ecr):
    client, stubber = ecr
    stubber.add_client_error("get_authorization_token", "ExpiredTokenException", "The security token included in the request is expired")
    with pytest.raises(CliError, match="credentials have expired"):
        push.push_to_ecr(None, client, "img", "byoc", "t")


def test_missing_region_is_explained(monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(CliError, match="no AWS region"):
        push.ecr_client(None)


def test_ecr_layer_upload_denial_lists_push_permissions():
    text = push.explain_push_error(
        "denied: User: arn:aws:sts::123456789012:assumed-role/notebook is not authorized to perform: "
        "ecr:InitiateLayerUpload on resource: arn:aws:ecr:us-east-1:123456789012:repository/byoc",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/byoc")
    assert "ecr:InitiateLayerUpload" in text and "ecr:PutImage" in text
    assert "AmazonEC2ContainerRegistryPowerUser" in text


def test_expired_ecr_login_says_to_push_again():
    text = push.explain_push_error("no basic auth credentials", "123456789012.dkr.ecr.us-east-1.amazonaws.com/byoc")
    assert "run byoc push again" in text
