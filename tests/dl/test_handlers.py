"""PyTorch, TensorFlow/Keras and ONNX handlers through the in-process pipeline (select → load → warm-up → invoke)."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import sys
from dataclasses import replace

import numpy as np
import orjson
import pytest

import dl_models
from byoc_serve import memory
from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest, ModelFailure, NotAcceptable
from byoc_serve.selection import HandlerUnavailable, select_handler
from byoc_serve.servable import Invocation, Servable
from dl_support import BUILDERS, assert_close, npy
from model_handlers.devices import import_framework
from model_handlers.onnx import OnnxHandler
from model_handlers.pytorch import PyTorchHandler
from model_handlers.tensorflow import TensorFlowHandler, find_saved_model

SETTINGS = Settings(workers=1, intra_op_threads=1)
ROWS = dl_models.ROWS
EXPECTED_HANDLER = {
    "torchscript": "pytorch",
    "torchscript_pth": "pytorch",
    "torch_export": "pytorch",
    "torch_state_dict": "user_code+pytorch",
    "torch_state_dict_predict_fn": "user_code+pytorch",
    "saved_model": "tensorflow",
    "saved_model_versioned": "tensorflow",
    "saved_model_named_versioned": "tensorflow",
    "keras": "tensorflow",
    "onnx_skl2onnx": "onnx",
    "onnx_skl2onnx_zipmap": "onnx",
}
_loaded: dict[str, Servable] = {}


def servable(artifacts, name: str, settings: Settings = SETTINGS) -> Servable:
    if settings is not SETTINGS:
        return Servable.load(artifacts(name).model_dir, settings)
    if name not in _loaded:
        _loaded[name] = Servable.load(artifacts(name).model_dir, SETTINGS)
    return _loaded[name]


def invoke(model: Servable, body: bytes, content_type: str, accept: str = "application/json"):
    result = model.invoke(Invocation(body, content_type, accept))
    if result.content_type == "application/x-npy":
        return np.load(io.BytesIO(result.body), allow_pickle=False)
    return orjson.loads(result.body)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("rows", [ROWS[:1], ROWS], ids=["single_row", "batch"])
@pytest.mark.parametrize("content_type", ["application/json", "application/x-npy"])
def test_model_answers_like_its_framework(artifacts, name, rows, content_type):
    model = servable(artifacts, name)
    body = orjson.dumps(rows.tolist()) if content_type == "application/json" else npy(rows)
    assert_close(invoke(model, body, content_type), artifacts(name).expected(rows))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_handler_is_chosen_from_the_artifacts(artifacts, name):
    assert servable(artifacts, name).handler.name == EXPECTED_HANDLER[name]


@pytest.mark.parametrize("name", ["torchscript", "torch_export", "torch_state_dict", "keras"])
def test_single_output_model_answers_npy(artifacts, name):
    answer = invoke(servable(artifacts, name), npy(ROWS), "application/x-npy", accept="application/x-npy")
    assert isinstance(answer, np.ndarray) and answer.shape == (3, 3)
    assert_close(answer, artifacts(name).expected(ROWS))


@pytest.mark.parametrize("name", ["torchscript", "torch_export", "saved_model", "keras", "onnx_skl2onnx"])
def test_one_unbatched_row_gains_a_batch_dimension(artifacts, name):
    answer = invoke(servable(artifacts, name), orjson.dumps(ROWS[0].tolist()), "application/json")
    assert_close(answer, artifacts(name).expected(ROWS[:1]))


@pytest.mark.parametrize(
    "name, source",
    [
        ("torch_export", "from signature"),
        ("saved_model", "from signature"),
        ("keras", "from signature"),
        ("onnx_skl2onnx", "from signature"),
        ("torchscript", "none available"),
    ],
)
def test_warm_up_input_is_built_from_the_signature(artifacts, name, source):
    model = servable(artifacts, name)
    assert model.warm_up() == source


def test_warm_up_prefers_the_artifacts_own_sample(artifacts, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(artifacts("torchscript").model_dir, model_dir)
    (model_dir / "code").mkdir()
    (model_dir / "code" / "warmup.json").write_text("[[1, 2, 3, 4]]")
    model = Servable.load(model_dir, SETTINGS)
    assert model.warm_up() == "code/warmup.json"
    with pytest.raises(BadRequest, match=r"got \(batch, 3\)"):  # the warm-up answered (batch, 4)
        invoke(model, b"[[1, 2, 3]]", "application/json")


# ------------------------------------------------------------------------------------------ PyTorch


def test_state_dict_without_model_fn_fails_naming_model_fn(tmp_path):
    import torch

    tmp_path.mkdir(exist_ok=True)
    torch.save(dl_models.torch_net().state_dict(), tmp_path / "model.pth")
    with pytest.raises(ModelFailure, match="model_fn"):
        Servable.load(tmp_path, SETTINGS)


def test_exported_program_takes_named_inputs_in_their_own_dtypes(tmp_path):
    reference = dl_models.torch_export_two_inputs(tmp_path)
    model = Servable.load(tmp_path, SETTINGS)
    offset = np.array([1, 2, 3])
    body = orjson.dumps({"inputs": {"offset": offset.tolist(), "features": ROWS.tolist()}})
    first, second = invoke(model, body, "application/json")
    expected_first, expected_second = reference(ROWS, offset)
    assert_close(first, expected_first)
    assert_close(second, expected_second)


def test_exported_program_rejects_wrong_feature_count_with_400(artifacts):
    with pytest.raises(BadRequest, match=r"shape \(batch, 4\)"):
        invoke(servable(artifacts, "torch_export"), b"[[1, 2, 3]]", "application/json")


@pytest.mark.parametrize("name", ["torchscript", "torch_state_dict"])
def test_module_without_declared_shapes_rejects_a_shape_it_has_not_answered_with_400(artifacts, name):
    model = servable(artifacts, name, replace(SETTINGS))  # a fresh one: nothing answered yet
    # Before any answer there is no telling the input's fault from the model's.
    with pytest.raises(ModelFailure):
        invoke(model, b"[[1, 2, 3]]", "application/json")
    good = invoke(model, orjson.dumps(ROWS[:2].tolist()), "application/json")
    with pytest.raises(BadRequest, match=r"mat1 and mat2 shapes cannot be multiplied .*answered inputs of shape \(batch, 4\); got \(batch, 3\)"):
        invoke(model, b"[[1, 2, 3]]", "application/json")
    assert invoke(model, orjson.dumps(ROWS[:2].tolist()), "application/json") == good


def test_exported_program_with_two_inputs_rejects_a_plain_array(tmp_path):
    dl_models.torch_export_two_inputs(tmp_path)
    with pytest.raises(BadRequest, match="named inputs"):
        invoke(Servable.load(tmp_path, SETTINGS), b"[[1, 2, 3, 4]]", "application/json")


def test_user_predict_fn_receives_a_float_tensor(artifacts):
    import torch

    model = servable(artifacts, "torch_state_dict_predict_fn")
    data = model.handler.decode(b"[[1, 2, 3, 4]]", "application/json", model.context)
    assert isinstance(data, torch.Tensor) and data.dtype == torch.float32
    as_npy = model.handler.decode(npy(np.array([[1, 2, 3, 4]], dtype=np.float64)), "application/x-npy", model.context)
    assert as_npy.dtype == torch.float64  # NPY keeps its dtype, as in the SageMaker toolkit; predict casts it


def test_eager_module_in_training_mode_is_put_in_eval_mode(artifacts):
    module = dl_models.torch_net().train()
    PyTorchHandler().predict(module, ROWS, servable(artifacts, "torchscript").context)
    assert module.training is False


def test_tuple_and_dict_outputs_become_arrays():
    from model_handlers.pytorch import to_numpy
    import torch

    single = to_numpy((torch.ones(2, 3),))
    assert isinstance(single, np.ndarray) and single.shape == (2, 3)
    pair = to_numpy((torch.ones(2), torch.zeros(2, dtype=torch.bfloat16)))
    assert [a.dtype for a in pair] == [np.float32, np.float32]
    named = to_numpy({"a": torch.ones(1)})
    assert isinstance(named["a"], np.ndarray)


# --------------------------------------------------------------------------------------- TensorFlow


def test_versioned_saved_model_serves_the_highest_numeric_version(artifacts):
    model_dir = artifacts("saved_model_versioned").model_dir
    assert find_saved_model(model_dir) == model_dir / "10"
    assert find_saved_model(artifacts("saved_model_named_versioned").model_dir).parts[-2:] == ("my_model", "3")


def test_saved_model_outputs_map_to_a_json_object(artifacts):
    answer = invoke(servable(artifacts, "saved_model"), orjson.dumps({"inputs": {"features": ROWS.tolist()}}), "application/json")
    assert sorted(answer) == ["label", "scores"]
    assert_close(answer, artifacts("saved_model").expected(ROWS))


def test_saved_model_with_two_outputs_cannot_answer_npy(artifacts):
    with pytest.raises(NotAcceptable, match="application/json"):
        invoke(servable(artifacts, "saved_model"), npy(ROWS), "application/x-npy", accept="application/x-npy")


def test_tf_signature_setting_chooses_the_signature(artifacts):
    model = servable(artifacts, "saved_model", replace(SETTINGS, tf_signature="shifted"))
    body = orjson.dumps({"inputs": {"features": ROWS.tolist(), "shift": [1, 2, 3]}})
    assert_close(invoke(model, body, "application/json"), ROWS.sum(axis=1) + [1, 2, 3])


def test_tf_serving_row_format_names_the_inputs_in_every_instance(artifacts):
    model = servable(artifacts, "saved_model", replace(SETTINGS, tf_signature="shifted"))
    rows = orjson.dumps({"instances": [{"shift": shift, "features": row} for row, shift in zip(ROWS.tolist(), [1, 2, 3])]})
    assert_close(invoke(model, rows, "application/json"), ROWS.sum(axis=1) + [1, 2, 3])
    with pytest.raises(BadRequest, match=r"every instance must name the same inputs; the first names \['features', 'shift'\]"):
        invoke(model, orjson.dumps({"instances": [{"features": ROWS[0].tolist(), "shift": 1}, {"features": ROWS[1].tolist()}]}), "application/json")
    single = servable(artifacts, "saved_model")
    named = orjson.dumps({"instances": [{"features": row} for row in ROWS.tolist()]})
    assert invoke(single, named, "application/json") == invoke(single, orjson.dumps(ROWS.tolist()), "application/json")


def test_tfserving_response_setting_answers_in_tensorflow_servings_form(artifacts):
    tfserving = replace(SETTINGS, tf_response="tfserving")
    plain = invoke(servable(artifacts, "saved_model"), orjson.dumps(ROWS.tolist()), "application/json")
    model = servable(artifacts, "saved_model", tfserving)
    rows = [{"scores": scores, "label": label} for scores, label in zip(plain["scores"], plain["label"])]
    for body, content_type in ((orjson.dumps({"instances": ROWS.tolist()}), "application/json"),
                               (orjson.dumps(ROWS.tolist()), "application/json"),
                               ("\n".join(",".join(map(str, row)) for row in ROWS.tolist()).encode(), "text/csv")):
        assert invoke(model, body, content_type) == {"predictions": rows}
    for columnar in ({"inputs": {"features": ROWS.tolist()}}, {"signature_name": "serving_default", "inputs": {"features": ROWS.tolist()}}):
        assert invoke(model, orjson.dumps(columnar), "application/json") == {"outputs": plain}
    shifted = servable(artifacts, "saved_model", replace(tfserving, tf_signature="shifted"))
    total = (ROWS.sum(axis=1) + [1, 2, 3]).tolist()
    answer = invoke(shifted, orjson.dumps({"inputs": {"features": ROWS.tolist(), "shift": [1, 2, 3]}}), "application/json")
    assert_close(answer["outputs"], total)
    answer = invoke(shifted, orjson.dumps({"instances": [{"features": r, "shift": s} for r, s in zip(ROWS.tolist(), [1, 2, 3])]}), "application/json")
    assert_close(answer["predictions"], total)
    other = Invocation(npy(ROWS), "application/x-npy", accept="application/jsonlines")  # not JSON: as before
    assert model.invoke(other).body == servable(artifacts, "saved_model").invoke(other).body


def test_a_request_may_name_the_signature_served_and_no_other(artifacts):
    model = servable(artifacts, "saved_model")
    plain = invoke(model, orjson.dumps({"instances": ROWS.tolist()}), "application/json")
    named = orjson.dumps({"signature_name": "serving_default", "instances": ROWS.tolist()})
    assert invoke(model, named, "application/json") == plain
    with pytest.raises(BadRequest, match=r"serves signature 'serving_default' \(BYOC_TF_SIGNATURE\); the request asks for 'shifted'"):
        invoke(model, orjson.dumps({"signature_name": "shifted", "inputs": {"features": ROWS.tolist()}}), "application/json")


def test_unknown_tf_signature_fails_listing_the_ones_there(artifacts):
    with pytest.raises(ModelFailure, match="serving_default, shifted"):
        Servable.load(artifacts("saved_model").model_dir, replace(SETTINGS, tf_signature="nope"))


def test_missing_named_input_is_a_400_naming_it(artifacts):
    model = servable(artifacts, "saved_model", replace(SETTINGS, tf_signature="shifted"))
    with pytest.raises(BadRequest, match=r"missing \['shift'\]"):
        invoke(model, orjson.dumps({"inputs": {"features": ROWS.tolist()}}), "application/json")


def test_wrong_feature_count_is_a_400_for_saved_models_and_keras(artifacts):
    for name in ("saved_model", "keras"):
        with pytest.raises(BadRequest, match=r"shape \(batch, 4\)"):
            invoke(servable(artifacts, name), b"[[1, 2]]", "application/json")


def test_an_input_tensorflow_rejects_is_a_400_with_its_reason(tmp_path):
    """TensorFlow Serving answers INVALID_ARGUMENT with a 400; so do we, with the line that says why."""
    import tensorflow as tf

    dl_models.tf_rejecting_models(tmp_path)
    for name in ("saved_model", "keras"):
        model = Servable.load(tmp_path / name, SETTINGS)
        assert np.shape(invoke(model, b"[[1, 9]]", "application/json")) == (1, 2, 3)
        with pytest.raises(BadRequest, match=r"^TensorFlow rejected the input: indices\[0,1\] = 50 is not in \[0, 10\)$") as info:
            invoke(model, b"[[1, 50]]", "application/json")
        assert isinstance(info.value.__cause__, tf.errors.InvalidArgumentError)
    model = Servable.load(tmp_path / "examples", SETTINGS)
    example = tf.train.Example(features=tf.train.Features(feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[1.5]))}))
    encoded = {"b64": base64.b64encode(example.SerializeToString()).decode()}
    for good in ({"instances": [encoded]}, {"instances": [{"examples": encoded}]}):  # a bare value, a named one
        assert invoke(model, orjson.dumps(good), "application/json") == [[3.0]]
    with pytest.raises(BadRequest, match=r"^TensorFlow rejected the input: Could not parse example input, value: 'garbage'$"):
        invoke(model, orjson.dumps({"instances": ["garbage"]}), "application/json")


def test_keras_model_is_traced_for_any_batch_size_at_load(artifacts):
    model = Servable.load(artifacts("keras").model_dir, SETTINGS)
    traced = model.model.predict_function.experimental_get_tracing_count()
    for rows in (1, 64, 5):
        invoke(model, npy(np.zeros((rows, 4), np.float32)), "application/x-npy")
    assert model.model.predict_function.experimental_get_tracing_count() == traced


def test_string_inputs_and_outputs_round_trip(tmp_path):
    import tensorflow as tf

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"upper": tf.strings.upper(text)}

    module = Echo()
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": module.serve})
    model = Servable.load(tmp_path, SETTINGS)
    assert model.warm_up() == "none available"
    assert invoke(model, orjson.dumps({"instances": ["ab", "c"]}), "application/json") == ["AB", "C"]
    assert invoke(model, orjson.dumps({"instances": ["é", {"b64": "YQBi"}]}), "application/json") == ["é", "A\x00B"]  # upper() is ASCII-only
    for bad, reason in (([1, 2], "takes strings"), ([{"b64": "a?"}], "not base64")):
        with pytest.raises(BadRequest, match=reason):
            invoke(model, orjson.dumps({"instances": bad}), "application/json")


def test_keras_model_with_a_string_input_loads_and_answers(tmp_path):
    import keras

    words = keras.Input((1,), dtype="string", name="word")
    keras.Model(words, keras.layers.StringLookup(vocabulary=["a", "b", "é"])(words)).save(tmp_path / "model.keras")
    model = Servable.load(tmp_path, SETTINGS)
    assert invoke(model, orjson.dumps([["a"], ["é"], ["zz"]]), "application/json") == [[1], [3], [0]]


# --------------------------------------------------------------------------------------------- ONNX


def test_zipmap_probabilities_equal_the_plain_tensor_ones(artifacts):
    plain = invoke(servable(artifacts, "onnx_skl2onnx"), orjson.dumps(ROWS.tolist()), "application/json")
    zipped = invoke(servable(artifacts, "onnx_skl2onnx_zipmap"), orjson.dumps(ROWS.tolist()), "application/json")
    assert_close(zipped["output_probability"], plain["probabilities"])
    assert zipped["output_label"] == plain["label"]


def test_an_input_onnx_runtime_rejects_is_a_400_with_its_reason(tmp_path):
    dl_models.onnx_lookup(tmp_path)
    model = Servable.load(tmp_path, SETTINGS)
    assert invoke(model, b"[[1, 2]]", "application/json") == [[[3, 4, 5], [6, 7, 8]]]
    with pytest.raises(BadRequest, match=r"^ONNX Runtime rejected the input: indices element out of data bounds, idx=50 must be within the inclusive range \[-10,9\]$"):
        invoke(model, b"[[1, 50]]", "application/json")


def test_onnx_named_input_and_wrong_name(artifacts):
    model = servable(artifacts, "onnx_skl2onnx")
    answer = invoke(model, orjson.dumps({"inputs": {"X": ROWS.tolist()}}), "application/json")
    assert_close(answer, artifacts("onnx_skl2onnx").expected(ROWS))
    with pytest.raises(BadRequest, match=r"unknown \['x'\]"):
        invoke(model, orjson.dumps({"inputs": {"x": ROWS.tolist()}}), "application/json")


# ------------------------------------------------------------------------------ devices and extras


@pytest.mark.parametrize("name, framework", [("torchscript", "torch"), ("keras", "tensorflow"), ("onnx_skl2onnx", "onnxruntime")])
def test_load_logs_device_and_threads(artifacts, caplog, name, framework):
    import model_handlers.devices as devices

    devices._configured.discard({"torch": "torch", "tensorflow": "tensorflow", "onnxruntime": "onnx"}[framework])
    with caplog.at_level(logging.INFO, logger="byoc_serve.devices"):
        Servable.load(artifacts(name).model_dir, SETTINGS)
    assert f"{framework} device=cpu intra_op_threads=1 inter_op_threads=1" in caplog.text


@pytest.mark.parametrize("name", ["torchscript", "saved_model", "onnx_skl2onnx"])
def test_cuda_setting_fails_clearly_without_a_gpu(artifacts, name):
    with pytest.raises(ModelFailure, match="BYOC_DEVICE=cuda but .* sees no CUDA device"):
        Servable.load(artifacts(name).model_dir, replace(SETTINGS, device="cuda"))


def test_missing_framework_names_the_extra(artifacts, monkeypatch):
    monkeypatch.setattr(PyTorchHandler, "requires", "torch_is_not_installed_here")
    with pytest.raises(HandlerUnavailable, match=r"pip install 'byoc-serve\[torch\]'"):
        select_handler(artifacts("torchscript").model_dir, replace(SETTINGS, handler="pytorch"))
    with pytest.raises(BadRequest, match=r"byoc-serve\[torch\]"):
        select_handler(artifacts("torchscript").model_dir, SETTINGS)


def test_import_framework_error_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'byoc-serve\[onnx\]'"):
        import_framework("onnxruntime_is_not_installed_here", "onnx")


def test_handler_modules_and_sniffing_import_no_framework(artifacts):
    """Importing the handlers and asking every one whether it can load a model imports no DL framework."""
    dirs = [str(artifacts(name).model_dir) for name in ("torchscript", "saved_model", "onnx_skl2onnx")]
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from model_handlers.pytorch import PyTorchHandler\n"
        "from model_handlers.tensorflow import TensorFlowHandler\n"
        "from model_handlers.onnx import OnnxHandler\n"
        f"for d in {dirs!r}:\n"
        "    [h().can_load(Path(d)) for h in (PyTorchHandler, TensorFlowHandler, OnnxHandler)]\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'onnxruntime') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_estimate_bytes_scales_the_artifact_size_by_the_measured_factor(artifacts):
    def size(name: str) -> int:
        return sum(p.stat().st_size for p in artifacts(name).model_dir.rglob("*") if p.is_file())

    for name, handler in [("torch_export", PyTorchHandler()), ("saved_model", TensorFlowHandler()), ("onnx_skl2onnx", OnnxHandler())]:
        assert handler.estimate_bytes(artifacts(name).model_dir) == int(size(name) * handler.memory_factor) > size(name)
    keras = TensorFlowHandler().estimate_bytes(artifacts("keras").model_dir)
    assert keras == int(size("keras") * TensorFlowHandler.keras_memory_factor) > 5 * size("keras")
    # The multi-model admission estimate (nothing loaded yet, the handler sniffed) asks the handler too.
    assert memory.estimate_bytes(artifacts("keras").model_dir, Settings()) == (keras, "tensorflow")


def test_serving_a_sklearn_model_imports_no_deep_learning_framework(tmp_path):
    """The whole in-process pipeline (selection sniffs every handler, load, warm-up, invoke), then sys.modules."""
    from harness import train_sklearn_classifier

    model_dir = train_sklearn_classifier(tmp_path / "model")
    script = (
        "import sys\n"
        "from byoc_serve.config import Settings\n"
        "from byoc_serve.servable import Invocation, Servable\n"
        f"model = Servable.load({str(model_dir)!r}, Settings())\n"
        "assert model.handler.name == 'sklearn', model.handler.name\n"
        "assert model.invoke(Invocation(b'1,2,3,4', 'text/csv', 'application/json')).body in (b'[0]', b'[1]')\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'onnxruntime') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
