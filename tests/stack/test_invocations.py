"""/invocations on the real stack with a scikit-learn model: codecs, negotiation and every error path."""

from __future__ import annotations

import io
import shutil
import time
import zipfile

import joblib
import numpy as np
import orjson
import pytest

from harness import (ENVELOPE, ServeProcess, assert_served_up_to_nginxs_limits, npy, raw_exchange, sparse_npz,
                     train_sklearn_classifier)

from byoc_serve.codecs import MAX_NPZ_EXPANDED_BYTES

ROWS = [[0.5, 1.0, -0.3, 2.0], [-1.0, -2.0, 0.1, 0.0], [2.0, 0.3, 0.0, -1.0]]
GOOD = {"data": "1,2,3,4", "headers": {"Content-Type": "text/csv"}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_sklearn_classifier(tmp_path_factory.mktemp("sk") / "model")


@pytest.fixture(scope="module")
def expected(model_dir):
    model = joblib.load(model_dir / "model.joblib")
    return model.predict(np.array(ROWS)).tolist(), model.predict_proba(np.array(ROWS))


@pytest.fixture(scope="module")
def server(model_dir):
    proc = ServeProcess(model_dir).start()
    yield proc
    proc.stop()
    shutil.rmtree(proc.run_dir, ignore_errors=True)
    proc.log_path.unlink(missing_ok=True)


def post(server, body, content_type, accept=None, **headers):
    headers = {"Content-Type": content_type, **headers}
    if accept:
        headers["Accept"] = accept
    return server.post("/invocations", data=body, headers=headers)


def test_ping_is_200_with_an_empty_body_once_ready(server):
    response = server.get("/ping")
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize(
    "body, content_type",
    [
        (orjson.dumps(ROWS), "application/json"),
        (orjson.dumps({"instances": ROWS}), "application/json"),
        (orjson.dumps({"inputs": ROWS}), "application/json"),
        ("\n".join(",".join(map(str, r)) for r in ROWS) + "\n", "text/csv"),
        ("\n".join(",".join(map(str, r)) for r in ROWS), "text/csv; charset=utf-8"),
        (b"\xef\xbb\xbf" + "\r\n".join(",".join(map(str, r)) for r in ROWS).encode(), "text/csv"),  # Excel's CSV UTF-8
        ("\n".join(",".join(map(str, r)) for r in ROWS).encode("utf-16"), "text/csv; charset=utf-16"),
        (b"\n".join(orjson.dumps(r) for r in ROWS), "application/jsonlines"),
        (npy(ROWS), "application/x-npy"),
    ],
)
def test_every_input_format_gives_the_models_predictions(server, expected, body, content_type):
    response = post(server, body, content_type, accept="application/json")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == expected[0]


def test_npz_input_round_trips(server, expected):
    buf = io.BytesIO()
    np.savez(buf, x=np.array(ROWS))
    response = post(server, buf.getvalue(), "application/x-npz")
    assert response.status_code == 200, response.text
    assert response.json() == expected[0]


@pytest.mark.parametrize(
    "accept, parse",
    [
        ("text/csv", lambda r: [int(float(x)) for x in r.text.split()]),
        ("application/jsonlines", lambda r: [orjson.loads(line) for line in r.text.splitlines()]),
        ("application/x-npy", lambda r: np.load(io.BytesIO(r.content)).tolist()),
        ("text/html;q=0.9, text/csv;q=1.0", lambda r: [int(float(x)) for x in r.text.split()]),
        ("*/*", lambda r: r.json()),
    ],
)
def test_accept_negotiation_picks_the_encoder(server, expected, accept, parse):
    response = post(server, orjson.dumps(ROWS), "application/json", accept=accept)
    assert response.status_code == 200, response.text
    assert parse(response) == expected[0]


def test_unacceptable_accept_is_406_listing_supported_types(server):
    response = post(server, orjson.dumps(ROWS), "application/json", accept="image/png")
    assert response.status_code == 406
    body = response.json()
    assert body["code"] == 406 and body["type"] == "not_acceptable"
    assert "text/csv" in body["error"] and "application/json" in body["error"]
    server.assert_healthy(GOOD)


def test_unknown_content_type_is_415(server):
    response = post(server, b"<x/>", "application/xml")
    assert response.status_code == 415
    assert response.json()["type"] == "unsupported_content_type"
    server.assert_healthy(GOOD)


@pytest.mark.parametrize(
    "body, content_type",
    [(b"[[1, 2,", "application/json"), (b"1,2\n3", "text/csv"), (b"not numpy", "application/x-npy")],
)
def test_malformed_body_is_400_json(server, body, content_type):
    response = post(server, body, content_type)
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "code", "type", "model", "request_id"}
    assert "Traceback" not in response.text
    server.assert_healthy(GOOD)


