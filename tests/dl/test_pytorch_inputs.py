"""What PyTorch models do with inputs they may not take: cast what the docs promise, 400 for the client's mistakes."""

from __future__ import annotations

import orjson
import pytest

from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest
from byoc_serve.servable import Invocation, Servable
from model_handlers.base import MAX_REASON_CHARS

SETTINGS = Settings(workers=1, intra_op_threads=1)


def invoke(model: Servable, body: bytes, content_type: str = "application/json"):
    return orjson.loads(model.invoke(Invocation(body, content_type, "application/json")).body)


@pytest.mark.parametrize("name", ["torch_export", "onnx_skl2onnx"])
def test_a_listing_of_input_names_is_clipped(artifacts, name):
    model = Servable.load(artifacts(name).model_dir, SETTINGS)
    columns = {f"k{i}": 1 for i in range(20000)}
    for body in (orjson.dumps({"inputs": columns}), orjson.dumps({"instances": [columns, {"a": 1}]})):
        with pytest.raises(BadRequest) as info:
            invoke(model, body)
        assert len(info.value.message) <= MAX_REASON_CHARS, info.value.message[:500]