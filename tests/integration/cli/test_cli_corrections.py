"""``ledger refund`` and ``ledger adjust``: JSON output, units, keys and exit codes."""

from __future__ import annotations

import pytest

from ledger import cli
from tests.integration.cli.test_cli import data, invoke


def _committed(url: str, tenant: str, hold: str, actual: str) -> int:
    rid = data(invoke(url, "reserve", tenant, hold))["reservation_id"]
    assert invoke(url, "commit", str(rid), actual, "--tenant", tenant).exit_code == 0
    return int(rid)


def test_refund_and_adjust_commands(db_url: str) -> None:
    assert invoke(db_url, "tenant", "create", "acme", "1000000").exit_code == 0
    rid = _committed(db_url, "acme", "300000", "250000")
    done = invoke(db_url, "refund", "acme", str(rid), "100000", "--reason", "ticket 7")
    assert done.exit_code == 0, done.output
    assert data(done) == {
        "status": "refunded",
        "reservation_id": rid,
        "refunded_microcents": 100_000,
        "left_microcents": 150_000,
        "remaining_microcents": 850_000,
        "committed_microcents": 150_000,
    }
    down = invoke(db_url, "adjust", "acme", "-50000", "--reason", "clawback", "--key", "a1")
    assert down.exit_code == 0, down.output
    assert data(down)["new_initial_microcents"] == 950_000
    again = invoke(db_url, "adjust", "acme", "-50000", "--reason", "clawback", "--key", "a1")
    assert data(again) == data(down)
    up = invoke(db_url, "adjust", "acme", "0.001", "--units", "--reason", "goodwill")
    assert data(up)["adjusted_microcents"] == 100_000
    shown = data(invoke(db_url, "tenant", "show", "acme"))
    assert (shown["initial_microcents"], shown["remaining_microcents"]) == (1_050_000, 900_000)
    assert invoke(db_url, "verify").exit_code == 0


def test_human_output(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "acme", "1000")
    rid = _committed(db_url, "acme", "500", "500")
    result = invoke(db_url, "refund", "acme", str(rid), "200", "--reason", "r", as_json=False)
    assert result.exit_code == 0
    assert "refunded" in result.output and "left_microcents: 300 µ¢" in result.output


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["refund", "acme", "RID", "501", "--reason", "r"], "refund_exceeds_commit"),
        (["refund", "acme", "999999", "1", "--reason", "r"], "unknown_commit"),
        (["refund", "nobody", "RID", "1", "--reason", "r"], "missing_tenant"),
        (["adjust", "acme", "-501", "--reason", "r"], "insufficient"),
        (["adjust", "acme", str(2**63 - 1), "--reason", "r"], "overflow"),
        (["adjust", "nobody", "5", "--reason", "r"], "missing_tenant"),
    ],
)
def test_refusals_exit_1(db_url: str, args: list[str], status: str) -> None:
    invoke(db_url, "tenant", "create", "acme", "1000")
    rid = _committed(db_url, "acme", "500", "500")
    result = invoke(db_url, *(str(rid) if a == "RID" else a for a in args))
    assert result.exit_code == cli.EXIT_REFUSED, result.output
    assert data(result)["status"] == status


@pytest.mark.parametrize(
    "args",
    [
        ["refund", "acme", "RID", "0", "--reason", "r"],
        ["refund", "acme", "RID", "-5", "--reason", "r"],
        ["refund", "acme", "RID", "1.5", "--reason", "r"],
        ["refund", "acme", "RID", "1", "--reason", ""],
        ["refund", "acme", "RID", "1"],
        ["refund", "acme", "notanid", "1", "--reason", "r"],
        ["adjust", "acme", "0", "--reason", "r"],
        ["adjust", "acme", "5", "--reason", " "],
        ["adjust", "acme", "5"],
        ["adjust", "acme", "five", "--reason", "r"],
    ],
)
def test_bad_input_exits_2_and_changes_nothing(db_url: str, args: list[str]) -> None:
    invoke(db_url, "tenant", "create", "acme", "1000")
    rid = _committed(db_url, "acme", "500", "500")
    before = data(invoke(db_url, "tenant", "show", "acme"))
    result = invoke(db_url, *(str(rid) if a == "RID" else a for a in args))
    assert result.exit_code == cli.EXIT_BAD_INPUT, result.output
    assert data(invoke(db_url, "tenant", "show", "acme")) == before


def test_same_key_different_refund_exits_2(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "acme", "1000")
    rid = str(_committed(db_url, "acme", "500", "500"))
    assert invoke(db_url, "refund", "acme", rid, "5", "--reason", "r", "--key", "k").exit_code == 0
    clash = invoke(db_url, "refund", "acme", rid, "6", "--reason", "r", "--idempotency-key", "k")
    assert clash.exit_code == cli.EXIT_BAD_INPUT and "different request" in data(clash)["error"]