@pytest.mark.parametrize(
    "body, content_type, reason",
    [
        ("1,2", "text/csv", "X has 2 features, but LogisticRegression is expecting 4 features"),
        ("nan,1,2,3", "text/csv", "Input X contains NaN"),
        ("a,b,c,d", "text/csv", "could not convert string to float: 'a'"),
        (b'"hello"', "application/json", "Expected 2D array, got scalar array instead"),
        (npy(np.ones((1, 4, 2))), "application/x-npy", "Found array with dim 3"),
        (npy(np.ones((0, 4))), "application/x-npy", "Found array with 0 sample(s)"),
        (b"[[null, 1, 2, 3]]", "application/json", "unsupported operand type(s)"),
        (b'[[{"a": 1}, 1, 2, 3]]', "application/json", "unsupported operand type(s)"),
        (npy(np.zeros((1, 4), dtype="M8[s]")), "application/x-npy", "did not contain a loop with signature matching types"),
    ],
    ids=["feature-count", "nan", "strings", "scalar", "3-d", "no-rows", "json-null", "json-object", "datetimes"],
)
def test_input_the_model_rejects_is_400_with_scikit_learns_reason(server, body, content_type, reason):
    response = post(server, body, content_type)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith("scikit-learn rejected the input: ") and reason in error, error
    assert "\n" not in error and "Traceback" not in response.text
    server.assert_healthy(GOOD)


def test_a_sparse_npz_with_indices_outside_the_matrix_is_400_and_no_worker_dies(server):
    workers = server.child_pids()
    body = sparse_npz("csr", (1, 4), data=[1.0], indices=np.array([10**8], np.int32), indptr=np.array([0, 1], np.int32))
    response = post(server, body, "application/x-npz")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "body is not a valid sparse .npz archive: indices must be < 4"
    server.assert_healthy(GOOD)
    assert server.child_pids() == workers  # the worker that decoded it was not replaced (it died of SIGSEGV)


def test_empty_body_is_204(server):
    response = post(server, b"", "text/csv")
    assert response.status_code == 204
    assert response.content == b""
    server.assert_healthy(GOOD)


def test_oversize_body_is_413_json_from_nginx(server):
    response = post(server, b"1," * (3 * 1024 * 1024 + 10), "text/csv")
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["type"] == "payload_too_large"
    server.assert_healthy(GOOD)


