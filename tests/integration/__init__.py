"""Tests that talk to a real PostgreSQL server, one folder per area of the library."""
