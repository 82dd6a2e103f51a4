"""HTTP/1.1 as a worker sees it from nginx: requests framed out of a byte stream, a WSGI environ for
each, and the bytes of a response.

gunicorn's own parser and response object were ~37 % of a one-thread worker's CPU on a one-row
request (regular expressions per header, a generator per body, header checks on the way out);
without them the worker spends 0.13–0.16 ms less per request. nginx sends one whole, already-validated request at a time with a Content-Length, so a few
``bytes`` operations read it. Anything else that reaches a worker's socket (pipelined or chunked
requests, garbage) is still framed correctly or refused with a ``ServingError``.
"""

from __future__ import annotations

import io
import re
import sys
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

from typing import Any, Callable

from byoc_serve.errors import BadRequest, PayloadTooLarge, ServingError, envelope_bytes

MAX_HEAD_BYTES = 64 * 1024  # nginx's own limit (large_client_header_buffers 4 × 8k) is far below
MAX_CHUNK_LINE_BYTES = 1024
TOKEN_CHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
TOKEN = re.compile(TOKEN_CHARS)
# One C-level match admits a head only if every line is well formed: a token method, an origin or
# asterisk target, HTTP/1.0 or 1.1, then token-named headers, with no CR or LF other than the
# separators. Checking line by line in Python cost ~2 µs more of a one-row request in a worker.
WELL_FORMED_HEAD = re.compile(
    TOKEN_CHARS + r" [/*][^ \r\n]* HTTP/1\.[01](?:\r\n" + TOKEN_CHARS + r":[^\r\n]*)*"
)
HEX = re.compile(r"[0-9A-Fa-f]+")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_BODY_STATUSES = (204, 304)
REASONS = {status.value: status.phrase for status in HTTPStatus}


@dataclass
class Head:
    """A request line and its header fields by lower-case name (a repeated header's values joined
    with commas, as in a WSGI environ)."""

    method: str
    target: str
    version: str
    fields: dict[str, str]
    length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    expects_continue: bool = False


@dataclass
class Request:
    head: Head
    body: bytes


def parse_head(raw: bytes | bytearray, max_body: int) -> Head:
    """Parse the bytes before the blank line; refuse anything that could be framed two ways."""
    text = raw.decode("latin-1")
    if WELL_FORMED_HEAD.fullmatch(text) is None:
        raise _malformed(text)
    lines = text.split("\r\n")
    method, target, version = lines[0].split(" ")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.lower(), value.strip(" \t")
        fields[name] = f"{fields[name]},{value}" if name in fields else value
    head = Head(method, target, version, fields, keep_alive=version == "HTTP/1.1")
    _frame(head, max_body)
    return head


def _malformed(text: str) -> ServingError:
    """What is wrong with a request head that ``WELL_FORMED_HEAD`` does not match."""
    lines = text.split("\r\n")
    separators = len(lines) - 1
    if text.count("\n") != separators or text.count("\r") != separators:
        return BadRequest("a bare CR or LF in the request head")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or parts[1][:1] not in ("/", "*"):
        return BadRequest("malformed request line")
    if parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return ServingError(f"{parts[2][:16]} is not supported", status=505, kind="http_version_not_supported")
    return BadRequest("malformed header line")


def _frame(head: Head, max_body: int) -> None:
    """Set how the body is framed and whether the connection stays open, from the header fields."""
    fields = head.fields
    coding = fields.get("transfer-encoding")
    if coding is not None:
        if _tokens(coding) != {"chunked"}:
            raise ServingError(f"Transfer-Encoding {coding[:32]} is not supported", status=501, kind="not_implemented")
        head.chunked = True
    length = fields.get("content-length")
    if length is not None:
        head.length = int(length) if length.isascii() and length.isdigit() else _repeated_length(length)
        if head.chunked:
            raise BadRequest("the body's length is given more than one way")
        if head.length > max_body:
            raise PayloadTooLarge(f"the body is larger than the {max_body}-byte limit")
    connection = fields.get("connection")
    if connection is not None:
        tokens = _tokens(connection)
        if "close" in tokens:
            head.keep_alive = False
        elif "keep-alive" in tokens:
            head.keep_alive = True
    head.expects_continue = "expect" in fields and "100-continue" in _tokens(fields["expect"])


def _repeated_length(value: str) -> int:
    """The length from a Content-Length sent more than once: every value must be the same number."""
    lengths = set()
    for item in value.split(","):
        item = item.strip(" \t")
        if not (item.isascii() and item.isdigit()):
            raise BadRequest("Content-Length is not a number")
        lengths.add(int(item))
    if len(lengths) > 1:
        raise BadRequest("the body's length is given more than one way")
    return lengths.pop()


def _tokens(value: str) -> set[str]:
    return {token.strip(" \t").lower() for token in value.split(",")}


