"""What PyTorch models do with inputs they may not take: cast what the docs promise, 400 for the client's mistakes."""

from __future__ import annotations

import io
import shutil

import numpy as np
import orjson
import pytest

import dl_models
from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest
from byoc_serve.servable import Invocation, Servable
from dl_support import assert_close, npy
from harness import ServeProcess
from model_handlers.base import MAX_REASON_CHARS

SETTINGS = Settings(workers=1, intra_op_threads=1)
ROWS = dl_models.ROWS
TORCH_MODELS = ["torchscript", "torch_export", "torch_state_dict"]
UNDECLARED = ["torchscript", "torch_state_dict"]  # TorchScript and an eager module from model_fn
IDS = np.array([[1, 2], [3, 9]])


def invoke(model: Servable, body: bytes, content_type: str = "application/json"):
    return orjson.loads(model.invoke(Invocation(body, content_type, "application/json")).body)


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    """The exported two-input model, loaded, and its reference."""
    model_dir = tmp_path_factory.mktemp("two-inputs")
    reference = dl_models.torch_export_two_inputs(model_dir)
    return Servable.load(model_dir, SETTINGS), reference


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("embedding")
    return model_dir, dl_models.torchscript_embedding(model_dir)


@pytest.mark.parametrize("name", TORCH_MODELS)
@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"[[1, 2, 3, 4], [1, 2]]", "application/json"),
        (nested(40), "application/json"),
        (b"[0.5, 1, -0.3, 2]\n[1, 2]\n", "application/jsonlines"),
        (b'{"inputs": {"x": [[1, 2, 3, 4], [1]]}}', "application/json"),
    ],
    ids=["ragged", "40_deep", "ragged_jsonlines", "ragged_named"],
)
def test_a_list_that_is_no_array_is_a_400(artifacts, name, body, content_type):
    model = Servable.load(artifacts(name).model_dir, SETTINGS)
    with pytest.raises(BadRequest, match="not an array of numbers: setting an array element with a sequence"):
        invoke(model, body, content_type)
    assert_close(invoke(model, orjson.dumps(ROWS.tolist())), artifacts(name).expected(ROWS))


@pytest.mark.parametrize("name", TORCH_MODELS)
@pytest.mark.parametrize("dtype", [">f4", ">f8", "int64", "int32", "uint8", "bool"])
def test_any_numeric_npy_is_cast_to_the_models_float_dtype(artifacts, name, dtype):
    rows = np.array([[1, 0, 1, 1], [0, 2, 3, 1]]) if dtype in ("uint8", "bool") else ROWS
    rows = rows.astype(dtype)
    answer = invoke(Servable.load(artifacts(name).model_dir, SETTINGS), npy(rows), "application/x-npy")
    assert_close(answer, artifacts(name).expected(rows.astype(np.float32)))


def test_big_endian_npz_members_are_answered(two_inputs):
    model, reference = two_inputs
    offset = np.array([1, 2, 3])
    first, second = invoke(model, npz(features=ROWS.astype(">f8"), offset=offset.astype(">i8")), "application/x-npz")
    expected_first, expected_second = reference(ROWS, offset)
    assert_close(first, expected_first)
    assert_close(second, expected_second)


@pytest.mark.parametrize("dtype", ["int64", "int32", "int16", "uint8", "uint64", ">i8", "bool"])
def test_an_embedding_model_takes_ids_of_any_integer_dtype(embedding_dir, dtype):
    model_dir, reference = embedding_dir
    ids = IDS.astype(dtype)
    assert_close(invoke(Servable.load(model_dir, SETTINGS), npy(ids), "application/x-npy"), reference(ids))


def test_an_embedding_model_takes_json_ids_and_refuses_fractions(embedding_dir):
    model_dir, reference = embedding_dir
    model = Servable.load(model_dir, SETTINGS)
    assert_close(invoke(model, orjson.dumps(IDS.tolist())), reference(IDS))
    for bad in (b"[[1, 2.5]]", b"[[0.5, 1]]"):
        with pytest.raises(BadRequest, match=r"takes whole numbers \(int64\)"):
            invoke(model, bad)


@pytest.mark.parametrize("ids", [b"[[1, 12]]", b"[[-1, 2]]"])
def test_an_id_outside_the_table_is_a_400_once_the_model_has_answered(embedding_dir, ids):
    model_dir, reference = embedding_dir
    model = Servable.load(model_dir, SETTINGS)
    assert_close(invoke(model, orjson.dumps(IDS.tolist())), reference(IDS))
    with pytest.raises(BadRequest, match=r"^PyTorch rejected the input: index out of range in self$"):
        invoke(model, ids)
    assert_close(invoke(model, orjson.dumps(IDS.tolist())), reference(IDS))


