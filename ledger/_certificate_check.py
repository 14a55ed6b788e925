"""Check a database against a certificate kept outside it: the defence against rollbacks.

Every check the ledger runs on itself (``verify_journal``, conservation)
uses only what is in the database. A database restored from a backup taken
before the latest certificate is internally perfect, and so passes all of
them, yet it has forgotten money that moved. Only something kept elsewhere
can tell: a certificate written to a file (``ledger certify -o FILE``), an
object store, a ticket, an e-mail to the auditors.

:func:`check_against_certificate` asks the database to prove it is at or
after that certificate:

1. the certificate is in its history, with the same digest, snapshot
   version and journal root (a database restored to before it has no such
   row, or has a different certificate under that id);
2. the certificate's checkpoint rows still fold to the certified journal
   root, and every tenant's hash chain still passes through its certified
   head, so the history the certificate covers is intact;
3. the snapshot version never went backwards.

The statements are ``outside_*`` in ledger/sql/certificates.sql, read in
one REPEATABLE READ snapshot; :meth:`ledger.Ledger.check_against_certificate`
runs it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import errors
from ._operations import first_row
from ._queries import Queries
from ._requests import Fetch, Op, Steps
from .certificates import FinancialCertificate
from .journal import GENESIS, RootHasher


@dataclass(frozen=True, slots=True)
class CertificateCheck:
    """Whether the database is at or after a certificate kept outside it, and why not."""

    certificate_id: int
    ok: bool
    problems: tuple[str, ...] = field(default=())
    latest_certificate_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "certificate_id": self.certificate_id,
            "ok": self.ok,
            "problems": list(self.problems),
            "latest_certificate_id": self.latest_certificate_id,
        }


def load_certificate(
    source: FinancialCertificate | Mapping[str, Any] | str | Path,
) -> dict[str, Any]:
    """The certificate's fields from a certificate, its ``to_dict()``, JSON text or a file."""
    if isinstance(source, FinancialCertificate):
        data: Any = source.to_dict()
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise errors.InputError(
                f"cannot read a certificate from {path} ({exc}); "
                "write one with `ledger certify -o FILE`"
            ) from None
    needed = ("certificate_id", "snapshot_version", "ledger_digest_hex", "journal_root_hex")
    if not isinstance(data, dict) or any(data.get(k) is None for k in needed):
        raise errors.InputError(
            "not a stored certificate: it needs certificate_id, snapshot_version, "
            "ledger_digest_hex and journal_root_hex, as Ledger.certify() and "
            "`ledger certify -o FILE` write them"
        )
    try:
        int(data["certificate_id"]), int(data["snapshot_version"])
        bytes.fromhex(str(data["ledger_digest_hex"]))
        bytes.fromhex(str(data["journal_root_hex"]))
    except (TypeError, ValueError) as exc:
        raise errors.InputError(f"malformed certificate field ({exc})") from None
    return data


def check_against_certificate(
    q: Queries, certificate: FinancialCertificate | Mapping[str, Any] | str | Path
) -> Op[CertificateCheck]:
    """Is this database at or after ``certificate``? See the module docstring for the checks.

    A database restored to a point before the certificate was issued fails
    check 1: report it as a rollback and restore a later backup (or replay
    WAL further) instead of serving from it.
    """
    cert = load_certificate(certificate)
    cid = int(cert["certificate_id"])

    def steps() -> Steps[CertificateCheck]:
        latest = (yield from first_row(q.outside_latest, {})).latest
        row = yield from first_row(q.outside_certificate, {"certificate_id": cid})
        version = (yield from first_row(q.snapshot_version, {})).version
        chain = []
        if row is not None and row.checkpoint_id is not None:
            chain = yield Fetch(q.outside_chain, {"checkpoint_id": row.checkpoint_id})
        return _judge(cert, cid, latest, row, version, chain)

    return Op(steps, "REPEATABLE READ")


def _judge(
    cert: dict[str, Any], cid: int, latest: Any, row: Any, version: Any, chain: list[Any]
) -> CertificateCheck:
    problems: list[str] = []
    if row is None:
        problems.append(
            f"rollback: the database has no certificate {cid} (its latest is {latest}); it was "
            "restored to a point before that certificate was issued, or it is another ledger. "
            "Restore a later backup or replay more WAL"
        )
        return CertificateCheck(cid, False, tuple(problems), latest)
    if bytes(row.ledger_digest).hex() != cert["ledger_digest_hex"]:
        problems.append(f"certificate {cid} in the database has a different digest")
    if int(row.snapshot_version) != int(cert["snapshot_version"]):
        problems.append(f"certificate {cid} in the database has a different snapshot version")
    stored_root = bytes(row.journal_root).hex() if row.journal_root is not None else None
    if stored_root != cert["journal_root_hex"]:
        problems.append(f"certificate {cid} in the database has a different journal root")
    root = RootHasher()
    for tenant_id, seq, head, entry_hash in chain:
        root.update(tenant_id, int(seq), bytes(head))
        if int(seq) == 0:
            if bytes(head) != GENESIS:
                problems.append(f"tenant {tenant_id!r}: certified empty chain has a head")
        elif entry_hash is None or bytes(entry_hash) != bytes(head):
            problems.append(
                f"tenant {tenant_id!r}: the journal no longer passes through the certified "
                f"head at seq {seq}"
            )
    if root.digest().hex() != cert["journal_root_hex"]:
        problems.append(
            f"certificate {cid}: its checkpoint rows do not fold to the certified journal root"
        )
    if version is not None and int(version) < int(cert["snapshot_version"]):
        problems.append(
            f"the snapshot version went back from {cert['snapshot_version']} to {version}"
        )
    return CertificateCheck(cid, not problems, tuple(problems), latest)
