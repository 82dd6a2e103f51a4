"""A single-threaded gunicorn worker that keeps nginx's upstream connections alive.

gunicorn's ``sync`` worker closes the connection after every request; its ``gthread`` worker keeps
it, but hands every request from a polling thread to a pool thread and back (measured here: that
round trip is about a third of a worker's CPU per small request). This worker polls its listener
and its kept-alive connections itself and serves each request inline, in the polling thread. It
frames requests and writes responses with ``byoc_serve.http1`` rather than gunicorn's HTTP classes,
and hands ``/invocations`` to its route without a WSGI environ; gunicorn still runs the processes
(fork, heartbeat, signals, replacement).
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import time
from dataclasses import dataclass

from gunicorn import util
from gunicorn.workers.base import Worker

from byoc_serve import http1
from byoc_serve.app import InvokeRoute
from byoc_serve.errors import ServingError

log = logging.getLogger("byoc_serve.loop_worker")

HEARTBEAT_S = 1.0  # how often the arbiter is told this worker is alive while it is idle
STOP_LINGER_S = 0.2  # on stop, how long an idle kept-alive connection may still bring a request
RECV_BYTES = 64 * 1024
QUIET_ERRNOS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)


@dataclass(eq=False)
class Connection:
    """One kept-alive connection from nginx and the reader that frames its byte stream.

    After an error answer the connection only discards what still arrives, until the client closes.
    """

    sock: socket.socket
    reader: http1.RequestReader
    discarding: bool = False


class LoopWorker(Worker):
    """Accepts and serves on one thread; nginx holds the connections open between requests."""

    def run(self) -> None:
        self.max_body = self.app.settings.max_payload_bytes
        # The single-model app: its route answers from the framed request, without a WSGI environ.
        self.route = self.wsgi if isinstance(self.wsgi, InvokeRoute) else None
        self.selector = selectors.DefaultSelector()
        for listener in self.sockets:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, listener)
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, None)
        last_beat = 0.0
        while self.alive:
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                self.notify()
                last_beat = now
                # Once a heartbeat, not per request: a getppid() per request was a quarter of our syscalls.
                if not self.is_parent_alive():
                    break
            for key, _ in self.selector.select(HEARTBEAT_S):
                self.dispatch(key)
                if not self.alive:
                    break
        self.finish_what_was_sent()

    def dispatch(self, key: selectors.SelectorKey) -> None:
        if isinstance(key.data, Connection):
            self.serve(key.data)
        elif key.data is None:
            self.drain_wakeups()
        else:
            self.accept(key.data)

    def accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                raise
            # Blocking: a read follows only a readiness event, and a write waits for nginx to take it.
            sock.setblocking(True)
            util.close_on_exec(sock)
            self.selector.register(sock, selectors.EVENT_READ, Connection(sock, http1.RequestReader(self.max_body)))

    def serve(self, conn: Connection) -> None:
        """Read what arrived on ``conn`` and answer every whole request in it, in order."""
        try:
            data = conn.sock.recv(max(RECV_BYTES, conn.reader.wanted()))
            if not data:
                self.close(conn)
                return
            if conn.discarding:
                return
            conn.reader.feed(data)
            while (request := conn.reader.next_request()) is not None:
                if not self.respond(conn, request):
                    self.close(conn)
                    return
            if conn.reader.needs_continue():
                conn.sock.sendall(http1.CONTINUE)
        except ServingError as exc:
            self.refuse(conn, exc)
        except OSError as exc:
            if exc.errno not in QUIET_ERRNOS:
                log.exception("socket error on a connection from nginx")
            self.close(conn)
        except Exception:
            log.exception("error answering a request")
            self.refuse(conn, ServingError("internal error; see the server log"))

    def respond(self, conn: Connection, request: http1.Request) -> bool:
        """Answer ``request`` (by the route, else the WSGI app); True when the connection stays open."""
        self.nr += 1
        if self.nr >= self.max_requests:
            log.info("Autorestarting worker after current request.")
            self.alive = False
        head = request.head
        if self.route is not None and head.target == self.route.path:
            keep = head.keep_alive and self.alive
            status, headers, body = self.route.respond(head.method, head.fields, lambda: request.body)
            response = http1.response_bytes(status, headers, body, keep, head.method == "HEAD")
        else:
            response, keep = http1.run_app(self.wsgi, request, keep_alive=self.alive)
        conn.sock.sendall(response)
        return keep

    def refuse(self, conn: Connection, error: ServingError) -> None:
        """Answer a request that cannot be read with the JSON envelope, then stop reading from it."""
        try:
            conn.sock.sendall(http1.refusal_bytes(error))
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        conn.discarding = True

    def close(self, conn: Connection) -> None:
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        util.close_graceful(conn.sock)

    def finish_what_was_sent(self) -> None:
        """On stop: keep answering (each response says ``Connection: close``) until nothing has arrived
        for ``STOP_LINGER_S``, then close.

        nginx stops at the same moment and takes no new client requests, but what it already sent
        waits on this worker's connections and in its listen backlog: closing the listener first
        would reset those connections, and nginx answers 502 for a POST it cannot resend.
        """
        while events := self.selector.select(STOP_LINGER_S):
            for key, _ in events:
                self.dispatch(key)
        for listener in self.sockets:
            listener.close()
        for key in list(self.selector.get_map().values()):
            if isinstance(key.data, Connection):
                self.close(key.data)

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.PIPE[0], 4096):
                pass
        except BlockingIOError:
            pass

    def is_parent_alive(self) -> bool:
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            return False
        return True


