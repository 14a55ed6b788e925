"""Ledger(url, coalesce=True): many threads' calls share rounds; every caller keeps its outcome."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import ledger
from ledger import errors
from tests.conftest import _plain
from tests.helpers import holds_match_reserved


def _threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_sixty_four_threads_on_one_hot_tenant_spend_exactly_the_budget(db_url: str) -> None:
    price, rounds_each, threads = 7, 8, 64
    budget = price * 300 + 5  # 512 attempts, the budget pays for exactly 300
    with ledger.Ledger(db_url, coalesce=True) as book:
        book.ensure_tenant("hot", budget)

        def work(_: int) -> int:
            won = 0
            for _ in range(rounds_each):
                hold = book.try_reserve("hot", price)
                if hold.ok:
                    assert hold.reservation_id is not None
                    assert book.commit(hold.reservation_id, price, tenant_id="hot").ok
                    won += 1
            return won

        wins = _threads(threads, work)
        assert sum(wins) == 300, wins
        assert book.tenant("hot") == ledger.TenantLedger("hot", budget, 5, 0, 300 * price)
        coalescer = book._db._coalescer
        assert coalescer is not None
        # Calls really shared rounds: far fewer rounds than statements.
        assert coalescer.rounds * 4 < coalescer.statements, (
            coalescer.rounds,
            coalescer.statements,
        )
        assert book.verify_journal().ok
    with psycopg.connect(_plain(db_url)) as raw:
        assert holds_match_reserved(raw) == []


def test_coalesced_and_plain_calls_give_the_same_outcomes(db_url: str) -> None:
    def script(book: ledger.Ledger, tenant: str) -> list[Any]:
        out: list[Any] = [book.ensure_tenant(tenant, 1_000)]
        book.set_max_reserved_microcents(tenant, 800)
        a = book.try_reserve(tenant, 500)
        out += [a, book.try_reserve(tenant, 400), book.try_reserve(tenant, 0)]
        out.append(book.try_reserve("nobody", 5))
        out.append(book.commit(a.reservation_id or 0, 600, tenant_id=tenant))
        out.append(book.commit(a.reservation_id or 0, 600))
        b = book.try_reserve(tenant, 100, ttl=3600)
        out += [b.status, book.release(b.reservation_id or 0)]
        out.append(book.top_up_tenant(tenant, 50))
        row = book.tenant(tenant)
        assert row is not None
        out.append(row.to_dict() | {"tenant_id": "-"})
        out.append(book.verify_conservation())
        with pytest.raises(errors.AmountTypeError):
            book.try_reserve(tenant, 1.5)  # type: ignore[arg-type]
        return [o for o in out if not hasattr(o, "reservation_id")] + [
            (o.status, o.remaining_microcents) for o in out if hasattr(o, "reservation_id")
        ]

    with ledger.Ledger(db_url) as plain, ledger.Ledger(db_url, coalesce=True) as coalesced:
        assert script(plain, "p") == script(coalesced, "c")


def test_one_callers_failing_statement_does_not_fail_the_others_in_its_round(
    db_url: str,
) -> None:
    with psycopg.connect(_plain(db_url), autocommit=True) as raw:
        # A stand-in for any per-caller database error: updates of tenant 'bad' raise.
        raw.execute(
            """
            CREATE FUNCTION public.refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.tenant_id = 'bad' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_bad BEFORE UPDATE ON ledger.tenants
            FOR EACH ROW EXECUTE FUNCTION public.refuse_bad();
            """
        )
    with ledger.Ledger(db_url, coalesce=True) as book:
        for t in ("bad", *(f"g{i}" for i in range(15))):
            book.ensure_tenant(t, 1_000)
        results = _threads(16, lambda i: book.try_reserve("bad" if i == 0 else f"g{i - 1}", 10))
        assert isinstance(results[0], errors.DatabaseError), results[0]
        assert "refused by a test trigger" in str(results[0])
        assert all(isinstance(r, ledger.ReserveOutcome) and r.ok for r in results[1:]), results
        assert book.reserved_microcents("bad") == 0
        assert sum(book.reserved_microcents(f"g{i}") for i in range(15)) == 150
        assert book.verify_journal().ok


def test_a_closed_coalescing_ledger_refuses_new_calls_clearly(db_url: str) -> None:
    book = ledger.Ledger(db_url, coalesce=True)
    book.ensure_tenant("t", 10)
    book.close()
    with pytest.raises(errors.InputError, match="closed"):
        book.try_reserve("t", 1)
