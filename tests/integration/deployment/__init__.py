"""Deployment: installs, URLs, PgBouncer, failover, replicas, backups, roles, certificates."""
