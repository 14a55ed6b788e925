"""The real LiteLLM proxy holding at key -> user -> team -> organisation (issue 25, issue 24).

The proxy runs the shipped callback with ``LEDGER_LITELLM_TENANT=tree``. It
has no key database (LiteLLM's Prisma one needs a second database and
its migrations), so the key, user and team reach the hook the way LiteLLM
hands any authenticated caller to it: a ``custom_auth`` function in the
proxy's config returns the ``UserAPIKeyAuth`` the key database would, and
the pre-call hook reads ``token``, ``user_id``, ``team_id`` and ``org_id``
from it. The test's keys spell their identity: ``sk-nest-<key>.<user>.<team>``
(optionally ``.<org>``).

This module starts a proxy of its own (the main module's runs the default
``end_user`` map, and a proxy has one tenant map per process), with two
uvicorn workers, and ``unknown="create"`` with per-level default budgets, so
a level the ledger has never seen is created under the right parent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import openai
import psycopg
import pytest

import ledger
from ledger.contrib.litellm import microcents, worst_case_microcents
from tests import litellm_proxy
from tests.conftest import _database_url, _plain, drop_database, make_database

PROMPT = [{"role": "user", "content": "Say hello to the ledger, please."}]
EXACT_PRICES = {"input_cost_per_token": 0, "output_cost_per_token": 0.0000006}
DEFAULT_BUDGET = 10**9
TEAM_DEFAULT_BUDGET = 7 * 10**8

AUTH = '''\
"""The test proxy's custom_auth: what a key database would say of a key."""

from fastapi import HTTPException, Request
from litellm.proxy._types import UserAPIKeyAuth

PREFIX = "sk-nest-"


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    api_key = api_key.removeprefix("Bearer ").strip()
    if not api_key.startswith(PREFIX):
        raise HTTPException(status_code=401, detail="unknown key")
    key, user, team, *org = api_key[len(PREFIX):].split(".")
    return UserAPIKeyAuth(token=key, user_id=user, team_id=team, org_id=org[0] if org else None)
