"""Fault injection helpers: a TCP proxy that can lose the reply to a COMMIT."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

from sqlalchemy import make_url


def server_address(url: str) -> tuple[int, str | tuple[str, int]]:
    """(socket family, address) of the PostgreSQL server behind a URL."""
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or "/tmp"
    if isinstance(host, tuple):
        host = host[0]
    port = parsed.port or 5432
    if host.startswith("/"):
        return socket.AF_UNIX, os.path.join(host, f".s.PGSQL.{port}")
    return socket.AF_INET, (host, port)


class CommitEatingProxy:
    """Forwards PostgreSQL traffic; when armed, forwards one COMMIT and then cuts the line.

    The server receives and applies the COMMIT; the client never hears back.
    This is the ambiguous failure that idempotency keys exist for.
    """

    def __init__(self, url: str) -> None:
        self.family, self.address = server_address(url)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.fired = threading.Event()
        self.cut = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()
        db = make_url(url)
        self.url = db.set(host="127.0.0.1", port=self.port, query={}).render_as_string(
            hide_password=False
        )

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(self.family, socket.SOCK_STREAM)
            upstream.connect(self.address)
            for src, dst, watch in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(
                    target=self._pump, args=(src, dst, watch, client, upstream), daemon=True
                )
                t.start()
                self._threads.append(t)

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        watch: bool,
        client: socket.socket,
        upstream: socket.socket,
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not watch and self.cut.is_set():
                    break  # the reply to the COMMIT is lost
                if watch and self.armed.is_set() and data[:1] == b"Q" and data[5:11] == b"COMMIT":
                    self.cut.set()
                    dst.sendall(data)
                    time.sleep(0.3)  # let the server apply it
                    self.armed.clear()
                    self.cut.clear()
                    self.fired.set()
                    for s in (client, upstream):
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (dst,):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
