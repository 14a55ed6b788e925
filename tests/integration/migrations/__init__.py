"""Schema revisions: upgrades, locks, alembic in host applications."""
