"""TensorFlow, Keras and ONNX inputs a client can get wrong, and outputs JSON cannot carry as they are."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

import dl_models
from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest, NotAcceptable
from byoc_serve.servable import Invocation, Servable
from dl_support import npy

SETTINGS = Settings(workers=1, intra_op_threads=1)
ROWS = dl_models.ROWS
_loaded: dict[tuple[Path, Settings], Servable] = {}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The models of these tests, one directory each."""
    root = tmp_path_factory.mktemp("inputs")
    dl_models.tf_rejecting_models(root)
    dl_models.tf_edge_models(root / "edges")
    dl_models.onnx_lookup(root / "onnx")
    dl_models.onnx_strings(root / "onnx_strings")
    dl_models.saved_model(root / "scorer")
    return root


def served(model_dir: Path, **settings) -> Servable:
    key = (model_dir, replace(SETTINGS, **settings))
    if key not in _loaded:
        _loaded[key] = Servable.load(*key)
    return _loaded[key]


def invoke(model: Servable, body: bytes, content_type: str = "application/json"):
    return orjson.loads(model.invoke(Invocation(body, content_type, "application/json")).body)


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


# ---------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("name, dtype", [("saved_model", "int64"), ("keras", "int32"), ("onnx", "int64")])
@pytest.mark.parametrize("ids", [[2**63, 1], [2**64 - 1, 1], [2**64, 1], [-(2**64), 1]])
def test_ids_beyond_int64_are_a_400_naming_the_input_and_its_dtype(root, name, dtype, ids):
    model = served(root / name)
    for body in ({"instances": [{"ids": ids}]}, {"inputs": {"ids": [ids]}}, [ids]):
        with pytest.raises(BadRequest, match=rf"^input 'ids' .*{dtype}"):
            invoke(model, json.dumps(body).encode())  # orjson cannot write integers beyond 64 bits
    assert np.shape(invoke(model, b"[[1, 9]]")) == (1, 2, 3)  # and the model still answers


@pytest.mark.parametrize(
    "name, body, content_type",
    [
        ("keras", b'{"inputs": {"ids": [[4294967297, 1]]}}', "application/json"),  # was id 1's vector
        ("keras", b'{"inputs": {"ids": [[1099511627776, 1]]}}', "application/json"),  # was id 0's
        ("keras", npy(np.array([[8589934595, 1]], np.int64)), "application/x-npy"),  # was id 3's
        ("keras", b"[[1.5, 2]]", "application/json"),  # was id 1's
        ("saved_model", npy(np.array([[2**63, 1]], np.uint64)), "application/x-npy"),
        ("saved_model", npy(np.array([[np.nan, 1]])), "application/x-npy"),
        ("onnx", npy(np.array([[2.5, 1]])), "application/x-npy"),
    ],
)
def test_ids_a_cast_would_change_are_a_400_not_another_ids_answer(root, name, body, content_type):
    with pytest.raises(BadRequest, match=r"^input 'ids' .*int(32|64)"):
        invoke(served(root / name), body, content_type)


@pytest.mark.parametrize("name", ["saved_model", "keras", "onnx"])
def test_whole_numbers_in_range_are_cast_whatever_their_type(root, name):
    model = served(root / name)
    expected = invoke(model, b"[[1, 9]]")
    for body, content_type in ((b"1,9", "text/csv"), (npy(np.array([[1.0, 9.0]])), "application/x-npy"),
                               (npy(np.array([[1, 9]], np.uint64)), "application/x-npy"), (b"[[1.0, 9.0]]", "application/json")):
        assert invoke(model, body, content_type) == expected


def test_a_float_beyond_float32_or_a_fraction_for_an_integer_is_a_400(root):
    model = served(root / "scorer", tf_signature="shifted")
    features = ROWS[:1].tolist()
    with pytest.raises(BadRequest, match=r"^input 'shift' .*int64"):  # answered -9.22e18
        invoke(model, orjson.dumps({"inputs": {"features": features, "shift": [1.5]}}))
    with pytest.raises(BadRequest, match=r"^input 'shift' .*int64"):
        invoke(model, orjson.dumps({"inputs": {"features": features, "shift": [1e300]}}))
    with pytest.raises(BadRequest, match=r"^input 'features' .*float32"):  # would be inf
        invoke(model, orjson.dumps({"inputs": {"features": [[1.0, 2.0, 3.0, 1e300]], "shift": [1]}}))
    assert invoke(model, orjson.dumps({"inputs": {"features": [[1, 2, 3, 4]], "shift": [1.0]}})) == [11.0]
    infinite = npy(np.array([1.0, np.inf]))  # infinity is a float32 value: passed as it is
    assert invoke(served(root / "edges", tf_signature="any_rank"), infinite, "application/x-npy") == [2.0, None]


def test_a_signature_of_unknown_rank_takes_any_shape(root):
    model = served(root / "edges", tf_signature="any_rank")
    assert invoke(model, b"5") == 10
    assert invoke(model, b"[1, 2, 3]") == [2, 4, 6]
    assert invoke(model, b"[[[1], [2]]]") == [[[2], [4]]]


# ---------------------------------------------------------------------------------------- strings


def test_a_corrupt_serialized_example_is_a_400_with_tensorflows_reason(root):
    model = served(root / "examples")
    with pytest.raises(BadRequest, match=r"^TensorFlow rejected the input: Could not parse example input, value: '\\xff\\xfe"):
        invoke(model, orjson.dumps({"instances": [b64(b"\xff\xfe\x00garbage")]}))
    with pytest.raises(BadRequest, match=r"^TensorFlow rejected the input: Could not parse example input, value: 'hello'$"):
        invoke(model, orjson.dumps(["hello"]))


