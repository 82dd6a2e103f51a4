"""Tiny deep-learning models built for the tests, each in the artifact layout a user would ship.

Every builder returns the model directory and a ``reference(rows)`` function computing the expected
prediction in-process with the framework itself, so served answers are checked against the real thing.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np

from harness import scratch_dir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

Reference = Callable[[np.ndarray], np.ndarray]

N_FEATURES = 4
ROWS = np.array([[0.5, 1.0, -0.3, 2.0], [-1.0, -2.0, 0.1, 0.0], [2.0, 0.3, 0.0, -1.0]], dtype=np.float32)

# The SageMaker PyTorch examples' inference.py, unchanged in spirit: model_fn rebuilds the module and
# loads the state_dict; predict_fn expects a tensor (the toolkit's input_fn gives one).
TORCH_INFERENCE_PY = '''
import os

import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x):
        return torch.softmax(self.out(torch.relu(self.hidden(x))), dim=-1)


def model_fn(model_dir):
    model = Net()
    with open(os.path.join(model_dir, "model.pth"), "rb") as f:
        model.load_state_dict(torch.load(f))
    return model
'''

TORCH_PREDICT_FN = '''

def predict_fn(input_data, model):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.eval()
    with torch.no_grad():
        return model(input_data.to(device))
'''


def torch_net():
    """TORCH_INFERENCE_PY's Net with fixed weights (imported from a real file: torch.jit.script reads the source)."""
    import importlib.util

    import torch

    source = scratch_dir("torch-net-") / "inference_net.py"
    source.write_text(TORCH_INFERENCE_PY)
    spec = importlib.util.spec_from_file_location("inference_net", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.Net().eval()


def _torch_reference(module) -> Reference:
    import torch

    def reference(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.atleast_2d(rows).astype(np.float32))).numpy()

    return reference


def torchscript(model_dir: Path, filename: str = "model.pt") -> Reference:
    import torch

    module = torch_net()
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(model_dir / filename))
    return _torch_reference(module)


def torchscript_embedding(model_dir: Path) -> Reference:
    """TorchScript ``nn.Embedding(10, 3)``: its first parameter is a float table, its input integer ids."""
    import torch

    torch.manual_seed(2)
    module = torch.nn.Embedding(10, 3).eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(model_dir / "model.pt"))

    def reference(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.atleast_2d(ids).astype(np.int64))).numpy()

    return reference


def torch_export(model_dir: Path) -> Reference:
    import torch

    module = torch_net()
    program = torch.export.export(module, (torch.from_numpy(ROWS[:2]),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(model_dir / "model.pt2"))
    return _torch_reference(module)


def _two_input_module():
    """A module with named inputs ``features`` (float) and ``offset`` (int64), and two outputs."""
    import torch

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, features, offset):
            return self.linear(features) + offset.unsqueeze(-1), features.sum(-1)

    torch.manual_seed(1)
    return TwoInputs().eval()


def torch_export_two_inputs(model_dir: Path):
    import torch

    module = _two_input_module()
    batch = torch.export.Dim("batch")
    example = (torch.from_numpy(ROWS[:2]), torch.tensor([1, 2]))
    program = torch.export.export(module, example, dynamic_shapes={"features": {0: batch}, "offset": {0: batch}})
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(model_dir / "model.pt2"))

    def reference(features: np.ndarray, offset: np.ndarray):
        with torch.no_grad():
            first, second = module(torch.from_numpy(features.astype(np.float32)), torch.from_numpy(offset.astype(np.int64)))
        return first.numpy(), second.numpy()

    return reference


def torch_state_dict(model_dir: Path, with_predict_fn: bool = False) -> Reference:
    """SageMaker PyTorch layout: ``model.pth`` (state_dict) + ``code/inference.py`` with model_fn."""
    import torch

    module = torch_net()
    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), model_dir / "model.pth")
    source = TORCH_INFERENCE_PY + (TORCH_PREDICT_FN if with_predict_fn else "")
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(source))
    return _torch_reference(module)


