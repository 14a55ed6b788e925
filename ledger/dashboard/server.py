"""``ledger dashboard``: check the access, bind the socket, serve with uvicorn.

Everything that can fail for a reason the operator can fix (a bad URL, an
unreachable server, an unmigrated schema, an unsuitable role, a port in use,
a public address without a token) fails here, before anything is served,
with a :class:`ledger.errors` error that says what to do; the CLI prints it
and exits non-zero.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from .. import errors
from .access import DEFAULT_ROLE, check
from .app import LOOPBACK_HOSTS, create_app


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def allowed_hosts(host: str) -> frozenset[str] | None:
    """The Host names to accept when bound to ``host`` (None: any, for a wildcard bind)."""
    if is_wildcard(host):
        return None
    return LOOPBACK_HOSTS | {host.strip("[]").lower()}


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0 picks a free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise errors.InputError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise errors.LedgerError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            + ("; pick another --port (0 picks a free one)" if port else "")
        ) from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    database_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8050,
    token: str | None = None,
    role: str = DEFAULT_ROLE,
    schema: str = "ledger",
    announce: Callable[[str, str], None] | None = None,
) -> None:
    """Serve the dashboard until interrupted (Ctrl-C, SIGTERM).

    Refuses to listen beyond loopback without a token: the pages show every
    tenant's balances to whoever can reach the port. ``announce(url, line)``
    is called once the socket listens (default: print the line).
    """
    if token is not None and not token:
        raise errors.InputError("the token is empty; give one, or leave --token out")
    if token is None and not is_loopback(host):
        raise errors.InputError(
            f"refusing to serve on {host} without a token: anyone who can reach it would see "
            "every balance; pass --token (or LEDGER_DASHBOARD_TOKEN), or keep the default "
            "--host 127.0.0.1"
        )
    import uvicorn

    access = check(database_url, schema=schema, role=role)
    app = create_app(database_url, token=token, allowed_hosts=allowed_hosts(host), access=access)
    sock = bind(host, port)
    try:
        url = url_of(sock)
        line = (
            f"ledger dashboard on {url} (read-only, as role {access.role!r}"
            f"{', token required' if token else ''}); Ctrl-C stops it"
        )
        if announce is None:
            print(line, flush=True)
        else:
            announce(url, line)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,  # a first request's address may carry ?token=
            server_header=False,
            proxy_headers=False,
            lifespan="on",
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
