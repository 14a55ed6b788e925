"""Start or stop a throwaway PostgreSQL from Debian's binaries (default: version 15).

Used by scripts/test.sh to run the suite on a second major version.

    python scripts/pg15.py start   # prints the URL
    python scripts/pg15.py stop

The server listens on a Unix socket in its own temporary directory only.
PostgreSQL refuses to run as root, so under root it runs as the ``postgres``
system user that Debian's package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(os.environ.get("LEDGER_PG15_BIN", "/usr/lib/postgresql/15/bin"))
STATE = Path(tempfile.gettempdir()) / "sql-ledger-pg15.dir"


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def start() -> str:
    root = Path(tempfile.mkdtemp(prefix="sql-ledger-pg15-"))
    data = root / "data"
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    subprocess.run(
        _as_owner(
            [
                str(BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = (
        f"-k {root} -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
        " -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        _as_owner(
            [
                str(BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-o",
                options,
                "-w",
                "start",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    STATE.write_text(str(root))
    return f"postgresql://postgres@/postgres?host={root}"


def stop() -> None:
    if not STATE.exists():
        return
    root = Path(STATE.read_text())
    subprocess.run(
        _as_owner([str(BIN / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop"]),
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shutil.rmtree(root, ignore_errors=True)
    STATE.unlink(missing_ok=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["start"]:
        print(start())
    elif sys.argv[1:] == ["stop"]:
        stop()
    else:
        sys.exit("usage: pg15.py start|stop")
