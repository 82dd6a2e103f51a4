"""code/inference.py hooks on the real stack: toolkit-style scripts must work unchanged."""

from __future__ import annotations

import textwrap

import joblib
import numpy as np
import orjson

from harness import train_sklearn_classifier

ROWS = [[0.5, 1.0, -0.3, 2.0], [-1.0, -2.0, 0.1, 0.0]]

# The shape of the SageMaker scikit-learn examples' inference.py, untouched.
TOOLKIT_SCRIPT = '''
import json
import os

import joblib
import numpy as np


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(request_body, request_content_type):
    if request_content_type == "application/json":
        return np.array(json.loads(request_body)["features"])
    raise ValueError("unsupported content type " + request_content_type)


def predict_fn(input_data, model):
    return model.predict_proba(input_data)


def output_fn(prediction, content_type):
    return json.dumps({"probabilities": prediction.tolist()})
'''

TRANSFORM_SCRIPT = '''
import json


def model_fn(model_dir, context):
    return {"offset": 10, "model_dir": context.system_properties["model_dir"]}


def transform_fn(model, request_body, content_type, accept, context):
    values = json.loads(request_body)
    context.set_response_custom_attributes("echo=" + (context.custom_attributes or ""))
    return json.dumps([v + model["offset"] for v in values]), "application/json"
'''

ERROR_SCRIPT = '''
from byoc_serve.errors import InferenceError


class ToolkitStyleError(Exception):
    """Like sagemaker_inference.errors.BaseInferenceToolkitError: a status_code attribute."""

    def __init__(self, status_code, message, phrase):
        super().__init__(message)
        self.status_code, self.message, self.phrase = status_code, message, phrase


def input_fn(body, content_type):
    if body.strip() == "teapot":
        raise ToolkitStyleError(418, "I am a teapot", "teapot")
    if body.strip() == "forbidden":
        raise InferenceError(422, "the features are out of range")
    return [[float(x) for x in body.split(",")]]
'''


def write_model(tmp_path, script: str, with_sklearn: bool = True):
    model_dir = tmp_path / "model"
    if with_sklearn:
        train_sklearn_classifier(model_dir)
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(script))
    return model_dir


def test_unmodified_toolkit_inference_script(serve_factory, tmp_path):
    server = serve_factory(write_model(tmp_path, TOOLKIT_SCRIPT))

    def post_features():
        return server.post("/invocations", data=orjson.dumps({"features": ROWS}), headers={"Content-Type": "application/json"})

    response = post_features()
    assert response.status_code == 200, response.text
    model = joblib.load(tmp_path / "model" / "model.joblib")
    assert np.allclose(response.json()["probabilities"], model.predict_proba(np.array(ROWS)))
    # The script's own ValueError for a type it refuses is a 500, as in the toolkit, with no traceback
    # in the body; the server keeps serving.
    refused = server.post("/invocations", data="1,2,3,4", headers={"Content-Type": "text/csv"})
    assert refused.status_code == 500 and refused.json()["type"] == "model_error", refused.text
    assert "unsupported content type" not in refused.text and "Traceback" not in refused.text
    # The traceback is in the log, under the request id the body names.
    assert "unsupported content type text/csv" in server.log() and refused.json()["request_id"] in server.log()
    assert server.get("/ping").status_code == 200
    assert np.allclose(post_features().json()["probabilities"], model.predict_proba(np.array(ROWS)))
    # input_fn gets the text without the byte order mark some Windows tools write (json.loads refuses one).
    with_bom = server.post("/invocations", data=b"\xef\xbb\xbf" + orjson.dumps({"features": ROWS}), headers={"Content-Type": "application/json"})
    assert with_bom.status_code == 200, with_bom.text


