"""A single-threaded gunicorn worker that keeps nginx's upstream connections alive.

gunicorn's ``sync`` worker closes the connection after every request; its ``gthread`` worker keeps
it, but hands every request from a polling thread to a pool thread and back (measured here: that
round trip is about a third of a worker's CPU per small request). This worker polls its listener
and its kept-alive connections itself and serves each request inline, in the polling thread.

nginx buffers a whole request body before it talks to an upstream, so a readable connection here
always carries a complete request: reading it never waits on a slow client.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers.base import Worker

HEARTBEAT_S = 1.0  # how often the arbiter is told this worker is alive while it is idle
STOP_LINGER_S = 0.2  # on stop, how long an idle kept-alive connection may still bring a request
QUIET_ERRNOS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)


@dataclass(eq=False)
class Connection:
    """One kept-alive connection from nginx and the HTTP parser that owns its byte stream."""

    sock: socket.socket
    addr: Any
    server: Any
    parser: Any


class LoopWorker(Worker):
    """Accepts and serves on one thread; nginx holds the connections open between requests."""

    def run(self) -> None:
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
            for key, _ in self.selector.select(HEARTBEAT_S):
                self.dispatch(key)
                if not self.alive:
                    break
            if not self.is_parent_alive():
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
                sock, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                raise
            sock.setblocking(True)  # reads block only inside a request nginx already sent whole
            util.close_on_exec(sock)
            conn = Connection(sock, addr, listener.getsockname(), http.get_parser(self.cfg, sock, addr))
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def serve(self, conn: Connection) -> None:
        """Answer one request on ``conn``; keep the connection if the response allows it."""
        req = None
        keep = False
        try:
            req = next(conn.parser)
            keep = self.handle_request(conn, req)
            # A request that arrived behind this one is already buffered: the socket won't wake us.
            while keep and self.alive and conn.parser.unreader.buf.getvalue():
                req = next(conn.parser)
                keep = self.handle_request(conn, req)
        except (http.errors.NoMoreData, StopIteration):
            pass
        except OSError as exc:
            if exc.errno not in QUIET_ERRNOS:
                self.log.exception("Socket error processing request.")
        except Exception as exc:
            self.handle_error(req, conn.sock, conn.addr, exc)
        if not (keep and self.alive):
            self.close(conn)

    def handle_request(self, conn: Connection, req: Any) -> bool:
        """Run the WSGI app for ``req``; True when the connection may serve another request."""
        environ: dict = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            started = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.addr, conn.server, self.cfg)
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                for item in respiter:
                    resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - started)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close() and bool(conn.parser.finish_body())
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp is not None and resp.headers_sent:
                # The response has started: a 500 written now would corrupt it; drop the connection.
                self.log.exception("Error handling request")
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

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


