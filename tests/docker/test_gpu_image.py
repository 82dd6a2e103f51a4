"""The GPU image in its pytriton-wheel form: in-process serving passes smoke, and its tritonserver
(with the python backend) runs a model, ready for the Triton backend."""

from __future__ import annotations

import time

import pytest
import requests

from byoc_serve.cli import main
from byoc_serve.cli.container import free_port

pytestmark = pytest.mark.docker

TRITON_MODEL_CONFIG = """
backend: "python"
max_batch_size: 8
input [{ name: "X", data_type: TYPE_FP32, dims: [2] }]
output [{ name: "Y", data_type: TYPE_FP32, dims: [1] }]
"""
TRITON_MODEL_CODE = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy().sum(axis=1, keepdims=True))])
            for r in requests]
"""


def test_gpu_image_carries_labels_and_size_is_reported(docker_client, gpu_image):
    image = docker_client.images.get(gpu_image)
    print(f"\n{gpu_image} (pytriton-wheel, FRAMEWORKS=sklearn,xgboost): {image.attrs['Size'] / 1e6:.0f} MB")
    assert image.labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert image.labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"


def test_gpu_image_passes_smoke_single_model(gpu_image, models):
    assert main(["smoke", gpu_image, str(models.sklearn), "--startup-timeout", "120"]) == 0


def test_gpu_image_passes_smoke_multi_model(gpu_image, models):
    assert main(["smoke", gpu_image, str(models.mme), "--multi-model", "--startup-timeout", "120"]) == 0


def test_gpu_image_tritonserver_serves_python_backend_model_as_user_1000(docker_client, gpu_image, tmp_path):
    model = tmp_path / "repo" / "add"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(TRITON_MODEL_CONFIG)
    (model / "1" / "model.py").write_text(TRITON_MODEL_CODE)
    for path in [tmp_path / "repo", model, model / "1"]:
        path.chmod(0o755)
    http, grpc, metrics = free_port(), free_port(), free_port()
    box = docker_client.containers.run(
        gpu_image, entrypoint=["/opt/tritonserver/bin/tritonserver"], user="1000", network_mode="host", detach=True,
        command=["--model-repository=/models", "--backend-directory=/opt/tritonserver/backends",
                 f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
                 "--model-control-mode=explicit", "--load-model=add"],
        volumes={str(tmp_path / "repo"): {"bind": "/models", "mode": "ro"}})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{http}/v2/models/add/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.25)
        else:
            pytest.fail("tritonserver did not get ready:\n" + box.logs(tail=40).decode())
        answer = requests.post(f"http://127.0.0.1:{http}/v2/models/add/infer", timeout=10, json={
            "inputs": [{"name": "X", "shape": [2, 2], "datatype": "FP32", "data": [1.5, 2, 3, 4]}]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [3.5, 7.0]
    finally:
        box.remove(force=True)
