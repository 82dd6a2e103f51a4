"""What `byoc smoke` and `byoc run` hand to Docker: payload choice, model layout, SageMaker env."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from byoc_serve.cli.container import ServingSpec
from byoc_serve.cli.exits import CHECK_FAILED, USAGE, CliError
from byoc_serve.cli.smoke import load_payload
from byoc_serve.cli.staging import model_directory, model_name, multi_model_directories


def test_payload_defaults_to_the_models_warmup_sample(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "warmup.csv").write_text("1,2\n")
    assert load_payload(None, None, tmp_path) == (b"1,2\n", "text/csv")


def test_payload_content_type_comes_from_extension_or_option(tmp_path):
    sample = tmp_path / "rows.json"
    sample.write_text("[[1, 2]]")
    assert load_payload(sample, None, tmp_path)[1] == "application/json"
    assert load_payload(sample, "application/jsonlines", tmp_path)[1] == "application/jsonlines"


def test_missing_payload_is_a_usage_error_that_says_what_to_do(tmp_path):
    with pytest.raises(CliError) as error:
        load_payload(None, None, tmp_path)
    assert error.value.code == USAGE and "--payload" in str(error.value)


def test_single_model_spec_mounts_read_only_at_opt_ml_model(tmp_path):
    spec = ServingSpec("img", model_dir=tmp_path)
    assert spec.volumes() == {str(tmp_path): {"bind": "/opt/ml/model", "mode": "ro"}}
    assert spec.environment() == {}  # default port 8080: SageMaker sets nothing extra


def test_multi_model_spec_sets_sagemaker_variables(tmp_path):
    spec = ServingSpec("img", port=9000, models={"a": tmp_path}, env={"BYOC_LOG_LEVEL": "DEBUG"})
    assert spec.environment() == {"SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_MULTI_MODEL": "true",
                                  "BYOC_LOG_LEVEL": "DEBUG"}
    assert spec.volumes() == {str(tmp_path): {"bind": "/opt/ml/models/a/model", "mode": "ro"}}


def test_multi_model_directory_extracts_archives_and_names_models(tmp_path):
    source = tmp_path / "models"
    (source / "alpha").mkdir(parents=True)
    (source / "alpha" / "model.joblib").write_bytes(b"a")
    with tarfile.open(source / "beta v2.tar.gz", "w:gz") as tar:
        tar.add(source / "alpha" / "model.joblib", arcname="model.joblib")
    (source / "README.txt").write_text("ignored")

    with multi_model_directories(source) as models:
        assert sorted(models) == ["alpha", "beta-v2"]
        assert (models["beta-v2"] / "model.joblib").read_bytes() == b"a"
        extracted = models["beta-v2"]
    assert not extracted.exists()  # temporary extraction is cleaned up


def test_unsafe_archive_is_refused_before_mounting(tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("model.joblib")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
    with pytest.raises(CliError) as error, model_directory(archive):
        pass
    assert error.value.code == CHECK_FAILED


def test_model_names_are_url_safe():
    assert model_name(Path("my model@1.tar.gz")) == "my-model-1"
    assert model_name(Path("xgb.tgz")) == "xgb"
