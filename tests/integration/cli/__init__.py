"""The ledger command."""
