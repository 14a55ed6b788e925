"""Holds that survive slow work: reserve now, work outside the database, settle after.

The row lock a reserve takes on its tenant lasts until the reserve's
transaction ends. Reserving inside an app's request transaction and
settling at its end therefore serialises every request of that tenant for
the whole duration of the work. :meth:`ledger.AsyncLedger.hold` commits the
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
from .outcomes import ReserveOutcome, SettlementOutcome, Status

# unasync: sync-only
# # The state of a hold is the same on both faces: defined once, in the asyncio
# # module; AsyncHold is re-exported so that ``from ledger._hold import`` finds both.
# from ._async_hold import AsyncHold, _HoldState
# unasync: end

if TYPE_CHECKING:
    from ._async_ledger import AsyncLedger

# unasync: async-only
__all__ = ["AsyncHold"]
# unasync: end
# unasync: sync-only
# __all__ = ["AsyncHold", "Hold"]
# unasync: end

log = logging.getLogger("ledger")

# unasync: async-only
#: Settlement outcomes after which the hold no longer exists.
_GONE = {Status.COMMITTED, Status.RELEASED, Status.EXPIRED, Status.MISSING_RESERVATION}


class _HoldState:
    """What a hold knows on both faces: its tenant, reservation, amount and end."""

    def __init__(self, tenant_id: str, outcome: ReserveOutcome, amount: int) -> None:
        assert outcome.reservation_id is not None
        self.tenant_id = tenant_id
        self.reservation_id: int = outcome.reservation_id
        self.amount_microcents = amount
        self.reserved = outcome
        #: The settlement that ended the hold (commit, release or expiry), once there is one.
        self.outcome: SettlementOutcome | None = None

    @property
    def settled(self) -> bool:
        """True once the hold is gone: committed, released, or expired."""
        return self.outcome is not None

    def _record(self, outcome: SettlementOutcome) -> SettlementOutcome:
        if outcome.status in _GONE:
            self.outcome = outcome
        return outcome

    def __repr__(self) -> str:
        state = "open" if self.outcome is None else str(self.outcome.status)
        return (
            f"<{type(self).__name__} {self.reservation_id} of {self.tenant_id!r}: "
            f"{self.amount_microcents} microcents, {state}>"
        )


# unasync: end


class AsyncHold(_HoldState):
    # Only the sync ledger is bound to a framework's transaction (BoundLedger):
    # the docstrings say where settle() runs on each face.
    # unasync: async-only
    """The asyncio twin of :class:`~ledger.Hold`: ``await h.settle(actual)``.

    ``settle()`` runs on ``connection=`` if given, else in a transaction of
    its own; ``release()`` always runs in its own transaction.
    """

    # unasync: end
    # unasync: sync-only
    # """An open hold, already committed; settle it with the actual cost, or it is released.
    #
    # ``settle()`` runs on ``connection=`` if given, else where the ledger that
    # made the hold runs its operations (a framework's transaction, for the
    # Flask and Django integrations), so it can be atomic with the app's own
    # writes. ``release()`` always runs in its own transaction.
    # """
    # unasync: end

    def __init__(
        self,
        book: AsyncLedger,
        own: AsyncLedger,
        tenant_id: str,
        outcome: ReserveOutcome,
        amount: int,
    ) -> None:
        super().__init__(tenant_id, outcome, amount)
        self._book = book
        #: The ledger as it runs without ``connection=`` (for a bound ledger, the unbound one).
        self._own = own

    async def settle(
        self,
        actual_microcents: int,
        *,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> SettlementOutcome:
        """Commit the hold at its actual cost (see :meth:`ledger.AsyncLedger.commit`)."""
        return self._record(
            await self._book.commit(
                self.reservation_id,
                actual_microcents,
                tenant_id=self.tenant_id,
                idempotency_key=idempotency_key,
                connection=connection,
            )
        )

    async def release(self) -> SettlementOutcome:
        """Give the whole amount back now, in a transaction of its own."""
        return self._record(await self._own.release(self.reservation_id, tenant_id=self.tenant_id))

    async def _close(self, failed: bool) -> None:
        if self.settled:
            return
        try:
            await self.release()
        except errors.LedgerError:
            if not failed:
                raise
            # Keep the caller's own exception; the TTL returns the amount later.
            log.warning("could not release hold %s after an error", self.reservation_id)