def test_string_outputs_that_are_not_utf8_come_back_as_b64(root):
    prefix = served(root / "edges", tf_signature="prefix")
    assert invoke(prefix, orjson.dumps(["日本語", "abcdef"])) == [b64("日本語".encode()[:4]), "abcd"]
    echo = served(root / "edges", tf_signature="echo")
    assert invoke(echo, orjson.dumps([b64(b"\xff\xfe\xfd\xfc"), "ok", b64(b"a\x00")])) == [b64(b"\xff\xfe\xfd\xfc"), "ok", "a\x00"]
    assert invoke(echo, npy(np.array([b"\xff\xfe", b"ab"])), "application/x-npy") == [b64(b"\xff\xfe"), "ab"]  # numpy bytes too
    assert invoke(echo, npy(np.array(["é"])), "application/x-npy") == ["é"]
    with pytest.raises(NotAcceptable, match="ask for application/json"):
        echo.invoke(Invocation(orjson.dumps(["ok"]), "application/json", "application/x-npy"))


ONNX_STRING_INPUTS = [[1, 2], [None], [True], [{"b64": "not base64?"}], [["a"], ["b", "c"]], [{"text": "a"}, "b"]]


@pytest.mark.parametrize("bad", ONNX_STRING_INPUTS, ids=["numbers", "null", "bool", "bad_b64", "ragged", "object"])
def test_onnx_string_inputs_take_strings_only_as_tensorflow_does(root, bad):
    with pytest.raises(BadRequest, match="input 'text'"):
        invoke(served(root / "onnx_strings"), orjson.dumps({"inputs": {"text": bad}}))


def test_onnx_string_inputs_take_text_b64_and_numpy_strings(root):
    model = served(root / "onnx_strings")
    assert invoke(model, orjson.dumps(["a", "é"])) == ["a", "é"]
    assert invoke(model, orjson.dumps([b64("héllo".encode())])) == ["héllo"]
    assert invoke(model, npy(np.array([b"ab", "é".encode()])), "application/x-npy") == ["ab", "é"]
    assert invoke(model, npy(np.array(["é", "x"])), "application/x-npy") == ["é", "x"]
    # onnxruntime keeps strings as text: bytes that are not UTF-8 cannot reach it
    with pytest.raises(BadRequest, match=r"^input 'text' takes UTF-8 text"):
        invoke(model, orjson.dumps([b64(b"\xff\xfe")]))
    with pytest.raises(BadRequest, match=r"^string inputs take UTF-8 text"):
        invoke(model, npy(np.array([b"\xff\xfe"])), "application/x-npy")
    with pytest.raises(BadRequest, match=r"^input 'text' takes text, which holds no NUL"):  # answered "a"
        invoke(model, npy(np.array([b"a\x00b"])), "application/x-npy")


def test_numpy_string_arrays_reach_the_framework_without_a_python_object_per_value():
    """30M one-byte strings as Python bytes objects were 1.2 GB of a worker for a 30 KB .npz body."""
    from model_handlers.onnx import OnnxInput, _feed
    from model_handlers.tensorflow import TensorSpec, _array

    for array in (np.zeros(1000, "S1"), np.array(["é"] * 1000)):
        assert _array(TensorSpec("text", (None,), np.dtype(object)), array) is array
        fed = _feed(OnnxInput("text", (None,), np.object_), array)
        assert fed.dtype == array.dtype or fed.dtype == "S2"  # bytes one NUL wider: onnxruntime reads C strings


# ------------------------------------------------------------------------------- TensorFlow Serving


def test_row_format_answer_with_an_unbatched_output_is_tf_servings_400(root):
    model = served(root / "edges", tf_response="tfserving")
    with pytest.raises(BadRequest, match=r"'total' has no batch dimension.*\{\"inputs\": \.\.\.\}"):
        invoke(model, b"[[1, 2, 3, 4], [5, 6, 7, 8]]")
    assert invoke(model, b'{"inputs": [[1, 2, 3, 4], [5, 6, 7, 8]]}') == {"outputs": {"rows": [10, 26], "total": 36}}
    assert invoke(served(root / "edges"), b"[[1, 2, 3, 4], [5, 6, 7, 8]]") == {"rows": [10, 26], "total": 36}
    from model_handlers.tensorflow import _rows

    with pytest.raises(BadRequest, match=r"output 'b' has 3 rows, the others 2"):  # zip cut it to 2
        _rows({"a": np.zeros(2), "b": np.zeros(3)})


@pytest.mark.parametrize(
    "prefix, encoding, content_type",
    [(b"\xef\xbb\xbf", "utf-8", "application/json"), (b"", "utf-16", "application/json; charset=utf-16")],
    ids=["utf8_bom", "utf16"],
)
def test_signature_name_is_read_whatever_the_json_encoding(root, prefix, encoding, content_type):
    def body(value: dict) -> bytes:
        return prefix + json.dumps(value).encode(encoding)

    features = ROWS.tolist()
    plain = invoke(served(root / "scorer"), orjson.dumps({"inputs": {"features": features}}))
    assert invoke(served(root / "scorer"), body({"signature_name": "serving_default", "inputs": {"features": features}}), content_type) == plain
    with pytest.raises(BadRequest, match="the request asks for 'shifted'"):
        invoke(served(root / "scorer"), body({"signature_name": "shifted", "inputs": {"features": features}}), content_type)
    tfserving = served(root / "scorer", tf_response="tfserving")
    assert invoke(tfserving, body({"signature_name": "serving_default", "inputs": {"features": features}}), content_type) == {"outputs": plain}