'''

EXTRA_CONFIG = """\
general_settings:
  custom_auth: nested_auth.user_api_key_auth
"""


@pytest.fixture(scope="module")
def proxy_db(server_url: str, template_db: str) -> Iterator[str]:
    name = make_database(server_url, template_db)
    try:
        yield _database_url(server_url, name)
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, proxy_db: str) -> Iterator[litellm_proxy.Proxy]:
    silent = litellm_proxy.Silent()
    running = litellm_proxy.start(
        tmp_path_factory.mktemp("litellm-nested"),
        proxy_db,
        hang_port=silent.port,
        workers=2,  # two processes hold at the same tree: exactness is the database's
        extra_config=EXTRA_CONFIG,
        files={"nested_auth.py": AUTH},
        env={
            "LEDGER_LITELLM_TENANT": "tree",
            "LEDGER_LITELLM_UNKNOWN_TENANT": "create",
            "LEDGER_LITELLM_DEFAULT_BUDGET_MICROCENTS": str(DEFAULT_BUDGET),
            "LEDGER_LITELLM_DEFAULT_BUDGET_TEAM_MICROCENTS": str(TEAM_DEFAULT_BUDGET),
        },
    )
    try:
        yield running
    finally:
        running.stop()
        silent.close()


@pytest.fixture(scope="module")
def book(proxy_db: str) -> Iterator[ledger.Ledger]:
    with ledger.Ledger(proxy_db) as lg:
        yield lg


def client(proxy: litellm_proxy.Proxy, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{proxy.base_url}/v1", api_key=f"sk-nest-{key}", max_retries=0, timeout=120
    )


async def call(c: openai.AsyncOpenAI, model: str = "mock", **extra: Any) -> tuple[int, str, str]:
    """One request: (status, the proxy's reported cost or "", the error message)."""
    try:
        raw = await c.chat.completions.with_raw_response.create(
            model=model, messages=PROMPT, **extra
        )
    except openai.APIStatusError as e:
        return e.status_code, "", str(e)
    cost = raw.headers.get("x-litellm-response-cost") or ""
    raw.parse()
    return 200, cost, ""


def open_holds(proxy_db: str, tenants: list[str]) -> int:
    """Holds at any of ``tenants`` or through any of them (nested holds list their ancestors)."""
    with psycopg.connect(_plain(proxy_db)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger.reservations"
            " WHERE tenant_id = ANY(%s) OR ancestor_ids && %s::text[]",
            (tenants, tenants),
        ).fetchone()
    assert row is not None
    return int(row[0])


def settled(book: ledger.Ledger, tenants: list[str], timeout: float = 30.0) -> None:
    """Wait until LiteLLM's (asynchronous) logging hooks have settled every hold."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [book.tenant(t) for t in tenants]
        if all(r is not None and r.reserved_microcents == 0 for r in rows):
            return
        time.sleep(0.1)


def answer_tokens(proxy: litellm_proxy.Proxy) -> int:
    """How many completion tokens the mock answer reports (creates a calibration tree)."""

    async def main() -> int:
        c = client(proxy, "cal.cal.cal")
        try:
            r = await c.chat.completions.create(model="exact", messages=PROMPT, max_tokens=1000)
        finally:
            await c.close()
        assert r.usage is not None
        return int(r.usage.completion_tokens)

    return asyncio.run(main())


def test_the_team_refuses_and_every_level_is_exact(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger, proxy_db: str
) -> None:
    # The "exact" model's calls cost exactly their worst case, so the team, the
    # tightest level, allows exactly 10 of the 32 calls.
    limit = answer_tokens(proxy)
    worst = worst_case_microcents(
        "openai/gpt-4o-mini", messages=PROMPT, max_tokens=limit, litellm_params=EXACT_PRICES
    )
    team_budget = 10 * worst + worst // 2
    book.ensure_tenant("team:t1", team_budget)
    for user in ("u1", "u2"):
        book.ensure_tenant(f"user:{user}", 100 * worst, parent="team:t1")
    keys = {"k1": "u1", "k2": "u1", "k3": "u2", "k4": "u2"}
    for key, user in keys.items():
        book.ensure_tenant(f"key:{key}", 100 * worst, parent=f"user:{user}")

    async def main() -> list[tuple[str, int, str, str]]:
        clients = {k: client(proxy, f"{k}.{u}.t1") for k, u in keys.items()}
        queue: asyncio.Queue[str] = asyncio.Queue()
        for i in range(32):
            queue.put_nowait(list(keys)[i % len(keys)])
        results: list[tuple[str, int, str, str]] = []

        async def worker() -> None:
            while not queue.empty():
                key = queue.get_nowait()
                results.append((key, *await call(clients[key], "exact", max_tokens=limit)))

        await asyncio.gather(*(worker() for _ in range(8)))
        for c in clients.values():
            await c.close()
        return results

    results = asyncio.run(main())
    ok = [(key, microcents(float(cost))) for key, status, cost, _ in results if status == 200]
    refused = [msg for _, status, _, msg in results if status != 200]
    assert len(results) == 32
    assert len(ok) == 10
    assert all(status in (200, 429) for _, status, _, _ in results)
    assert len(refused) == 22
    assert all("budget refused at team 'team:t1': budget exhausted" in m for m in refused)
    assert all(cost == worst for _, cost in ok)

    levels = ["team:t1", "user:u1", "user:u2", *(f"key:{k}" for k in keys)]
    settled(book, levels)
    spent_by: dict[str, int] = dict.fromkeys(levels, 0)
    for key, cost in ok:
        for level in (f"key:{key}", f"user:{keys[key]}", "team:t1"):
            spent_by[level] += cost
    for level in levels:
        row = book.tenant(level)
        assert row is not None
        assert (level, row.reserved_microcents, row.committed_microcents) == (
            level,
            0,
            spent_by[level],
        )
        assert row.remaining_microcents + row.committed_microcents == row.initial_microcents
    assert spent_by["team:t1"] == 10 * worst
    assert open_holds(proxy_db, levels) == 0


def test_unknown_levels_are_created_under_their_parents(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger, proxy_db: str
) -> None:
    # An existing team; a user and key it has never seen, on 6 concurrent first calls.
    book.ensure_tenant("team:t2", 10**9)

    async def main() -> list[tuple[int, str, str]]:
        c = client(proxy, "new-key.new-user.t2")
        try:
            return await asyncio.gather(*(call(c, max_tokens=20) for _ in range(6)))
        finally:
            await c.close()

    results = asyncio.run(main())
    assert [status for status, _, _ in results] == [200] * 6
    costs = sum(microcents(float(cost)) for _, cost, _ in results)
    levels = ["key:new-key", "user:new-user", "team:t2"]
    settled(book, levels)
    key, user, team = (book.tenant(t) for t in levels)
    assert key is not None and user is not None and team is not None
    assert (key.parent_id, user.parent_id, team.parent_id) == ("user:new-user", "team:t2", None)
    assert (key.initial_microcents, user.initial_microcents) == (DEFAULT_BUDGET, DEFAULT_BUDGET)
    assert team.initial_microcents == 10**9  # an existing level keeps its budget
    for row in (key, user, team):
        assert (row.reserved_microcents, row.committed_microcents) == (0, costs)
    assert open_holds(proxy_db, levels) == 0

    # A whole new tree, organisation included: each level from its default.
    async def org_call() -> tuple[int, str, str]:
        c = client(proxy, "k9.u9.t9.o9")
        try:
            return await call(c, max_tokens=20)
        finally:
            await c.close()

    status, cost, _ = asyncio.run(org_call())
    assert status == 200
    levels = ["key:k9", "user:u9", "team:t9", "org:o9"]
    settled(book, levels)
    rows = [book.tenant(t) for t in levels]
    assert [r.parent_id if r else "missing" for r in rows] == ["user:u9", "team:t9", "org:o9", None]
    assert [r.initial_microcents if r else 0 for r in rows] == [
        DEFAULT_BUDGET,
        DEFAULT_BUDGET,
        TEAM_DEFAULT_BUDGET,
        DEFAULT_BUDGET,
    ]
    assert all(r is not None and r.committed_microcents == microcents(float(cost)) for r in rows)
