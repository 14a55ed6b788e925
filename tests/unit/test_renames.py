"""Modules renamed by issue 23 that users may import keep their old names."""

from __future__ import annotations

import ledger.certificates
import ledger.finance


def test_ledger_finance_is_the_old_name_of_ledger_certificates() -> None:
    for name in ledger.finance.__all__:
        assert getattr(ledger.finance, name) is getattr(ledger.certificates, name)
    assert ledger.finance.__all__  # not an empty shell
