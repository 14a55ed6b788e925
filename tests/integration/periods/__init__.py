"""Allowances and periods, corrections, as-of queries."""
