"""Fault injection helpers: a TCP proxy that can lose the reply to a COMMIT, and the
servers of real deployments (a PgBouncer, streaming replicas) started by the tests."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url


def server_address(url: str) -> tuple[int, str | tuple[str, int]]:
    """(socket family, address) of the PostgreSQL server behind a URL."""
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or "/tmp"
    if isinstance(host, tuple):
        host = host[0]
    port = int(parsed.port or parsed.query.get("port") or 5432)  # type: ignore[arg-type]
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
            for s in (src, dst):  # one side ended: end both, so the other pump stops too
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.listener.close()


# ------------------------------------------------------------------ PgBouncer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pgbouncer_binary() -> str | None:
    """$LEDGER_PGBOUNCER (scripts/pgbouncer.sh builds one >= 1.21), else the installed one."""
    built = os.environ.get("LEDGER_PGBOUNCER")
    if built:
        return built
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


def pgbouncer_version() -> tuple[int, int]:
    """(major, minor) of the installed PgBouncer; (0, 0) if there is none."""
    binary = pgbouncer_binary()
    if binary is None:
        return (0, 0)
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


class PgBouncer:
    """A throwaway PgBouncer in transaction pooling mode in front of the test server.

    It listens on a free loopback port and forwards every database to the
    server behind ``server_url``. ``server_round_robin`` makes it hand out its
    server connections in turn, so even one client moves between backends
    from one transaction to the next, which is what breaks session state.
    Under root it runs as the owner of the server's socket directory (PgBouncer
    refuses to run as root, and that user can reach the socket).
    """

    def __init__(
        self,
        server_url: str,
        root: Path,
        *,
        pool_size: int = 4,
        max_prepared_statements: int | None = None,
    ) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (scripts/test.sh installs it)")
        url = make_url(server_url)
        host = url.query.get("host") or url.host or "/tmp"
        if isinstance(host, tuple):
            host = host[0]
        port = url.port or url.query.get("port") or 5432
        user = url.username or "postgres"
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        extra = ""
        if max_prepared_statements is not None:
            extra = f"max_prepared_statements = {max_prepared_statements}\n"
        (root / "users.txt").write_text(f'"{user}" "{url.password or ""}"\n')
        (root / "pgbouncer.ini").write_text(
            f"[databases]\n* = host={host} port={port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {root / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 200\nserver_round_robin = 1\n"
            f"pidfile = {root / 'pgbouncer.pid'}\nlogfile = {root / 'pgbouncer.log'}\n" + extra
        )
        cmd = [binary, "-d", str(root / "pgbouncer.ini")]
        if os.geteuid() == 0:
            owner = (
                os.stat(host).st_uid if host.startswith("/") else pwd.getpwnam("postgres").pw_uid
            )
            for path in (root, *root.iterdir()):
                os.chown(path, owner, -1)
            cmd[1:1] = ["-u", pwd.getpwuid(owner).pw_name]
        subprocess.run(cmd, check=True, timeout=30)
        self.user = user
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def url_for(self, db_url: str) -> str:
        """The same database as ``db_url``, reached through this PgBouncer."""
        return (
            make_url(db_url)
            .set(host="127.0.0.1", port=self.port, query={})
            .render_as_string(hide_password=False)
        )

    def warm(self, db_url: str, servers: int) -> None:
        """Make PgBouncer open ``servers`` server connections for this database now."""
        plain = self.url_for(db_url).replace("postgresql+psycopg://", "postgresql://", 1)
        conns = [psycopg.connect(plain) for _ in range(servers)]
        for c in conns:
            c.execute("SELECT 1")  # each open transaction pins its own server connection
        for c in conns:
            c.commit()  # a clean end keeps the server connection in PgBouncer's pool
            c.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.root / "pgbouncer.pid").read_text().strip())
            os.kill(pid, signal.SIGTERM)  # immediate shutdown, even with clients left
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)


# ------------------------------------------------------- primary and standbys


PG_BIN = Path(os.environ.get("LEDGER_PG15_BIN", "/usr/lib/postgresql/15/bin"))


class PgServer:
    """A PostgreSQL server from Debian's binaries on a loopback TCP port, for replication tests.

    Under root the server runs as the ``postgres`` system user, as
    scripts/pg15.py does. ``standby_of`` clones a running primary with
    ``pg_basebackup -R`` and starts it as a streaming hot standby.
    """

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.data = root / name
        self.port = free_port()
        self.user = "postgres"
        self.log = root / f"{name}.log"

    @staticmethod
    def available() -> bool:
        return (PG_BIN / "postgres").exists() and (PG_BIN / "pg_basebackup").exists()

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = list(cmd)
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)

    @classmethod
    def workspace(cls) -> Path:
        root = Path(tempfile.mkdtemp(prefix="ledger-replication-"))
        if os.geteuid() == 0:
            os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
        return root

    def init_primary(self, settings: dict[str, str] | None = None) -> PgServer:
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        self._configure(settings or {})
        return self.start()

    def standby_of(self, primary: PgServer, settings: dict[str, str] | None = None) -> PgServer:
        self._run(
            str(PG_BIN / "pg_basebackup"), "-D", str(self.data), "-R", "-X", "stream",
            "-h", "127.0.0.1", "-p", str(primary.port), "-U", self.user,
            "-d", f"application_name={self.data.name}",
        )  # fmt: skip
        self._configure(settings or {})
        return self.start()

    def _configure(self, settings: dict[str, str]) -> None:
        base = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "60",
            "shared_buffers": "16MB",
            "fsync": "on",
        }
        lines = [f"{k} = {v}" for k, v in {**base, **settings}.items()]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n".join(lines) + "\n")

    def start(self) -> PgServer:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "start")
        return self

    def stop(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
            check=False,
        )  # fmt: skip

    def crash(self) -> None:
        """``kill -9`` the postmaster and its children, as a power cut would."""
        import psutil

        try:
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            proc = psutil.Process(pid)
        except (OSError, ValueError, psutil.NoSuchProcess):
            return
        victims = [proc, *proc.children(recursive=True)]
        for p in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=30)

    def promote(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    @property
    def plain(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def wait_replayed(self, primary: PgServer, timeout: float = 30) -> None:
        """Wait until this standby has replayed everything the primary has written."""
        with psycopg.connect(primary.plain, autocommit=True) as p:
            target = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.plain, autocommit=True) as s:
            while True:
                done = s.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()[0]  # type: ignore[index]
                if done:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("the standby did not catch up")
                time.sleep(0.05)


def require_replication_binaries() -> None:
    """Skip (or, in CI, fail) the tests that start their own primaries and standbys.

    They do not use the suite's server, so scripts/test.sh's second pass (on
    ``LEDGER_TEST_DATABASE_URL``) would only repeat them: they run once, in
    the pass on the suite's own server.
    """
    if os.environ.get("LEDGER_TEST_DATABASE_URL"):
        pytest.skip("starts its own servers; runs in the pass without LEDGER_TEST_DATABASE_URL")
    if not PgServer.available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI expects Debian's PostgreSQL 15 server binaries in {PG_BIN}")
        pytest.skip(f"Debian's PostgreSQL 15 server binaries are not in {PG_BIN}")
