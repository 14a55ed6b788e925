"""``ledger dashboard``: a real server process, a real browser, as a login holding only the auditor role.

The module's ledger has a history spread over five months (written with the
ledger's own statements, their ``now()`` bound to past times, so the journal
still verifies), live holds (one lapsed), refunds, refusals, a certificate,
tenants at 2**63-1 and tenant ids that try to break the markup. One
dashboard process serves it through a login that holds ``ledger_auditor``
and nothing else, behind a token; Debian's Chromium (tests/browser.py) loads
every page, and the tests compare what it renders with the Python API.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import make_url

import ledger
from ledger import _queries, cli, errors
from ledger.audit import grant_auditor
from ledger.dashboard import access as dash_access
from ledger.roles import grant_application
from tests.browser import Browser, find, save
from tests.conftest import _plain, drop_database, make_database

TOKEN = secrets.token_urlsafe(24)
MAX = 2**63 - 1
ODD_IDS = ["new\nline", "<b>bold</b> & co", " spaced ", "été-ü"]
ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------ the ledger


def _at(sql: str) -> str:
    """One of the ledger's own statements with its clock bound to %(at)s."""
    return sql.replace("now()", "CAST(%(at)s AS timestamptz)")


def backdated_history(raw: psycopg.Connection, tenant: str, budget: int, spends: list[Any]) -> None:
    """Create ``tenant`` and settle holds at past times, through the ledger's statements."""
    q = _queries.for_schema("ledger")
    first = spends[0][0] - timedelta(hours=1)
    raw.execute(
        _at(q.ensure_tenant),
        {"tenant_id": tenant, "budget": budget, "ikey": None, "at": first, "parent": None},
    )
    for at, hold, actual in spends:
        reserved = raw.execute(
            _at(q.try_reserve),
            {
                "tenant_id": tenant,
                "amount": hold,
                "ttl_us": None,
                "expires_at": None,
                "ikey": None,
                "at": at,
            },
        ).fetchone()
        assert reserved is not None and reserved[0] == "reserved", reserved
        done = raw.execute(
            _at(q.commit_for_tenant),
            {
                "reservation_id": reserved[4],
                "actual": actual,
                "ikey": None,
                "tenant_id": tenant,
                "at": at + timedelta(minutes=5),
            },
        ).fetchone()
        assert done is not None and done[0] == "committed", done
    # The row's own creation time is not journaled; make it agree with the history.
    raw.execute("UPDATE ledger.tenants SET created_at = %s WHERE tenant_id = %s", (first, tenant))


def lapsed_hold(raw: psycopg.Connection, tenant: str, amount: int, deadline: datetime) -> None:
    """A hold whose deadline has passed, through the ledger's own statement.

    ``try_reserve`` refuses a deadline in the past (a hold born lapsed); the
    statement itself takes any deadline, as a hold that outlived its own has.
    """
    q = _queries.for_schema("ledger")
    params = {"tenant_id": tenant, "amount": amount, "ttl_us": None, "ikey": None}
    held = raw.execute(q.try_reserve, {**params, "expires_at": deadline}).fetchone()
    assert held is not None and held[0] == "reserved", held


