"""The ASGI application: pages routed, guarded and rendered; nothing that writes.

:func:`create_app` checks the database access first (as
:func:`ledger.dashboard.access.check` does: a bad URL, an unmigrated schema
or an unsuitable role raises before anything is served) and returns a
Starlette app. In front of every request sits :class:`Guard`:

- only ``GET`` and ``HEAD``; anything else is 405, whatever the path;
- the ``Host`` header must name the server (loopback names by default), so a
  web page elsewhere cannot read the dashboard through DNS rebinding;
- with a token, a request without it is 401. The token is accepted as
  ``Authorization: Bearer <token>``, as the cookie the dashboard sets, or once
  as ``?token=<token>``, which sets that cookie and redirects to the same
  address without the token. Every comparison is constant-time;
- every response carries a strict Content Security Policy (no scripts at
  all), ``no-store`` caching, no referrer, no framing;
- an error in a page is a 500 page and one line on stderr, never a traceback
  in the browser. Bad parameters are 400, unknown things 404, a database
  that does not answer 503.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

import psycopg
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import errors
from . import formatting
from .access import DEFAULT_ROLE, Access, Database, check
from .page import Page, View, href
from .pages import PAGES
from .params import BadParameter, NotFound, group
from .queries import Statements

log = logging.getLogger("ledger.dashboard")

#: Names a browser on this machine uses for a server bound to loopback.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: The shortest token accepted: a guessable token is no protection.
MIN_TOKEN_LENGTH = 16
ALLOWED_METHODS = ("GET", "HEAD")

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


def environment() -> Environment:
    """The Jinja2 environment of the dashboard's templates (autoescaping, strict)."""
    env = Environment(
        loader=PackageLoader("ledger.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        digits=formatting.digits,
        units=formatting.units,
        count=formatting.count,
        timestamp=formatting.timestamp,
        iso=formatting.iso,
        duration=formatting.duration,
        svg=Markup,  # the charts' own markup, escaped where it is built (charts.py)
    )
    env.globals.update(href=href, visible_id=formatting.visible_id)
    return env


class Renderer:
    """Pages and error pages as HTML responses, with the navigation and footer filled in."""

    def __init__(self, env: Environment, access: Access | None, pages: Iterable[Page]) -> None:
        self.env = env
        self.access = access
        self.nav = [(p.path, p.nav) for p in pages if p.nav]

    def page(self, template: str, title: str, context: dict[str, Any], path: str) -> HTMLResponse:
        html = self.env.get_template(template).render(
            title=title,
            nav=self.nav,
            path=path,
            access=self.access,
            rendered_at=datetime.now(UTC),
            **context,
        )
        return HTMLResponse(html)

    def error(
        self, status: int, message: str, *, headers: dict[str, str] | None = None
    ) -> Response:
        phrase = HTTPStatus(status).phrase
        html = self.env.get_template("error.html").render(
            title=f"{status} {phrase}",
            status=status,
            phrase=phrase,
            message=message,
            nav=self.nav,
            path="",
            access=self.access,
            rendered_at=datetime.now(UTC),
        )
        return HTMLResponse(html, status_code=status, headers=headers)


def _host_of(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"host":
            host = str(value.decode("latin-1")).strip().lower()
            if host.startswith("["):
                return host[1:].split("]", 1)[0]
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Guard:
    """The checks in front of every request (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        renderer: Renderer,
        token: str | None,
        allowed_hosts: frozenset[str] | None,
    ) -> None:
        self.app = app
        self.renderer = renderer
        self.allowed_hosts = allowed_hosts
        self._token = None if token is None else hashlib.sha256(token.encode()).digest()
        # The cookie holds a value derived from the token, not the token itself.
        self._cookie_value = (
            None
            if token is None
            else hmac.new(token.encode(), b"ledger-dashboard-cookie", "sha256").hexdigest()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers[key] = value
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_secured)
            else:
                await self.app(scope, receive, send_secured)
        except Exception as exc:
            if os.environ.get("LEDGER_DEBUG"):
                log.exception("error in %s %s", scope["method"], scope["path"])
            else:
                log.error(
                    "error in %s %s: %s: %s (LEDGER_DEBUG=1 logs the traceback)",
                    scope["method"],
                    scope["path"],
                    type(exc).__name__,
                    " ".join(str(exc).split())[:300],
                )
            if not started:
                response = self.renderer.error(
                    500, "The dashboard failed to build this page; its log says why."
                )
                await response(scope, receive, send_secured)

    def _cookie_name(self, scope: Scope) -> str:
        server = scope.get("server")
        port = server[1] if server and server[1] else 0
        return f"ledger_dashboard_{port}"

    def _refusal(self, scope: Scope) -> Response | None:
        """The response that refuses this request, or None to let it through."""
        if scope["method"] not in ALLOWED_METHODS:
            return self.renderer.error(
                405,
                f"The dashboard is read-only: it answers GET and HEAD only, not {scope['method']}.",
                headers={"allow": ", ".join(ALLOWED_METHODS)},
            )
        if self.allowed_hosts is not None:
            host = _host_of(scope)
            if host not in self.allowed_hosts:
                return self.renderer.error(
                    400,
                    "This server answers only to "
                    + ", ".join(sorted(self.allowed_hosts))
                    + f"; the request named {host or 'no host'!r}.",
                )
        if self._token is None:
            return None
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        given = [value for key, value in query if key == "token"]
        if given:
            if len(given) == 1 and self._valid_token(given[0]):
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                raw = scope.get("raw_path") or scope["path"].encode()
                path = "/" + bytes(raw).decode("latin-1").lstrip("/")  # never "//host"
                response = RedirectResponse(path + (f"?{rest}" if rest else ""), 303)
                assert self._cookie_value is not None
                response.set_cookie(
                    self._cookie_name(scope), self._cookie_value, httponly=True, samesite="strict"
                )
                return response
            return self._unauthorized("That token is not this dashboard's token.")
        auth = _header(scope, b"authorization")
        if auth is not None and auth[:7].lower() == "bearer ":
            if self._valid_token(auth[7:].strip()):
                return None
            return self._unauthorized("That token is not this dashboard's token.")
        cookie = _header(scope, b"cookie")
        if cookie is not None:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(cookie)
            except Exception:  # a malformed Cookie header is just no cookie
                jar = SimpleCookie()
            morsel = jar.get(self._cookie_name(scope))
            if morsel is not None and self._valid_cookie(morsel.value):
                return None
        return self._unauthorized("This dashboard needs its access token.")

    def _valid_token(self, given: str) -> bool:
        assert self._token is not None
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(digest, self._token)

    def _valid_cookie(self, given: str) -> bool:
        assert self._cookie_value is not None
        return hmac.compare_digest(given.encode("latin-1", "replace"), self._cookie_value.encode())

    def _unauthorized(self, why: str) -> Response:
        return self.renderer.error(
            401,
            f"{why} Open this address once with ?token=<token> added (the browser then keeps "
            "it for the session), or send the header Authorization: Bearer <token>.",
            headers={"www-authenticate": 'Bearer realm="ledger dashboard"'},
        )


def _database_failure(exc: Exception) -> str:
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return (
            "The database took too long to answer (over the dashboard's statement timeout); "
            "try again, or a smaller page."
        )
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (
            "The auditor role can no longer read the audit views "
            f"({' '.join(str(exc).split())[:200]}); as the schema's owner, run "
            "`ledger grant-auditor`."
        )
    if isinstance(exc, PoolTimeout | psycopg.OperationalError):
        return "The database is not answering; the page will work again once it is back."
    return f"PostgreSQL could not run this page's reads: {' '.join(str(exc).split())[:200]}"


def _endpoint(
    page: Page, renderer: Renderer, statements: Statements
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        database: Database = request.app.state.database
        v = View(
            params=group(request.query_params.multi_items()),
            access=database.access,
            statements=statements,
            database=database,
        )
        try:
            done = await page.view(v)
        except (BadParameter, NotFound) as exc:
            return renderer.error(exc.status, str(exc))
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("database error in %s: %s", page.path, " ".join(str(exc).split())[:300])
            return renderer.error(503, _database_failure(exc))
        return renderer.page(done.template, done.title, dict(done.context), page.path)

    endpoint.__name__ = f"page_{page.name}"
    return endpoint


def create_app(
    database_url: str,
    *,
    schema: str = "ledger",
    role: str = DEFAULT_ROLE,
    token: str | None = None,
    allowed_hosts: Iterable[str] | None = LOOPBACK_HOSTS,
    access: Access | None = None,
) -> Starlette:
    """The dashboard as an ASGI app, reading ``database_url`` as ``role``.

    Raises the errors of :func:`ledger.dashboard.access.check` (nothing is
    served then), and :class:`~ledger.errors.InputError` for a token shorter
    than 16 characters. ``allowed_hosts=None`` turns the Host check off (for
    a server bound to every interface: keep a token then). ``access`` skips
    the check when the caller has just made it.
    """
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise errors.InputError(
            f"the token must be at least {MIN_TOKEN_LENGTH} characters long; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )
    if access is None:
        access = check(database_url, schema=schema, role=role)
    env = environment()
    renderer = Renderer(env, access, PAGES)
    statements = Statements(access.schema)
    hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = Database(access)
        await database.open()
        app.state.database = database
        try:
            yield
        finally:
            await database.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            return renderer.error(404, f"There is no page at {request.url.path}.")
        return renderer.error(status, HTTPStatus(status).phrase)

    routes: list[Route | Mount] = [
        Route(p.path, _endpoint(p, renderer, statements), methods=["GET"], name=p.name)
        for p in PAGES
    ]
    routes.append(
        Mount("/static", StaticFiles(packages=[("ledger.dashboard", "static")]), name="static")
    )
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: not_found},
        middleware=[Middleware(Guard, renderer=renderer, token=token, allowed_hosts=hosts)],
    )
