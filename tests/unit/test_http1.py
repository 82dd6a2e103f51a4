"""HTTP/1.1 framing in a LoopWorker: whole requests out of a byte stream, refusals, environ, responses."""

from __future__ import annotations

import pytest

from byoc_serve.errors import BadRequest, PayloadTooLarge, ServingError
from byoc_serve.http1 import RequestReader, response_bytes, wsgi_environ

LIMIT = 1000
NGINX_REQUEST = (
    b"POST /invocations HTTP/1.1\r\nHost: app\r\nX-Request-Id: abc\r\nContent-Length: 7\r\n"
    b"Content-Type: text/csv\r\nAccept: text/csv\r\n\r\n1,2,3,4"
)


def read_all(data: bytes, limit: int = LIMIT) -> list:
    reader = RequestReader(limit)
    reader.feed(data)
    requests = []
    while (request := reader.next_request()) is not None:
        requests.append(request)
    return requests


def test_a_request_as_nginx_sends_it():
    [request] = read_all(NGINX_REQUEST)
    head = request.head
    assert (head.method, head.target, head.version, head.keep_alive) == ("POST", "/invocations", "HTTP/1.1", True)
    assert request.body == b"1,2,3,4"
    assert (head.fields["x-request-id"], head.length) == ("abc", 7)


def test_a_repeated_header_is_one_field_and_a_repeated_equal_length_is_one_length():
    [request] = read_all(b"POST / HTTP/1.1\r\nAccept: a\r\nAccept: b\r\nContent-Length: 2\r\nContent-Length: 02\r\n\r\nok")
    assert request.head.fields["accept"] == "a,b"
    assert request.body == b"ok"


def test_bytes_arriving_one_at_a_time_make_one_request_once_whole():
    reader = RequestReader(LIMIT)
    seen = []
    for i in range(len(NGINX_REQUEST)):
        reader.feed(NGINX_REQUEST[i : i + 1])
        request = reader.next_request()
        seen.append(request)
    assert all(r is None for r in seen[:-1]) and seen[-1].body == b"1,2,3,4"


def test_the_reader_asks_for_the_rest_of_a_long_body_at_once():
    reader = RequestReader(LIMIT)
    reader.feed(b"POST / HTTP/1.1\r\nContent-Length: 500\r\n\r\n" + b"x" * 100)
    assert reader.next_request() is None
    assert reader.wanted() == 400


def test_pipelined_requests_come_out_in_order_and_nothing_is_lost():
    second = NGINX_REQUEST.replace(b"1,2,3,4", b"5,6,7,8")
    requests = read_all(NGINX_REQUEST + second + b"GET /ping HTTP/1.1\r\n\r\n")
    assert [r.body for r in requests] == [b"1,2,3,4", b"5,6,7,8", b""]
    assert requests[2].head.method == "GET"


def test_a_chunked_body_with_extensions_and_trailers_split_anywhere():
    raw = (
        b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;name=value\r\n1,2,\r\n3\r\n3,4\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /next HTTP/1.1\r\n\r\n"
    )
    for split in range(1, len(raw)):
        reader = RequestReader(LIMIT)
        reader.feed(raw[:split])
        first = reader.next_request()
        reader.feed(raw[split:])
        first = first or reader.next_request()
        assert first.body == b"1,2,3,4", split
        assert reader.next_request().head.target == "/next", split


def test_a_declared_length_over_the_limit_is_refused_before_the_body_arrives():
    reader = RequestReader(LIMIT)
    reader.feed(b"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n")
    with pytest.raises(PayloadTooLarge):
        reader.next_request()


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit():
    reader = RequestReader(LIMIT)
    reader.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1f4\r\n" + b"x" * 500 + b"\r\n")
    assert reader.next_request() is None
    reader.feed(b"1f5\r\n")  # only the size line of a chunk that would pass 1000 bytes
    with pytest.raises(PayloadTooLarge):
        reader.next_request()


@pytest.mark.parametrize(
    "raw",
    [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: \xb3\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost : x\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\nContent-Length: 3\r\n\r\n",
        b"POST x HTTP/1.1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
    ],
    ids=["not-http", "two-lengths", "a-list-of-two-lengths", "length-and-chunked", "signed-length", "non-ascii-digit", "space-before-colon",
         "folded-header", "bare-lf", "relative-target", "bad-chunk-size", "chunk-without-crlf"],
)
def test_anything_that_could_be_framed_two_ways_is_a_400(raw):
    with pytest.raises(BadRequest):
        read_all(raw)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000, 431),
    ],
)
def test_what_a_worker_cannot_read_gets_its_own_status(raw, status):
    with pytest.raises(ServingError) as caught:
        read_all(raw)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("version", "connection", "keep"),
    [("HTTP/1.1", None, True), ("HTTP/1.1", "close", False), ("HTTP/1.0", None, False), ("HTTP/1.0", "Keep-Alive", True),
     ("HTTP/1.1", "keep-alive\r\nConnection: close", False), ("HTTP/1.1", "close\r\nConnection: keep-alive", False)],
)
def test_whether_the_connection_stays_open(version, connection, keep):
    header = f"Connection: {connection}\r\n" if connection else ""
    [request] = read_all(f"GET / {version}\r\n{header}\r\n".encode())
    assert request.head.keep_alive is keep


def test_a_repeated_expect_continue_is_still_expected():
    reader = RequestReader(LIMIT)
    reader.feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
    assert reader.next_request() is None and reader.needs_continue()


def test_expect_continue_is_answered_once_before_the_body():
    reader = RequestReader(LIMIT)
    reader.feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert reader.next_request() is None
    assert reader.needs_continue() is True
    assert reader.needs_continue() is False
    reader.feed(b"abc")
    assert reader.next_request().body == b"abc"


def test_the_environ_is_what_a_wsgi_app_expects():
    raw = (
        b"POST /models/a%20b/invoke?x=1 HTTP/1.1\r\nHost: example:8080\r\nContent-Type: text/csv\r\n"
        b"Accept: a\r\nAccept: b\r\nX_Spoofed: 1\r\nX-Amzn-SageMaker-Custom-Attributes: k=v\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    [request] = read_all(raw)
    environ = wsgi_environ(request)
    assert environ["PATH_INFO"] == "/models/a b/invoke" and environ["QUERY_STRING"] == "x=1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example", "8080")
    assert environ["CONTENT_TYPE"] == "text/csv" and environ["CONTENT_LENGTH"] == "3"
    assert environ["HTTP_ACCEPT"] == "a,b"
    assert environ["HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"] == "k=v"
    assert "HTTP_X_SPOOFED" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["wsgi.input"].read() == b"abc"


def test_a_chunked_body_reaches_the_app_with_its_decoded_length():
    [request] = read_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    assert wsgi_environ(request)["CONTENT_LENGTH"] == "2"


def test_a_response_is_framed_by_its_length_and_says_when_the_connection_ends():
    kept = response_bytes("200 OK", [("Content-Type", "text/csv")], b"0.5\n", keep_alive=True, head_only=False)
    assert kept == b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 4\r\n\r\n0.5\n"
    closed = response_bytes("200 OK", [("Content-Length", "4")], b"0.5\n", keep_alive=False, head_only=True)
    assert closed == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
    assert b"Content-Length" not in response_bytes("204 No Content", [], b"", keep_alive=True, head_only=False)
