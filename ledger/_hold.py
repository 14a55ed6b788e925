# Generated from ledger/_async_hold.py by scripts/unasync.py: do not edit.
# Edit the source, then run `python scripts/unasync.py` (CI checks with --check).
"""Holds that survive slow work: reserve now, work outside the database, settle after.

The row lock a reserve takes on its tenant lasts until the reserve's
transaction ends. Reserving inside an app's request transaction and
settling at its end therefore serialises every request of that tenant for
the whole duration of the work. :meth:`ledger.Ledger.hold` commits the
reserve at once in its own short transaction instead, so the work runs with
no lock held; the TTL is the safety net if the process dies before it
settles; the settlement may join the app's transaction (a job row and the
commit, atomically); and leaving the block without settling, or with an
exception, releases the hold.

One source for both faces: scripts/unasync.py writes the sync module from
the asyncio one, and the blocks marked ``# unasync: async-only`` or
``sync-only`` are the only places they differ, each saying why.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import errors

# The state of a hold is the same on both faces: defined once, in the asyncio
# module; AsyncHold is re-exported so that ``from ledger._hold import`` finds both.
from ._async_hold import AsyncHold, _HoldState
from .outcomes import ReserveOutcome, SettlementOutcome

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["AsyncHold", "Hold"]

log = logging.getLogger("ledger")


class Hold(_HoldState):
    # Only the sync ledger is bound to a framework's transaction (BoundLedger):
    # the docstrings say where settle() runs on each face.
    """An open hold, already committed; settle it with the actual cost, or it is released.

    ``settle()`` runs on ``connection=`` if given, else where the ledger that
    made the hold runs its operations (a framework's transaction, for the
    Flask and Django integrations), so it can be atomic with the app's own
    writes. ``release()`` always runs in its own transaction.
    """

    def __init__(
        self,
        book: Ledger,
        own: Ledger,
        tenant_id: str,
        outcome: ReserveOutcome,
        amount: int,
    ) -> None:
        super().__init__(tenant_id, outcome, amount)
        self._book = book
        #: The ledger as it runs without ``connection=`` (for a bound ledger, the unbound one).
        self._own = own

    def settle(
        self,
        actual_microcents: int,
        *,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> SettlementOutcome:
        """Commit the hold at its actual cost (see :meth:`ledger.Ledger.commit`)."""
        return self._record(
            self._book.commit(
                self.reservation_id,
                actual_microcents,
                tenant_id=self.tenant_id,
                idempotency_key=idempotency_key,
                connection=connection,
            )
        )

    def release(self) -> SettlementOutcome:
        """Give the whole amount back now, in a transaction of its own."""
        return self._record(self._own.release(self.reservation_id, tenant_id=self.tenant_id))

    def _close(self, failed: bool) -> None:
        if self.settled:
            return
        try:
            self.release()
        except errors.LedgerError:
            if not failed:
                raise
            # Keep the caller's own exception; the TTL returns the amount later.
            log.warning("could not release hold %s after an error", self.reservation_id)
