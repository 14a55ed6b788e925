"""The dashboard's pure parts: number formatting, tenant ids, SVG charts, query parameters, URLs."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ledger import errors
from ledger.dashboard import access, charts, formatting, params, server
from ledger.dashboard.page import href

MAX = 2**63 - 1

# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (-1, "-1"),
        (1_000_000, "1,000,000"),
        (MAX, "9,223,372,036,854,775,807"),
        (-(2**63), "-9,223,372,036,854,775,808"),
        (Decimal(2 * MAX + 2), "18,446,744,073,709,551,616"),  # a numeric sum past 64 bits
        (Decimal("12.000"), "12"),
    ],
)
def test_digits_are_every_digit(value: int | Decimal, text: str) -> None:
    assert formatting.digits(value) == text
    assert int(text.replace(",", "")) == value


def test_amounts_refuse_what_is_not_a_whole_number() -> None:
    for bad in (Decimal("1.5"), 1.0, True, "5"):
        with pytest.raises((TypeError, ValueError)):
            formatting.digits(bad)  # type: ignore[arg-type]


def test_units_are_exact() -> None:
    assert formatting.units(MAX) == "92,233,720,368.54775807"
    assert formatting.units(150_000_000) == "1.50"
    assert formatting.units(Decimal(2 * MAX)) == "184,467,440,737.09551614"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59, "59 s"),
        (60, "1 min"),
        (3600, "1 h"),
        (3660, "1 h 1 min"),
        (90000, "1 d 1 h"),
        (-5, "0 s"),
    ],
)
def test_durations(seconds: int, text: str) -> None:
    assert formatting.duration(seconds) == text


def test_timestamps_are_utc() -> None:
    at = datetime(2026, 11, 1, 1, 2, 3, 456, tzinfo=timezone(timedelta(hours=2)))
    assert formatting.timestamp(at) == "2026-10-31 23:02:03Z"
    assert formatting.iso(at) == "2026-10-31T23:02:03.000456+00:00"
    assert formatting.timestamp(None) == "-"


def test_tenant_ids_show_every_character() -> None:
    assert formatting.visible_id("acme") == [("acme", False)]
    assert formatting.visible_id("a\nb") == [("a", False), ("\\n", True), ("b", False)]
    assert formatting.visible_id(" x ") == [(" x ", False)]  # spaces kept (white-space: pre)
    assert formatting.visible_id("été") == [("été", False)]
    assert formatting.visible_id("\u202eevil") == [("\\u202e", True), ("evil", False)]
    assert formatting.visible_id("\x07\u200b") == [("\\x07", True), ("\\u200b", True)]
    # A backslash-n typed by hand stays text: only real control characters become escapes.
    assert formatting.visible_id("a\\nb") == [("a\\nb", False)]


# ------------------------------------------------------------------ charts


def _rects(svg: str) -> list[dict[str, int]]:
    return [
        {k: int(v) for k, v in re.findall(r'(x|y|width|height|data-value)="(-?\d+)"', rect)}
        for rect in re.findall(r"<rect [^>]*>", svg)
    ]


def test_bar_heights_are_proportional_and_integral() -> None:
    bars = [charts.Bar(str(i), v, f"bar {i}") for i, v in enumerate([0, 10, 20, 40])]
    svg = charts.bar_chart(bars, caption="c", width=400, height=138)  # a plot of 100 px
    rects = _rects(svg)
    assert [r["height"] for r in rects] == [0, 25, 50, 100]
    assert [r["data-value"] for r in rects] == [0, 10, 20, 40]
    assert all(r["y"] + r["height"] == rects[0]["y"] for r in rects)  # all stand on the zero line
    assert not re.search(r'="-?\d+\.\d+"', svg)  # no float coordinates anywhere


def test_negative_bars_hang_below_zero() -> None:
    svg = charts.bar_chart(
        [charts.Bar("a", 30, "a"), charts.Bar("b", -10, "b")],
        caption="c",
        width=200,
        height=138,
    )
    up, down = _rects(svg)
    zero = int(re.search(r'<line x1="0" y1="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    assert up["y"] + up["height"] == zero and down["y"] == zero
    assert (up["height"], down["height"]) == (75, 25)
    assert charts.NEGATIVE in svg and "min -10" in svg


def test_a_tiny_bar_beside_a_huge_one_still_shows() -> None:
    svg = charts.bar_chart([charts.Bar("a", MAX, "a"), charts.Bar("b", 1, "b")], caption="c")
    big, small = _rects(svg)
    assert small["height"] == 1 and big["height"] > 100
    assert "9,223,372,036,854,775,807" in svg


def test_chart_text_is_escaped() -> None:
    svg = charts.bar_chart(
        [charts.Bar("<b>", 1, "<script>alert(1)</script>")], caption='x" onload="y'
    )
    assert "<script" not in svg and "<b>" not in svg and 'onload="y' not in svg
    assert "&lt;script&gt;" in svg


def test_empty_and_all_zero_charts() -> None:
    assert _rects(charts.bar_chart([], caption="none")) == []
    zeros = _rects(charts.bar_chart([charts.Bar("a", 0, "a")] * 3, caption="zeros"))
    assert [r["height"] for r in zeros] == [0, 0, 0]


def test_axis_labels_are_spaced_and_include_both_ends() -> None:
    svg = charts.bar_chart([charts.Bar(f"L{i}", i, "t") for i in range(31)], caption="c", labels=6)
    labels = re.findall(r'class="axis"[^>]*>([^<]+)<', svg)
    assert labels[0] == "L0" and labels[-1] == "L30" and len(labels) == 6


# ------------------------------------------------------------------ parameters


def test_page_numbers() -> None:
    assert params.page({}) == 1
    assert params.page({"page": ["3"]}) == 3
    assert params.page({"page": [" 7 "]}) == 7
    for bad in ("-1", "0", "abc", "1.5", "1e3", "", "99999999999", "٣"):
        with pytest.raises(params.BadParameter, match="page must be a whole number"):
            params.page({"page": [bad]})
    with pytest.raises(params.BadParameter, match="give page once"):
        params.page({"page": ["1", "2"]})


def test_long_values_are_cut_in_messages_only() -> None:
    with pytest.raises(params.BadParameter) as info:
        params.page({"page": ["x" * 500]})
    assert len(str(info.value)) < 150


def test_tenant_ids_and_prefixes() -> None:
    assert params.tenant_id({"id": [" spaced "]}) == " spaced "  # looked up as given
    for given, message in (
        ({}, "which tenant"),
        ({"id": [""]}, "empty"),
        ({"id": ["a\x00b"]}, "NUL"),
        ({"id": ["é" * 128]}, "256 bytes long"),
        ({"id": ["\ud800"]}, "not valid UTF-8"),
    ):
        with pytest.raises(params.BadParameter, match=message):
            params.tenant_id(given)
    assert params.prefix({}) == ""
    with pytest.raises(params.BadParameter, match="NUL"):
        params.prefix({"prefix": ["\x00"]})


def test_choices_and_bounded_numbers() -> None:
    assert params.choice({}, "period", ("day", "week"), default="day") == "day"
    with pytest.raises(params.BadParameter, match="one of day, week"):
        params.choice({"period": ["DAY"]}, "period", ("day", "week"), default="day")
    assert params.whole_number({"h": ["5"]}, "h", default=1, lowest=1, highest=9) == 5
    with pytest.raises(params.BadParameter, match="from 1 to 9"):
        params.whole_number({"h": ["10"]}, "h", default=1, lowest=1, highest=9)


def test_pages_of_a_list() -> None:
    assert [params.last_page(n, 50) for n in (0, 1, 50, 51, 100)] == [1, 1, 1, 2, 2]
    params.check_page(2, 51, 50, "x")
    with pytest.raises(params.NotFound, match="page 3 does not exist: x has 2 pages"):
        params.check_page(3, 51, 50, "x")
    assert params.group([("a", "1"), ("b", "2"), ("a", "3")]) == {"a": ["1", "3"], "b": ["2"]}


def test_links_encode_everything() -> None:
    assert href("/tenant", id="a b&c=d\n", page=None) == "/tenant?id=a+b%26c%3Dd%0A"
    assert href("/") == "/"


# ------------------------------------------------------------------ access and binding


def test_database_urls() -> None:
    assert access.conninfo("postgresql+psycopg://u:p@h:5/d") == "postgresql://u:p@h:5/d"
    assert access.conninfo("postgresql://u@/d?host=/tmp/x") == "postgresql://u@/d?host=%2Ftmp%2Fx"
    for bad in ("", "   ", "not a url", "mysql://u@h/d"):
        with pytest.raises(errors.InputError):
            access.conninfo(bad)
    with pytest.raises(errors.InputError) as info:
        access.conninfo("nonsense with a secret")
    assert "secret" not in str(info.value)  # the URL (maybe a password) is never repeated


def test_what_counts_as_loopback() -> None:
    assert all(
        server.is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost")
    )
    assert not any(server.is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org"))
    assert server.allowed_hosts("0.0.0.0") is None
    assert server.allowed_hosts("::") is None
    assert server.allowed_hosts("10.0.0.1") == {"10.0.0.1", "127.0.0.1", "localhost", "::1"}


def test_bind_reports_a_busy_port() -> None:
    first = server.bind("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        assert server.url_of(first) == f"http://127.0.0.1:{port}/"
        with pytest.raises(errors.LedgerError, match=f"cannot listen on 127.0.0.1:{port}"):
            server.bind("127.0.0.1", port)
    finally:
        first.close()