@dataclass
class RequestReader:
    """Splits one connection's byte stream into whole requests; keeps what is left for the next call."""

    max_body: int
    buffer: bytearray = field(default_factory=bytearray)
    head: Head | None = None
    chunks: list[bytes] = field(default_factory=list)
    chunked_size: int = 0
    in_trailers: bool = False

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def wanted(self) -> int:
        """How many more bytes the request being read needs at least (0 when unknown)."""
        if self.head is None or self.head.length is None:
            return 0
        return max(0, self.head.length - len(self.buffer))

    def next_request(self) -> Request | None:
        """The next whole request, or None until more bytes arrive."""
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise ServingError("the request head is too large", status=431, kind="headers_too_large")
                return None
            self.head = parse_head(self.buffer[:end], self.max_body)
            del self.buffer[: end + 4]
        head = self.head
        if head.chunked:
            if not self._read_chunks():
                return None
            body = b"".join(self.chunks)
            self.chunks, self.chunked_size, self.in_trailers = [], 0, False
        else:
            length = head.length or 0
            if len(self.buffer) < length:
                return None
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
        self.head = None
        return Request(head, body)

    def needs_continue(self) -> bool:
        """True once, when the client waits for ``100 Continue`` before it sends the body."""
        if self.head is not None and self.head.expects_continue:
            self.head.expects_continue = False
            return True
        return False

    def _read_chunks(self) -> bool:
        """Move whole chunks out of the buffer; True once the last chunk and its trailers are in."""
        buffer = self.buffer
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_CHUNK_LINE_BYTES:
                    raise BadRequest("malformed chunked body")
                return False
            if self.in_trailers:
                del buffer[: end + 2]
                if end == 0:
                    return True
                continue
            size_text = bytes(buffer[:end]).split(b";", 1)[0].strip().decode("latin-1")
            if not HEX.fullmatch(size_text):
                raise BadRequest("malformed chunk size")
            size = int(size_text, 16)
            if self.chunked_size + size > self.max_body:
                raise PayloadTooLarge(f"the body is larger than the {self.max_body}-byte limit")
            if size == 0:
                del buffer[: end + 2]
                self.in_trailers = True
                continue
            if len(buffer) < end + 4 + size:
                return False
            if buffer[end + 2 + size : end + 4 + size] != b"\r\n":
                raise BadRequest("malformed chunked body")
            self.chunks.append(bytes(buffer[end + 2 : end + 2 + size]))
            self.chunked_size += size
            del buffer[: end + 4 + size]


def wsgi_environ(request: Request, remote_addr: str = "", multithread: bool = False) -> dict:
    """The PEP 3333 environ for ``request``; the body is already whole in ``wsgi.input``."""
    head = request.head
    path, _, query = head.target.partition("?")
    environ = {
        "REQUEST_METHOD": head.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, "latin-1") if "%" in path else path,
        "QUERY_STRING": query,
        "RAW_URI": head.target,
        "REQUEST_URI": head.target,
        "SERVER_PROTOCOL": head.version,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": remote_addr,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if head.length is not None or head.chunked:
        environ["CONTENT_LENGTH"] = str(len(request.body))
    for name, value in head.fields.items():
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name == "content-length" or "_" in name:
            continue  # an underscore would let a header pose as another one (nginx drops them too)
        else:
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    host = environ.get("HTTP_HOST")
    if host:
        name, colon, port = host.rpartition(":")
        if colon and port.isdigit():
            environ["SERVER_NAME"], environ["SERVER_PORT"] = name, port
        else:
            environ["SERVER_NAME"] = host
    return environ


def response_bytes(status: str, headers: list[tuple[str, str]], body: bytes, keep_alive: bool, head_only: bool) -> bytes:
    """Status line, headers and body in one buffer: Content-Length added when missing, and
    ``Connection: close`` when the connection ends with this response."""
    lines = [f"HTTP/1.1 {status}"]
    has_length = False
    for name, value in headers:
        if name.lower() == "content-length":
            has_length = True
        lines.append(f"{name}: {value}")
    if not has_length and int(status[:3]) not in NO_BODY_STATUSES:
        lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    lines.append("\r\n")
    out = "\r\n".join(lines).encode("latin-1")
    return out if head_only else out + body


def run_app(app: Callable[..., Any], request: Request, keep_alive: bool, multithread: bool = False) -> tuple[bytes, bool]:
    """Call the WSGI ``app`` for ``request``: the response's bytes, and whether the connection stays
    open after it (the client asked to, and so does ``keep_alive``)."""
    started: list = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.append

    result = app(wsgi_environ(request, multithread=multithread), start_response)
    try:
        body = b"".join([*written, *result])
    finally:
        if hasattr(result, "close"):
            result.close()
    status, headers = started
    keep = request.head.keep_alive and keep_alive
    return response_bytes(status, headers, body, keep, request.head.method == "HEAD"), keep


def refusal_bytes(error: ServingError) -> bytes:
    """The JSON envelope answering a request that cannot be read; the connection ends after it."""
    headers = [("Content-Type", "application/json")]
    return response_bytes(status_line(error.status), headers, envelope_bytes(error), False, False)


def status_line(status: int) -> str:
    """``"404 Not Found"``: the status as WSGI's ``start_response`` takes it."""
    return f"{status} {REASONS.get(status, 'Error')}"
