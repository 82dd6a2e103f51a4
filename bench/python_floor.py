"""The Python floor for bench/serving.py: the least a Python process behind nginx can do per request.

One process, one thread: a selector loop over a unix socket that nginx proxies to with keep-alive,
requests framed by Content-Length only, and for each one our in-process pipeline
(``Servable.invoke``) — no gunicorn, no WSGI, no error handling, no second worker. It starts the
nginx given after ``--`` in its own process group and stops it on SIGTERM.

    python bench/python_floor.py SOCKET MODEL_DIR -- nginx -c CONF
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path

from byoc_serve.config import load_settings
from byoc_serve.servable import Invocation, Servable


def answer(servable: Servable, request: bytes) -> bytes:
    head, _, body = request.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if body:
        result = servable.invoke(Invocation(body, headers.get("content-type"), accept=headers.get("accept")))
        out, content_type = result.body, result.content_type
    else:
        out, content_type = b"", "text/plain"  # the readiness probe's GET
    return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (content_type.encode(), len(out), out)


def serve(path: Path, servable: Servable) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o777)  # nginx workers started as root run as another user
    listener.listen(128)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                selector.register(conn, selectors.EVENT_READ)
                pending[conn] = b""
                continue
            conn = key.fileobj
            try:
                pending[conn] = answer_all(servable, conn, pending[conn])
            except (EOFError, OSError):  # nginx closed it: idle, or its client left mid-request
                selector.unregister(conn)
                conn.close()
                del pending[conn]


def answer_all(servable: Servable, conn: socket.socket, buffer: bytes) -> bytes:
    """Read once, answer every whole request, return what is left of the next one."""
    # 64 KiB as a LoopWorker reads: glibc often served a 1 MiB buffer with mmap + mremap + munmap.
    data = conn.recv(1 << 16)
    if not data:
        raise EOFError
    buffer += data
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        length = 0
        for line in buffer[:end].split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(buffer) < end + 4 + length:
            break
        conn.sendall(answer(servable, buffer[: end + 4 + length]))
        buffer = buffer[end + 4 + length :]
    return buffer


def main() -> None:
    sock_path, model_dir, nginx_argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[4:]
    settings = load_settings({"BYOC_MODEL_DIR": str(model_dir), "BYOC_PREDICT_METHOD": "predict_proba"})
    servable = Servable.load(model_dir, settings)
    sock_path.unlink(missing_ok=True)
    nginx = subprocess.Popen(nginx_argv)

    def stop(signum: int, frame: object) -> None:
        nginx.terminate()
        nginx.wait(timeout=10)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    serve(sock_path, servable)


if __name__ == "__main__":
    main()