def test_transform_fn_with_context_and_custom_attribute_echo(serve_factory, tmp_path):
    server = serve_factory(write_model(tmp_path, TRANSFORM_SCRIPT, with_sklearn=False))
    response = server.post(
        "/invocations",
        data="[1, 2, 3]",
        headers={"Content-Type": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "trace=abc"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == [11, 12, 13]
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == "echo=trace=abc"


def test_user_errors_keep_their_status(serve_factory, tmp_path):
    server = serve_factory(write_model(tmp_path, ERROR_SCRIPT))
    teapot = server.post("/invocations", data="teapot", headers={"Content-Type": "text/csv"})
    assert teapot.status_code == 418
    assert teapot.json()["error"] == "I am a teapot"
    forbidden = server.post("/invocations", data="forbidden", headers={"Content-Type": "text/csv"})
    assert forbidden.status_code == 422
    assert forbidden.json() == {**forbidden.json(), "error": "the features are out of range", "code": 422}
    # predict_fn and output_fn fall back to the scikit-learn handler's defaults.
    good = server.post("/invocations", data="1,2,3,4", headers={"Content-Type": "text/csv"})
    model = joblib.load(tmp_path / "model" / "model.joblib")
    assert good.status_code == 200 and good.json() == model.predict(np.array([[1.0, 2, 3, 4]])).tolist()
    assert server.get("/ping").status_code == 200


def test_transform_fn_with_other_hooks_fails_start_up_naming_the_phase(tmp_path):
    from harness import ServeProcess

    script = TRANSFORM_SCRIPT + "\ndef input_fn(body, content_type):\n    return body\n"
    server = ServeProcess(write_model(tmp_path, script)).start(wait_ready=False)
    try:
        assert server.proc.wait(30) != 0
        assert "FATAL start-up failed in phase=handler" in server.log()
    finally:
        server.stop()


# Toolkit contract: input_fn, predict_fn and output_fn may each take a trailing context; each shows what it got.
CONTEXT_HOOKS_SCRIPT = '''
import json

import joblib
import numpy as np


def input_fn(request_body, content_type, context):
    return {"rows": np.array(json.loads(request_body)), "input_saw": context.custom_attributes}


def predict_fn(data, model, context):
    return {**data, "proba": model.predict_proba(data["rows"]), "predict_saw": str(context.model_dir)}


def output_fn(prediction, accept, context):
    context.set_response_custom_attributes("rows=%d" % len(prediction["rows"]))
    return json.dumps({
        "proba": prediction["proba"].tolist(),
        "input_saw": prediction["input_saw"],
        "predict_saw": prediction["predict_saw"],
        "output_saw": context.system_properties["model_dir"],
    }), "application/json"
'''


def test_input_predict_and_output_fn_each_receive_the_context(serve_factory, tmp_path):
    model_dir = write_model(tmp_path, CONTEXT_HOOKS_SCRIPT)
    server = serve_factory(model_dir, {"BYOC_WORKERS": "1"})
    response = server.post(
        "/invocations",
        data=orjson.dumps(ROWS),
        headers={"Content-Type": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "tenant=a7"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["input_saw"] == "tenant=a7"
    assert body["predict_saw"] == body["output_saw"] == str(model_dir)
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == "rows=2"
    # model_fn was left out: the scikit-learn handler loaded the model predict_fn was given.
    model = joblib.load(model_dir / "model.joblib")
    assert np.allclose(body["proba"], model.predict_proba(np.array(ROWS)))
    # Each request gets its own context: no attribute now, and none carried over from the last request.
    plain = server.post("/invocations", data=orjson.dumps(ROWS[:1]), headers={"Content-Type": "application/json"})
    assert plain.status_code == 200, plain.text
    assert plain.json()["input_saw"] is None
    assert plain.headers["X-Amzn-SageMaker-Custom-Attributes"] == "rows=1"


NAMED_OUTPUTS_SCRIPT = '''
def predict_fn(data, model):
    return {"label": model.predict(data), "proba": model.predict_proba(data)}
'''


def test_batch_named_outputs_give_one_json_line_per_record(serve_factory, tmp_path):
    model_dir = write_model(tmp_path, NAMED_OUTPUTS_SCRIPT)
    server = serve_factory(model_dir, {"BYOC_WORKERS": "1", "SAGEMAKER_BATCH": "true"})
    rows = [[0.5, 1.0, -0.3, 2.0], [-1.0, -2.0, 0.1, 0.0], [2.0, 0.3, 0.0, -1.0]]
    body = "".join(",".join(map(str, row)) + "\n" for row in rows)
    response = server.post("/invocations", data=body, headers={"Content-Type": "text/csv", "Accept": "application/json"})
    assert response.status_code == 200, response.text
    model = joblib.load(model_dir / "model.joblib")
    records = [orjson.loads(line) for line in response.content.splitlines()]
    assert [record["label"] for record in records] == model.predict(np.array(rows)).tolist()
    assert np.allclose([record["proba"] for record in records], model.predict_proba(np.array(rows)))