def test_a_value_error_a_scripted_model_raises_is_a_400_once_it_has_answered(tmp_path):
    import torch

    class Positive(torch.nn.Module):
        def forward(self, x):
            if bool((x < 0).any()):
                raise ValueError("x must not be negative")
            return x * 2

    torch.jit.save(torch.jit.script(Positive()), str(tmp_path / "model.pt"))
    model = Servable.load(tmp_path, SETTINGS)
    assert invoke(model, b"[[1, 2]]") == [[2.0, 4.0]]
    with pytest.raises(BadRequest, match=r"^PyTorch rejected the input: x must not be negative$"):
        invoke(model, b"[[1, -2]]")


def test_a_batch_size_the_exported_program_refuses_is_a_400_naming_its_guard(two_inputs):
    model, _ = two_inputs
    body = orjson.dumps({"inputs": {"features": ROWS[:2].tolist(), "offset": [1, 2, 3]}})
    with pytest.raises(BadRequest, match=r"Guard failed: offset\.size\(\)\[0\] == features\.size\(\)\[0\]"):
        invoke(model, body)


@pytest.mark.parametrize("name", UNDECLARED)
@pytest.mark.parametrize(
    "body, unknown",
    [
        (orjson.dumps({"inputs": {"nope": ROWS.tolist()}}), "unknown ['nope']"),
        (orjson.dumps({"inputs": {"x": ROWS.tolist(), "extra": [1]}}), "unknown ['extra']"),
        (orjson.dumps({"inputs": {"self": ROWS.tolist()}}), "unknown ['self']"),
        (npz(x=ROWS, y=ROWS), "unknown ['y']"),
    ],
    ids=["wrong_name", "extra_name", "self", "npz_members"],
)
def test_inputs_the_module_does_not_take_are_a_400_naming_them(artifacts, name, body, unknown):
    model = Servable.load(artifacts(name).model_dir, SETTINGS)  # fresh: the check needs no earlier answer
    content_type = "application/x-npz" if body.startswith(b"PK") else "application/json"
    with pytest.raises(BadRequest, match=r"^this model takes inputs \['x'\]; ") as info:
        invoke(model, body, content_type)
    assert unknown in info.value.message
    named = invoke(model, orjson.dumps({"inputs": {"x": ROWS.tolist()}}))
    assert_close(named, artifacts(name).expected(ROWS))


@pytest.mark.parametrize("name", ["torchscript", "torch_export", "onnx_skl2onnx"])
def test_a_listing_of_input_names_is_clipped(artifacts, name):
    model = Servable.load(artifacts(name).model_dir, SETTINGS)
    columns = {f"k{i}": 1 for i in range(20000)}
    for body in (orjson.dumps({"inputs": columns}), orjson.dumps({"instances": [columns, {"a": 1}]})):
        with pytest.raises(BadRequest) as info:
            invoke(model, body)
        assert len(info.value.message) <= MAX_REASON_CHARS, info.value.message[:500]


def test_tf_servings_row_format_feeds_named_inputs(artifacts, two_inputs):
    model, reference = two_inputs
    offset = np.array([1, 2])
    rows = [{"features": row, "offset": int(o)} for row, o in zip(ROWS[:2].tolist(), offset)]
    first, second = invoke(model, orjson.dumps({"instances": rows}))
    expected_first, expected_second = reference(ROWS[:2], offset)
    assert_close(first, expected_first)
    assert_close(second, expected_second)
    scripted = Servable.load(artifacts("torchscript").model_dir, SETTINGS)
    answer = invoke(scripted, orjson.dumps({"instances": [{"x": row} for row in ROWS.tolist()]}))
    assert_close(answer, artifacts("torchscript").expected(ROWS))


def test_an_embedding_model_on_the_stack_answers_ids_and_400s_bad_ones(embedding_dir):
    model_dir, reference = embedding_dir
    server = ServeProcess(model_dir, env={"BYOC_WORKERS": "1"}).start(timeout=120)
    good = {"data": orjson.dumps(IDS.tolist()), "headers": {"Content-Type": "application/json"}}
    try:
        response = server.post("/invocations", **good)
        assert response.status_code == 200, response.text
        assert_close(response.json(), reference(IDS))
        for bad in (b"[[1, 12]]", b"[[1, 2], [3]]", b"[[1.5, 2]]"):
            response = server.post("/invocations", data=bad, headers={"Content-Type": "application/json"})
            assert response.status_code == 400 and response.json()["code"] == 400, response.text
        server.assert_healthy(good)
    finally:
        server.stop()
        shutil.rmtree(server.run_dir, ignore_errors=True)