def test_npz_that_inflates_past_the_limit_is_413_json(server):
    # A deflated .npz of zeros: ~0.3 MB on the wire, 1 MiB over the limit once inflated.
    values = (MAX_NPZ_EXPANDED_BYTES + (1 << 20)) // 8
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (values,)})
        chunk = bytes(1 << 20)
        for _ in range(values * 8 // len(chunk)):
            member.write(chunk)
    assert len(buffer.getvalue()) < 1 << 20
    response = post(server, buffer.getvalue(), "application/x-npz")
    assert response.status_code == 413, response.text
    assert response.json()["type"] == "payload_too_large" and "expands to" in response.json()["error"]
    server.assert_healthy(GOOD)


@pytest.mark.parametrize(
    "path", ["/admin", "/ping.json", "/_errors/bad_request", "//invocations"], ids=["unknown", "internal", "error-page", "app"]
)
def test_unknown_route_is_json_404(server, path):
    response = server.get(path)
    assert response.status_code == 404
    assert response.json()["code"] == 404 and path in response.json()["error"]
    server.assert_healthy(GOOD)


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_404_names_the_clients_method(server, method):
    """nginx turns a method into GET when it redirects to an error page; the body still says the client's."""
    response = server.request(method, "/ping.json")
    assert response.status_code == 404
    assert response.json()["error"] == f"no route for {method} /ping.json"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_on_ping_get_405_json(server, method):
    response = server.request(method, "/ping")
    assert response.status_code == 405
    assert response.headers["Content-Type"] == "application/json" and response.headers["Allow"] == "GET, HEAD"
    assert response.json()["type"] == "method_not_allowed" and f"{method} /ping" in response.json()["error"]
    assert server.request("HEAD", "/ping").status_code == 200
    server.assert_healthy(GOOD)


@pytest.mark.parametrize(
    "header, status",
    [({"Range": "bytes=5-"}, 416), ({"If-Match": '"x"'}, 412), ({"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}, 412)],
    ids=["range", "if-match", "if-unmodified-since"],
)
def test_a_condition_ping_cannot_meet_gets_json(server, header, status):
    """nginx answers these for /ping, a file it serves, by itself; after a 412 it closes the connection."""
    response = server.get("/ping", headers=header)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Connection"] == ("close" if status == 412 else "keep-alive")
    assert set(response.json()) == ENVELOPE and response.json()["code"] == status
    server.assert_healthy(GOOD)


@pytest.mark.parametrize("method, path", [("GET", "/models"), ("POST", "/models"), ("GET", "/models/a"), ("PUT", "/models/a")])
def test_the_multi_model_api_says_it_is_off(server, method, path):
    response = server.request(method, path)
    assert response.status_code == 404
    assert "SAGEMAKER_MULTI_MODEL=true" in response.json()["error"]
    server.assert_healthy(GOOD)


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(50), 400),  # a TLS hello on the plain port
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Amzn-SageMaker-Custom-Attributes: " + b"a" * 20000 + b"\r\n\r\n", 400),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n", 501),
        (b"GET /ping HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /ping HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    ],
    ids=["not-http", "bad-content-length", "header-too-large", "uri-too-long", "gzip-chunked", "identity", "bogus-coding",
         "http-2.0", "http-9.9"],
)
def test_requests_nginx_cannot_read_get_json_not_html(server, request_bytes, status):
    got, headers, body = raw_exchange(server, request_bytes)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    error = orjson.loads(body)
    assert error["code"] == status and error["error"] and error["request_id"]
    server.assert_healthy(GOOD)


@pytest.mark.parametrize(
    "request_line, status, shown",
    [
        (b"GET /%22", 404, "/%22"),
        (b"GET /%5c", 404, "/%5c"),
        (b"GET /%0a", 404, "/%0a"),
        (b"GET /%01", 404, "/%01"),
        (b"GET /%7F", 404, "/%7F"),
        (b"GET /%ff", 404, "/%ff"),
        (b"GET /\\invocations", 404, None),
        (b"GET /caf\xc3\xa9", 404, None),
        (b'GET /ping.json?"x"', 404, None),
        (b'POST /ping?"x', 405, None),
    ],
)
def test_an_error_naming_the_uri_is_valid_json_whatever_the_uri_holds(server, request_line, status, shown):
    """A %-escape is repeated as sent; a URI with characters RFC 3986 does not allow is not repeated at all."""
    got, headers, body = raw_exchange(server, request_line + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got == status and headers["content-type"] == "application/json"
    error = orjson.loads(body)
    assert set(error) == ENVELOPE and error["code"] == status and error["request_id"]
    assert (shown or "outside RFC 3986") in error["error"], error
    server.assert_healthy(GOOD)


@pytest.mark.parametrize("threads", ["1", "4"], ids=["loop-worker", "gthread"])
def test_a_request_head_nginx_forwards_is_served_by_either_worker(serve_factory, model_dir, threads):
    server = serve_factory(model_dir, {"BYOC_WORKERS": "1", "BYOC_THREADS": threads})
    assert_served_up_to_nginxs_limits(server, "POST", "/invocations", **GOOD)
    server.assert_healthy(GOOD)


@pytest.mark.parametrize("threads", ["1", "4"], ids=["loop-worker", "gthread"])
@pytest.mark.parametrize(
    "head",
    [b"POST /invocations HTTP/1.1\r\nX-Odd: a\x01b\r\n", b"POST /invocations?q=\xff HTTP/1.1\r\n"],
    ids=["control-byte-in-a-header", "raw-byte-in-the-query"],
)
def test_a_head_nginx_forwards_but_a_worker_refuses_gets_the_json_envelope(serve_factory, model_dir, threads, head):
    server = serve_factory(model_dir, {"BYOC_WORKERS": "1", "BYOC_THREADS": threads})
    request = head + b"Host: x\r\nContent-Type: text/csv\r\nContent-Length: 7\r\nConnection: close\r\n\r\n1,2,3,4"
    status, headers, body = raw_exchange(server, request)
    assert headers["content-type"] == "application/json", body
    if status != 200:  # the LoopWorker takes both; gunicorn's gthread parser refuses them
        error = orjson.loads(body)
        assert set(error) == ENVELOPE and error["code"] == status == 400, error
    server.assert_healthy(GOOD)


def test_the_app_answers_with_the_request_id_nginx_logged(server):
    """nginx's $request_id reaches the worker (proxy headers set once for the server), so the app's
    error, its log and nginx's access line name the same request."""
    refused = post(server, b"not,a,number\n", "text/csv")
    assert refused.status_code == 400
    rid = refused.json()["request_id"]
    deadline = time.monotonic() + 5  # the access log is flushed at least once a second
    while f"request_id={rid}" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f'"POST /invocations HTTP/1.1" 400' in server.log() and f"request_id={rid}" in server.log()
    server.assert_healthy(GOOD)


def test_predict_proba_per_request_through_custom_attributes(server, expected):
    response = post(server, orjson.dumps(ROWS), "application/json", **{"X-Amzn-SageMaker-Custom-Attributes": "predict_method=predict_proba"})
    assert response.status_code == 200, response.text
    assert np.allclose(response.json(), expected[1])


def test_unknown_predict_method_is_400(server):
    response = post(server, orjson.dumps(ROWS), "application/json", **{"X-Amzn-SageMaker-Custom-Attributes": "predict_method=fit"})
    assert response.status_code == 400
    server.assert_healthy(GOOD)


def test_execution_parameters_report_defaults(server):
    assert server.get("/execution-parameters").json() == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 6,
    }


def test_predict_proba_from_setting(serve_factory, model_dir, expected):
    server = serve_factory(model_dir, {"BYOC_PREDICT_METHOD": "predict_proba", "BYOC_WORKERS": "1"})
    response = post(server, orjson.dumps(ROWS), "application/json", accept="text/csv")
    assert response.status_code == 200
    rows = [[float(x) for x in line.split(",")] for line in response.text.splitlines()]
    assert np.allclose(rows, expected[1])


def test_batch_mode_gives_one_line_per_record_in_order(serve_factory, model_dir, expected):
    env = {"SAGEMAKER_BATCH": "true", "SAGEMAKER_BATCH_STRATEGY": "multi_record", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
           "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3", "BYOC_PREDICT_METHOD": "predict_proba", "BYOC_WORKERS": "1"}
    server = serve_factory(model_dir, env)
    rows = ROWS * 7
    body = "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    for accept in ("application/json", "text/csv"):
        response = post(server, body, "text/csv", accept=accept)
        assert response.status_code == 200, response.text
        lines = response.text.splitlines()
        assert len(lines) == len(rows)
        parsed = [orjson.loads(line) if accept == "application/json" else [float(x) for x in line.split(",")] for line in lines]
        assert np.allclose(parsed, np.tile(expected[1], (7, 1)))
    assert server.get("/execution-parameters").json() == {
        "MaxConcurrentTransforms": 3, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 20,
    }


DECISION_ATTRIBUTE = {"X-Amzn-SageMaker-Custom-Attributes": "predict_method=decision_function"}
PROBA_ATTRIBUTE = {"X-Amzn-SageMaker-Custom-Attributes": "predict_method=predict_proba"}


def test_decision_function_per_request_through_custom_attributes(server, model_dir, expected):
    decision = joblib.load(model_dir / "model.joblib").decision_function(np.array(ROWS))
    response = post(server, orjson.dumps(ROWS), "application/json", **DECISION_ATTRIBUTE)
    assert response.status_code == 200, response.text
    assert np.allclose(response.json(), decision)
    # The attribute is per request: the next request without it is back to predict().
    assert post(server, orjson.dumps(ROWS), "application/json").json() == expected[0]


def test_decision_function_from_setting(serve_factory, model_dir):
    model = joblib.load(model_dir / "model.joblib")
    server = serve_factory(model_dir, {"BYOC_PREDICT_METHOD": "decision_function", "BYOC_WORKERS": "1"})
    response = post(server, orjson.dumps(ROWS), "application/json")
    assert response.status_code == 200, response.text
    assert np.allclose(response.json(), model.decision_function(np.array(ROWS)))
    assert not np.allclose(response.json(), model.predict(np.array(ROWS)))  # really the scores, not the labels
    # A per-request attribute still wins over the setting.
    proba = post(server, orjson.dumps(ROWS), "application/json", **PROBA_ATTRIBUTE)
    assert np.allclose(proba.json(), model.predict_proba(np.array(ROWS)))


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_model_pkl_serves_the_models_own_predictions(serve_factory, tmp_path, dump):
    """README: scikit-learn `model.pkl`, whether written with pickle.dump or joblib.dump (both are common)."""
    model = joblib.load(train_sklearn_classifier(tmp_path / "fit") / "model.joblib")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    if dump == "pickle":
        import pickle

        (model_dir / "model.pkl").write_bytes(pickle.dumps(model))
    else:
        joblib.dump(model, model_dir / "model.pkl")
    server = serve_factory(model_dir, {"BYOC_WORKERS": "1"})
    response = post(server, orjson.dumps(ROWS), "application/json")
    assert response.status_code == 200, response.text
    assert response.json() == model.predict(np.array(ROWS)).tolist()
    proba = post(server, orjson.dumps(ROWS), "application/json", **PROBA_ATTRIBUTE)
    assert np.allclose(proba.json(), model.predict_proba(np.array(ROWS)))
