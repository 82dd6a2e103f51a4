"""The HTTP server of a model host: ``POST /invoke`` on the model's own unix socket.

nginx cannot keep connections alive to a socket path chosen per request, so every request comes on
a new connection. Each of ``BYOC_THREADS`` threads accepts on the socket and serves the connection
it got, so requests for one model overlap in its process. Requests are framed and answered
with ``byoc_serve.http1``, like a LoopWorker's; werkzeug's development server, used before, parsed
headers with the email package and started a thread per connection.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable

from byoc_serve import http1
from byoc_serve.errors import ServingError

log = logging.getLogger("byoc_serve.mme.host")

BACKLOG = 128
RECV_BYTES = 64 * 1024
DISCARD_S = 1.0  # after an error answer, how long to read (and drop) what the client still sends
QUIET_ERRNOS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)


class HostServer:
    """Accepts on the model's socket and serves each connection in a pool thread."""

    def __init__(self, path: Path, app: Callable[..., Any], threads: int, max_body: int, timeout_s: float):
        self.app = app
        self.max_body = max_body
        self.timeout_s = timeout_s
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        # As root, nginx workers run as another user: they need to be able to connect.
        os.chmod(path, 0o666 if os.geteuid() == 0 else 0o660)
        self.listener.listen(BACKLOG)
        self.threads = threads

    def start(self) -> None:
        """Start the threads, each accepting and serving on its own."""
        for n in range(self.threads):
            threading.Thread(target=self.accept_forever, name=f"byoc-invoke-{n}", daemon=True).start()

    def accept_forever(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                log.exception("accept failed on the model socket")
                os._exit(1)
            self.handle(sock)

    def handle(self, sock: socket.socket) -> None:
        """Answer every request on ``sock`` until the client closes or a response ends the connection."""
        reader = http1.RequestReader(self.max_body)
        with sock:
            sock.settimeout(self.timeout_s)
            try:
                while True:
                    request = reader.next_request()
                    if request is None:
                        if reader.needs_continue():
                            sock.sendall(http1.CONTINUE)
                        data = sock.recv(max(RECV_BYTES, reader.wanted()))
                        if not data:
                            return
                        reader.feed(data)
                        continue
                    response, keep = http1.run_app(self.app, request, keep_alive=True, multithread=True)
                    sock.sendall(response)
                    if not keep:
                        return
            except ServingError as exc:
                refuse(sock, exc)
            except OSError as exc:
                if exc.errno not in QUIET_ERRNOS and not isinstance(exc, TimeoutError):
                    log.exception("socket error on a connection from nginx")
            except Exception:
                log.exception("error answering a request")
                refuse(sock, ServingError("internal error; see the server log"))

    def close(self) -> None:
        self.listener.close()


def refuse(sock: socket.socket, error: ServingError) -> None:
    """Answer with the JSON envelope, then drop what the client still sends until it closes."""
    try:
        sock.sendall(http1.refusal_bytes(error))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(DISCARD_S)
        while sock.recv(RECV_BYTES):
            pass
    except OSError:
        pass