def _tf_module():
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self, seed: int):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([N_FEATURES, 3], seed=[seed, 0]))

        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32, name="features")])
        def serve(self, features):
            logits = tf.matmul(features, self.w)
            return {"scores": tf.nn.softmax(logits), "label": tf.argmax(logits, axis=-1)}

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, N_FEATURES], tf.float32, name="features"),
                tf.TensorSpec([None], tf.int64, name="shift"),
            ]
        )
        def shifted(self, features, shift):
            return {"total": tf.reduce_sum(features, axis=-1) + tf.cast(shift, tf.float32)}

    return Scorer


def saved_model(path: Path, seed: int = 0):
    """A SavedModel with signatures ``serving_default`` (features → scores, label) and ``shifted``."""
    import tensorflow as tf

    module = _tf_module()(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "shifted": module.shifted})

    def reference(rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in module.serve(tf.constant(np.atleast_2d(rows), tf.float32)).items()}

    return reference


def tf_rejecting_models(root: Path) -> None:
    """Three models whose inputs TensorFlow itself can refuse, one per directory under ``root``:
    ``saved_model`` and ``keras`` look up rows of a 10-row table by id (an id over 9 is an
    InvalidArgumentError on CPU), ``examples`` parses serialized tf.Example strings."""
    import keras
    import tensorflow as tf

    class Lookup(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.Variable(tf.random.stateless_normal([10, 3], seed=[0, 0]))

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.int64, name="ids")])
        def serve(self, ids):
            return {"vectors": tf.gather(self.table, ids)}

    class Examples(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            features = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})
            return {"y": features["x"] * 2}

    for name, module in (("saved_model", Lookup()), ("examples", Examples())):
        tf.saved_model.save(module, str(root / name), signatures={"serving_default": module.serve})
    inputs = keras.Input((2,), dtype="int32", name="ids")
    (root / "keras").mkdir(parents=True)
    keras.Model(inputs, keras.layers.Embedding(10, 3)(inputs)).save(root / "keras" / "model.keras")


def keras_file(model_dir: Path):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((N_FEATURES,), name="x")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / "model.keras")
    return lambda rows: model.predict_on_batch(np.atleast_2d(rows).astype(np.float32))


def onnx_lookup(model_dir: Path) -> None:
    """An ONNX graph that gathers rows of a 10-row table by id (``ids`` [batch, 2] → ``vectors``)."""
    import onnx
    from onnx import TensorProto, helper

    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 3], np.arange(30, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 2])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, [None, 2, 3])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))


def onnx_classifier(model_dir: Path, zipmap: bool = False):
    """A LogisticRegression converted with skl2onnx; the reference is scikit-learn's own answer."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(int) + (features[:, 1] > 0).astype(int)
    model = LogisticRegression(max_iter=500).fit(features, labels)
    options = None if zipmap else {"zipmap": False}
    onx = to_onnx(model, features[:1], options=options, target_opset=17)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.onnx").write_bytes(onx.SerializeToString())
    return lambda rows: (model.predict(np.atleast_2d(rows)), model.predict_proba(np.atleast_2d(rows)))


def tf_edge_models(path: Path) -> None:
    """A SavedModel whose signatures stress the handler's edges: ``prefix`` (its input's first 4 bytes,
    which may split a UTF-8 character), ``echo`` (bytes back unchanged), ``length`` (the bytes in all of
    ``data``), ``sums`` (per row and a scalar total of ``x`` [batch, 4]) and ``any_rank`` (``x`` of
    unknown rank, doubled)."""
    import tensorflow as tf

    class Edges(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def prefix(self, text):
            return {"prefix": tf.strings.substr(text, 0, 4)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="data")])
        def echo(self, data):
            return {"data": tf.identity(data)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="data")])
        def length(self, data):
            return {"bytes": tf.reduce_sum(tf.strings.length(data))}

        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32, name="x")])
        def sums(self, x):
            return {"rows": tf.reduce_sum(x, -1), "total": tf.reduce_sum(x)}

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
        def any_rank(self, x):
            return {"doubled": x * 2}

    module = Edges()
    signatures = {name: getattr(module, name) for name in ("prefix", "echo", "length", "sums", "any_rank")}
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.sums, **signatures})


def onnx_strings(model_dir: Path) -> None:
    """An ONNX graph that answers its string input ``text`` [batch] unchanged."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))
