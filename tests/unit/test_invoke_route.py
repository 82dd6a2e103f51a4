"""The inference route answers the same through both of its ways in: a LoopWorker's header fields
(``InvokeRoute.respond``) and a WSGI environ (gthread workers, model hosts)."""

import orjson
import pytest

from byoc_serve import http1
from byoc_serve.app import InvokeRoute, ModelSlot
from byoc_serve.config import load_settings
from byoc_serve.servable import Servable
from harness import train_sklearn_classifier


@pytest.fixture(scope="module")
def route(tmp_path_factory):
    model_dir = train_sklearn_classifier(tmp_path_factory.mktemp("sk") / "model")
    settings = load_settings({"BYOC_PREDICT_METHOD": "predict_proba"})
    slot = ModelSlot(Servable.load(model_dir, settings))
    return InvokeRoute("/invocations", slot, fallback=None, max_payload_bytes=settings.max_payload_bytes)


def both_ways(route: InvokeRoute, raw: bytes) -> bytes:
    """The response bytes from each way in; they must be the same."""
    reader = http1.RequestReader(1 << 20)
    reader.feed(raw)
    request = reader.next_request()
    head = request.head
    status, headers, body = route.respond(head.method, head.fields, lambda: request.body)
    direct = http1.response_bytes(status, headers, body, head.keep_alive, head.method == "HEAD")
    via_wsgi, _ = http1.run_app(route, request, keep_alive=True)
    assert direct == via_wsgi
    return direct


def request(method: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} /invocations HTTP/1.1", "Host: w", "X-Request-Id: rid-1", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def test_a_prediction_with_custom_attributes_and_accept(route):
    raw = request("POST", b"1,2,3,4", Content_Type="text/csv", Accept="text/csv",
                  X_Amzn_SageMaker_Custom_Attributes="predict_method=predict")
    response = both_ways(route, raw)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: text/csv" in head
    assert body in (b"0\n", b"1\n")  # predict, not the settings' predict_proba


@pytest.mark.parametrize(
    ("raw", "status", "kind"),
    [
        (request("GET"), b"405", "method_not_allowed"),
        (request("POST", b"1,2", Content_Type="text/csv"), b"400", "bad_request"),
        (request("POST", b"1,2,3,4", Content_Type="image/gif"), b"415", "unsupported_content_type"),
    ],
    ids=["get", "wrong-width", "unknown-type"],
)
def test_refusals_carry_the_envelope_and_the_request_id(route, raw, status, kind):
    head, _, body = both_ways(route, raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status)
    error = orjson.loads(body)
    assert (error["type"], error["request_id"]) == (kind, "rid-1")


def test_an_empty_body_is_204_without_a_length(route):
    response = both_ways(route, request("POST", Content_Type="text/csv"))
    assert response.startswith(b"HTTP/1.1 204") and b"Content-Length" not in response