def populate(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    days = (150, 120, 95, 64, 33, 12, 3)
    history = [
        (now - timedelta(days=d), 9_000_000, 1_000_000 * (i + 2)) for i, d in enumerate(days)
    ]
    backdated_history(raw, "acme", 500_000_000, history)
    book.set_max_reserved_microcents("acme", 40_000_000)
    assert book.try_reserve("acme", 41_000_000).status == "exposure_limit_exceeded"
    hold = book.try_reserve("acme", 3_000_000)
    book.commit(hold.reservation_id, 2_500_000, tenant_id="acme")  # type: ignore[arg-type]
    book.refund("acme", hold.reservation_id, 400_000, reason="a test refund")  # type: ignore[arg-type]
    for _ in range(60):  # a journal of more than one page
        book.top_up_tenant("acme", 1)
    book.certify()
    for i, tid in enumerate(ODD_IDS):
        book.ensure_tenant(tid, 1_000_000 + i)
        h = book.try_reserve(tid, 1_000 + i)
        book.commit(h.reservation_id, 500 + i, tenant_id=tid)  # type: ignore[arg-type]
    book.ensure_tenant("max", MAX)
    h = book.try_reserve("max", MAX)
    book.commit(h.reservation_id, MAX, tenant_id="max")  # type: ignore[arg-type]
    book.ensure_tenant("max-untouched", MAX)  # the ledger-wide sums pass 2**64
    book.ensure_tenant("broke", 10)
    assert book.try_reserve("broke", 11).status == "insufficient"
    assert book.try_reserve("broke", 12).status == "insufficient"
    # Last, since a refused reserve of the tenant would expire a lapsed hold.
    book.try_reserve("acme", 250_000)  # open, no deadline
    lapsed_hold(raw, "acme", 100_000, now - timedelta(hours=1))
    assert book.verify_journal().ok


@contextmanager
def login_role(admin_url: str, granted: str | None) -> Iterator[tuple[str, str]]:
    """A LOGIN role holding ``granted`` (or nothing): yields (name, password); dropped after."""
    name = f"dash_{uuid.uuid4().hex[:10]}"
    password = secrets.token_hex(12)
    with psycopg.connect(_plain(admin_url), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
        if granted:
            conn.execute(f'GRANT "{granted}" TO "{name}"')
    try:
        yield name, password
    finally:
        with psycopg.connect(_plain(admin_url), autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


def as_login(url: str, name: str, password: str) -> str:
    return make_url(url).set(username=name, password=password).render_as_string(hide_password=False)


@contextmanager
def dashboard(url: str, *args: str, token: str | None = None) -> Iterator[str]:
    """``ledger dashboard --port 0`` as a real process; yields its base URL (no trailing /).

    ``token`` goes in LEDGER_DASHBOARD_TOKEN, as an operator would keep it out of ``ps``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    if token is not None:
        env["LEDGER_DASHBOARD_TOKEN"] = token
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", "--database-url", url, "dashboard", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not found:
            proc.kill()
            raise AssertionError(f"dashboard did not start: {line!r} {proc.stderr.read()!r}")
        yield found.group(0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            errors_seen = proc.stderr.read()
            proc.stderr.close()
            assert "Traceback" not in errors_seen, errors_seen


@pytest.fixture(scope="module")
def module_db(server_url: str, template_db: str) -> Iterator[str]:
    name = make_database(server_url, template_db)
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def book_m(module_db: str) -> Iterator[ledger.Ledger]:
    with ledger.Ledger(module_db) as lg:
        yield lg


@pytest.fixture(scope="module")
def raw_m(module_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(_plain(module_db), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def auditor_url(module_db: str, book_m: ledger.Ledger, raw_m: psycopg.Connection) -> Iterator[str]:
    """The populated ledger, as a login that holds ledger_auditor and nothing else."""
    populate(book_m, raw_m)
    grant_auditor(module_db)
    with login_role(module_db, "ledger_auditor") as (name, password):
        yield as_login(module_db, name, password)


@pytest.fixture(scope="module")
def dash(auditor_url: str) -> Iterator[str]:
    with dashboard(auditor_url, token=TOKEN) as base:
        yield base


@pytest.fixture(scope="module")
def browser(dash: str) -> Iterator[Browser]:
    b = Browser(*find())
    try:
        b.size(1280, 1000)
        b.get(f"{dash}/?token={TOKEN}")  # sets the cookie; the address loses the token
        assert b.url == f"{dash}/"
        yield b
    finally:
        b.close()


@pytest.fixture
def http(dash: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dash, headers={"authorization": f"Bearer {TOKEN}"}) as c:
        yield c


# ------------------------------------------------------------------ in a browser

AMOUNTS_JS = """
return Array.from(document.querySelectorAll(arguments[0] + ' .amount')).map(e => [
  e.innerText, e.dataset.microcents, e.scrollWidth, Math.ceil(e.getBoundingClientRect().width)])
"""


def amounts(b: Browser, within: str = "body") -> list[int]:
    """Every amount shown under ``within``: each rendered text must be its exact value."""
    found = []
    for text, raw, scroll, width in b.run(AMOUNTS_JS, within):
        assert text.replace(",", "") == raw, (text, raw)
        assert scroll <= width, f"{text} is cut ({scroll} > {width})"
        found.append(int(raw))
    return found


def field(b: Browser, selector: str) -> int:
    (value,) = amounts(b, selector)
    return value


def number(b: Browser, selector: str) -> int:
    return int(b.text(selector).replace(",", ""))


def test_overview_numbers_are_the_apis(
    browser: Browser, dash: str, book_m: ledger.Ledger, raw_m: psycopg.Connection
) -> None:
    browser.get(f"{dash}/")
    snap = book_m.snapshot()
    stats = book_m.stats(minutes=24 * 60, top=10)
    assert book_m.verify_conservation().is_balanced
    assert browser.run("return document.querySelector('#check-conservation').dataset.ok") == "true"
    assert number(browser, "#check-conservation [data-field=tenants]") == len(snap.tenants)
    assert number(browser, "#check-conservation [data-field=violations]") == 0
    for name in ("initial", "remaining", "reserved", "committed"):
        expected = sum(getattr(t, f"{name}_microcents") for t in snap.tenants)
        assert field(browser, f"#totals [data-field={name}]") == expected
    assert field(browser, "#totals [data-field=initial]") > 2**64  # exact past 64 bits
    assert number(browser, "#check-holds [data-field=open_holds]") == stats.open_holds == 2
    assert number(browser, "#check-holds [data-field=lapsed_holds]") == stats.lapsed_holds == 1
    spenders = browser.run(
        "return Array.from(document.querySelectorAll('#top-spenders tr[data-tenant]'))"
        ".map(r => [r.dataset.tenant, r.querySelector('[data-field=committed] .amount').dataset.microcents])"
    )
    assert [(t, int(c)) for t, c in spenders] == list(stats.top_spenders)
    assert spenders[0] == ["max", str(MAX)]
    assert "9,223,372,036,854,775,807" in browser.text("#top-spenders")
    entries = raw_m.execute("SELECT count(*) FROM ledger.journal").fetchone()[0]  # type: ignore[index]
    assert browser.run("return document.querySelector('#check-journal').dataset.ok") == "true"
    assert number(browser, "#check-journal [data-field=entries]") == entries
    latest = raw_m.execute("SELECT max(certificate_id) FROM ledger.certificates").fetchone()[0]  # type: ignore[index]
    assert number(browser, "#check-certificate [data-field=certificate_id]") == latest
    assert "as role ledger_auditor" in browser.text("footer")


def test_refusals_are_the_apis(browser: Browser, dash: str, book_m: ledger.Ledger) -> None:
    """Refusals over time, read as the auditor through the view refusal_log (revision 0008)."""
    browser.get(f"{dash}/")
    stats = book_m.stats(minutes=24 * 60)
    assert stats.refused == 3
    assert number(browser, "#check-refusals [data-field=refusals]") == stats.refused
    shown = browser.run(
        "return Array.from(document.querySelectorAll('#refusals-by-status tr')).slice(1)"
        ".map(r => [r.dataset.op, r.dataset.status, Number(r.querySelector('[data-field=n]').innerText)])"
    )
    assert [tuple(x) for x in shown] == list(stats.refusals)
    bars = browser.run(
        "return Array.from(document.querySelectorAll('#refusals rect.bar')).map(r => Number(r.dataset.value))"
    )
    assert len(bars) == 24 and sum(bars) == stats.refused
    browser.get(f"{dash}/?hours=1")
    assert (
        number(browser, "#check-refusals [data-field=refusals]") == book_m.stats(minutes=60).refused
    )


def test_every_amount_shows_every_digit_on_a_narrow_screen(browser: Browser, dash: str) -> None:
    browser.size(360, 800)
    try:
        for path in ("/", "/tenants", "/tenant?id=max", "/tenant?id=acme&period=month"):
            browser.get(dash + path)
            shown = amounts(browser)
            assert shown, path
            if path != "/tenant?id=acme&period=month":
                assert MAX in shown, path
    finally:
        browser.size(1280, 1000)


def test_tenant_page_is_the_apis(
    browser: Browser, dash: str, book_m: ledger.Ledger, raw_m: psycopg.Connection
) -> None:
    browser.get(f"{dash}/tenant?id=acme&period=month")
    row = book_m.tenant("acme")
    assert row is not None
    for name in ("initial", "remaining", "reserved", "committed"):
        assert field(browser, f"#balances [data-field={name}]") == getattr(
            row, f"{name}_microcents"
        )
    assert field(browser, "#balances [data-field=cap]") == book_m.max_reserved_microcents("acme")
    # Open holds: exactly the tenant's, the lapsed one marked.
    holds = raw_m.execute(
        "SELECT reservation_id, amount_microcents, expires_at <= now() FROM ledger.reservations"
        " WHERE tenant_id = 'acme' ORDER BY created_at, reservation_id"
    ).fetchall()
    shown = browser.run(
        "return Array.from(document.querySelectorAll('#holds tr[data-reservation]')).map(r => [Number(r.dataset.reservation),"
        " r.querySelector('[data-field=amount] .amount').dataset.microcents, r.classList.contains('lapsed')])"
    )
    assert [(r, int(a), lapsed) for r, a, lapsed in shown] == [
        (r, a, bool(lapsed)) for r, a, lapsed in holds
    ]
    assert number(browser, "#holds [data-field=holds_total]") == len(holds) == 2
    # Spend per period: each period in the table is what spend_between says of it, and the
    # bars (zeros included) add up to spend_between over the chart's whole window.
    for period, bars_expected in (("month", 12), ("week", 26), ("day", 31)):
        browser.get(f"{dash}/tenant?id=acme&period={period}")
        rows = browser.run(
            "return Array.from(document.querySelectorAll('#spend-table tr[data-starts]')).map(r => [r.dataset.starts,"
            " r.dataset.ends, Number(r.querySelector('[data-field=spent] .amount').dataset.microcents)])"
        )
        for starts, ends, spent in rows:
            lo, hi = datetime.fromisoformat(starts), datetime.fromisoformat(ends)
            assert (
                spent == book_m.spend_between(lo, hi, tenant_id="acme").get("acme").spent_microcents
            )
        bars = browser.run(
            "return Array.from(document.querySelectorAll('#spend rect.bar')).map(r => Number(r.dataset.value))"
        )
        assert len(bars) == bars_expected and sum(bars) == sum(s for *_, s in rows)
        lo, hi = (
            datetime.fromisoformat(
                browser.run(f"return document.querySelector('#spend-chart').dataset.{k}")
            )
            for k in ("starts", "ends")
        )
        assert (
            sum(bars) == book_m.spend_between(lo, hi, tenant_id="acme").get("acme").spent_microcents
        )
        if period == "month":
            assert len(rows) >= 5  # the history spans at least five calendar months
    browser.get(f"{dash}/tenant?id=acme")
    # The journal, newest first, 50 a page; the older link goes to page 2.
    journal = raw_m.execute(
        "SELECT seq, op, amount_microcents, remaining_microcents FROM ledger.journal WHERE tenant_id = 'acme' ORDER BY seq DESC"
    ).fetchall()
    page = browser.run(
        "return Array.from(document.querySelectorAll('#journal-table tr[data-seq]')).map(r => Number(r.dataset.seq))"
    )
    assert page == [s for s, *_ in journal[:50]]
    remaining = amounts(browser, "#journal-table [data-field=remaining]")
    assert remaining == [r for *_, r in journal[:50]]
    browser.click("#journal a[rel=next]")
    assert "page=2" in browser.url
    page2 = browser.run(
        "return Array.from(document.querySelectorAll('#journal-table tr[data-seq]')).map(r => Number(r.dataset.seq))"
    )
    assert page2 == [s for s, *_ in journal[50:100]]


def test_odd_tenant_ids_are_shown_as_they_are(
    browser: Browser, dash: str, book_m: ledger.Ledger
) -> None:
    browser.get(f"{dash}/tenants")
    listed = browser.run(
        "return Array.from(document.querySelectorAll('#tenant-list tr[data-tenant]')).map(r => r.dataset.tenant)"
    )
    assert listed == [
        t.tenant_id for t in book_m.snapshot().tenants
    ]  # byte order, as the ledger sorts
    for tid in ODD_IDS:
        link = browser.run(
            "return Array.from(document.querySelectorAll('#tenant-list a.tid')).find(a => a.dataset.tenant === arguments[0])"
            ".getAttribute('href')",
            tid,
        )
        browser.get(dash + link)
        assert browser.run("return document.querySelector('h1 .tid').dataset.tenant") == tid
        assert (
            browser.run("return document.querySelectorAll('main b').length") == 0
        )  # markup stays text
        row = book_m.tenant(tid)
        assert (
            row is not None
            and field(browser, "#balances [data-field=initial]") == row.initial_microcents
        )
        browser.get(f"{dash}/tenants")
    browser.get(f"{dash}/tenant?id=new%0Aline")
    assert browser.text("h1") == "Tenant new\\nline"  # the newline is shown, as an escape
    assert browser.text("h1 .esc") == "\\n"


def test_bad_addresses_are_clear_pages_in_the_browser(browser: Browser, dash: str) -> None:
    browser.get(f"{dash}/tenant?id=nobody")
    assert browser.text("h1") == "404 Not Found"
    assert "there is no tenant 'nobody'" in browser.text(".message")
    browser.get(f"{dash}/tenant?id=acme&page=-1")
    assert browser.text("h1") == "400 Bad Request"
    assert "page must be a whole number" in browser.text(".message")


def test_screenshots(browser: Browser, dash: str, tmp_path: Path) -> None:
    """PNGs of the overview (whole) and a tenant (its top); LEDGER_DASHBOARD_SCREENSHOTS=dir keeps them.

    docs/dashboard.png and docs/dashboard-tenant.png are made this way.
    """
    keep = os.environ.get("LEDGER_DASHBOARD_SCREENSHOTS")
    where = Path(keep) if keep else tmp_path
    try:
        browser.get(f"{dash}/")
        save(browser.full_page_screenshot(1280), where / "dashboard.png")
        browser.get(f"{dash}/tenant?id=acme&period=month")
        browser.size(1280, 1500)
        save(browser.screenshot(), where / "dashboard-tenant.png")
    finally:
        browser.size(1280, 1000)


# ------------------------------------------------------------------ over HTTP


def test_the_token_is_required(dash: str) -> None:
    with httpx.Client(base_url=dash) as c:
        for headers in (
            {},
            {"authorization": "Bearer wrong-token-wrong-token"},
            {"cookie": "ledger_dashboard_1=x"},
        ):
            r = c.get("/", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "Traceback" not in r.text
            assert "needs its access token" in r.text or "not this dashboard" in r.text
        assert c.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get(f"/tenant?id=acme&token=wrong{TOKEN}").status_code == 401
        # ?token= once: a cookie (not the token itself), and the same address without it.
        r = c.get(f"/tenant?id=acme&token={TOKEN}&period=week")
        assert r.status_code == 303 and r.headers["location"] == "/tenant?id=acme&period=week"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert c.get("/tenant?id=acme&period=week").status_code == 200  # the client kept the cookie
        r = c.get(httpx.URL(f"{dash}//evil.example/?token={TOKEN}"))
        assert (
            r.status_code == 303
            and r.headers["location"].startswith("/")
            and not r.headers["location"].startswith("//")
        )


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_nothing_but_get_and_head(dash: str, method: str) -> None:
    with httpx.Client(base_url=dash) as c:
        for path in ("/", "/tenant?id=acme", "/tenants", "/static/dashboard.css", "/nowhere"):
            for headers in ({}, {"authorization": f"Bearer {TOKEN}"}):
                r = c.request(method, path, headers=headers, content=b"x=1")
                assert r.status_code == 405, (method, path)
                assert r.headers["allow"] == "GET, HEAD"


def test_head_and_security_headers(http: httpx.Client) -> None:
    head = http.head("/")
    assert head.status_code == 200 and head.content == b""
    for path, status in (
        ("/", 200),
        ("/nowhere", 404),
        ("/static/dashboard.css", 200),
        ("/tenant", 400),
    ):
        r = http.get(path)
        assert r.status_code == status, path
        assert "script-src" not in r.headers["content-security-policy"]
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert "<script" not in http.get("/").text.lower()


def test_a_foreign_host_name_is_refused(http: httpx.Client, dash: str) -> None:
    """A page on another site cannot read the dashboard by pointing its name at 127.0.0.1."""
    assert http.get("/", headers={"host": "evil.example"}).status_code == 400
    port = dash.rsplit(":", 1)[1]
    assert http.get("/", headers={"host": f"localhost:{port}"}).status_code == 200


BAD = [
    ("/tenant?id=acme&page=-1", 400, "page must be a whole number from 1"),
    ("/tenant?id=acme&page=abc", 400, "got &#39;abc&#39;"),
    ("/tenant?id=acme&page=0", 400, "page must be a whole number"),
    ("/tenant?id=acme&page=1.5", 400, "page must be a whole number"),
    ("/tenant?id=acme&page=99999999999", 400, "page must be a whole number"),
    ("/tenant?id=acme&page=1&page=2", 400, "give page once"),
    (
        "/tenant?id=acme&page=9",
        404,
        "page 9 does not exist: the journal of &#39;acme&#39; has 2 pages",
    ),
    ("/tenant?id=acme&period=year", 400, "period must be one of day, week, month"),
    ("/tenant?id=nobody", 404, "there is no tenant &#39;nobody&#39;"),
    ("/tenant", 400, "which tenant?"),
    ("/tenant?id=", 400, "id is empty"),
    ("/tenant?id=a%00b", 400, "NUL"),
    ("/tenant?id=" + "x" * 300, 400, "at most 255 bytes"),
    ("/tenant?id=%FF%FE", 404, "there is no tenant"),
    ("/tenants?page=-1", 400, "page must be a whole number"),
    ("/tenants?page=2", 404, "the list of tenants has 1 page"),
    ("/tenants?prefix=%00", 400, "NUL"),
    ("/?hours=0", 400, "hours must be a whole number from 1"),
    ("/?hours=abc", 400, "hours must be a whole number"),
    ("/nowhere", 404, "There is no page at /nowhere"),
]


@pytest.mark.parametrize(("path", "status", "message"), BAD)
def test_bad_parameters_are_clear_4xx_pages(
    http: httpx.Client, path: str, status: int, message: str
) -> None:
    r = http.get(path)
    assert r.status_code == status
    assert message in r.text
    assert "Traceback" not in r.text and r.headers["content-type"].startswith("text/html")


def test_good_parameters_work(http: httpx.Client) -> None:
    for path in (
        "/?hours=1",
        "/?hours=168",
        "/tenants?prefix=ac",
        "/tenants?prefix=zzz",
        "/tenant?id=acme&page=2",
        "/tenant?id=acme&period=week&unknown=1",
    ):
        assert http.get(path).status_code == 200, path


def test_a_tampered_ledger_turns_the_checks_red(
    db_url: str, book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    book.ensure_tenant("b", 1_000)
    book.try_reserve("b", 100)
    book.ensure_tenant("huge", MAX)
    book.ensure_tenant("huge2", MAX)
    assert not book.certify().conservation_balanced  # totals past 64 bits: recorded as zero
    raw.execute("ALTER TABLE ledger.tenants DROP CONSTRAINT tenants_conservation")
    raw.execute(
        "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents + 5 WHERE tenant_id = 'a'"
    )
    raw.execute(
        "UPDATE ledger.tenants SET reserved_microcents = reserved_microcents + 3,"
        " remaining_microcents = remaining_microcents - 3 WHERE tenant_id = 'b'"
    )
    assert not book.verify_conservation().is_balanced and not book.verify_journal().ok
    grant_auditor(db_url)
    with dashboard(db_url) as base, httpx.Client(base_url=base) as c:
        page = c.get("/").text
    assert re.search(r'id="check-conservation" data-ok="false"', page)
    assert re.search(r'id="check-reserved" data-ok="false"', page)
    assert re.search(r'id="check-journal" data-ok="false"', page)
    assert re.search(r'id="check-certificate" data-ok="false"', page)
    assert "do not fit in 64 bits" in page
    assert 'data-field="violations">1<' in page and 'data-field="mismatches">1<' in page
    assert 'data-field="differing">2<' in page
    assert "the row&#39;s balances differ from its head entry" in page
    assert 'data-microcents="5"' in page  # off by 5


# ------------------------------------------------------------------ access


def test_the_dashboards_connections_cannot_write(auditor_url: str) -> None:
    found = dash_access.check(auditor_url)
    assert found.role == "ledger_auditor" and found.login.startswith("dash_")

    async def probe() -> list[Any]:
        db = dash_access.Database(found, max_size=1)
        await db.open()
        seen: list[Any] = []
        try:
            async with db.snapshot() as conn:
                row = await (
                    await conn.execute(
                        "SELECT current_user, current_setting('transaction_read_only'), current_setting('transaction_isolation')"
                    )
                ).fetchone()
                seen.append(row)
            for sql in (
                "UPDATE ledger.tenants SET remaining_microcents = 0",
                "INSERT INTO ledger.journal (tenant_id, seq) VALUES ('x', 1)",
                "SELECT * FROM ledger.tenants",
                "SELECT * FROM ledger.refusals",  # the view refusal_log, not the table
                "CREATE TABLE ledger.x (a int)",
            ):
                with pytest.raises(
                    (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)
                ):
                    async with db.snapshot() as conn:
                        await conn.execute(sql)
                seen.append(sql)
        finally:
            await db.close()
        return seen

    seen = asyncio.run(probe())
    assert seen[0] == ("ledger_auditor", "on", "repeatable read")
    assert len(seen) == 6  # the row, then every refused statement


def test_check_says_what_is_wrong(db_url: str, empty_db_url: str) -> None:
    grant_auditor(db_url)
    grant_application(db_url, "ledger_app")
    with (
        login_role(db_url, None) as (name, password),
        pytest.raises(errors.PermissionDenied, match=rf'GRANT "ledger_auditor" TO "{name}"'),
    ):
        dash_access.check(as_login(db_url, name, password))
    with pytest.raises(
        errors.PermissionDenied, match=r"does not exist.*ledger grant-auditor nosuch_role"
    ):
        dash_access.check(db_url, role="nosuch_role")
    with pytest.raises(errors.PermissionDenied, match="'ledger_app' can change ledger"):
        dash_access.check(db_url, role="ledger_app")
    with (
        login_role(db_url, None) as (bare, _),
        pytest.raises(errors.PermissionDenied, match=f"'{bare}' cannot read"),
    ):
        dash_access.check(db_url, role=bare)
    with pytest.raises(errors.SchemaNotMigrated, match="ledger migrate"):
        dash_access.check(empty_db_url)
    with pytest.raises(errors.SchemaNotMigrated, match="no schema 'elsewhere'"):
        dash_access.check(db_url, schema="elsewhere")
    with pytest.raises(errors.InputError):
        dash_access.check(db_url, role="Robert'); DROP")
    ledger.migrate(empty_db_url, "0007")  # before the view refusal_log
    with pytest.raises(errors.SchemaNotMigrated, match=r"refusal_log.*run `ledger migrate`"):
        dash_access.check(empty_db_url)


def _cli(*argv: str) -> Any:
    return CliRunner().invoke(cli.main, list(argv), catch_exceptions=False)


def test_the_command_fails_clearly(db_url: str, empty_db_url: str) -> None:
    grant_auditor(db_url)
    cases = [
        (["--database-url", empty_db_url, "dashboard"], cli.EXIT_DATABASE, "migrate it first"),
        (["--database-url", "not a url", "dashboard"], cli.EXIT_BAD_INPUT, "not a PostgreSQL URL"),
        (
            ["--database-url", "mysql://u@localhost/db", "dashboard"],
            cli.EXIT_BAD_INPUT,
            "not PostgreSQL",
        ),
        (
            ["--database-url", "postgresql://u@127.0.0.1:1/db", "dashboard"],
            cli.EXIT_DATABASE,
            "could not connect to PostgreSQL",
        ),
        (
            ["--database-url", db_url, "dashboard", "--host", "0.0.0.0"],
            cli.EXIT_BAD_INPUT,
            "without a token",
        ),
        (
            ["--database-url", db_url, "dashboard", "--token", "short"],
            cli.EXIT_BAD_INPUT,
            "at least 16 characters",
        ),
        (
            ["--database-url", db_url, "dashboard", "--role", "nosuch_role"],
            cli.EXIT_DATABASE,
            "ledger grant-auditor",
        ),
        (["--database-url", db_url, "dashboard", "--port", "70000"], cli.EXIT_BAD_INPUT, "70000"),
    ]
    for argv, code, message in cases:
        result = _cli(*argv)
        assert result.exit_code == code, (argv, result.output)
        assert message in result.output, (argv, result.output)
        assert "Traceback" not in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        result = _cli("--database-url", db_url, "dashboard", "--port", port)
    assert result.exit_code == cli.EXIT_DATABASE and "cannot listen on 127.0.0.1" in result.output


def test_a_real_process_with_no_server_prints_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger",
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/x",
            "dashboard",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == cli.EXIT_DATABASE
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: could not connect to PostgreSQL")
