"""The pgbench baseline runs the ledger's own statements: its script must stay valid.

pgbench takes one SQL command per line. The statements in ledger/sql carry
their own ``--`` comments; flattened as they are, the first comment would
swallow the rest of the command (a smoke run in CI found that once).
"""

from __future__ import annotations

from bench.baselines import pgbench_script
from ledger._queries import for_schema


def test_pgbench_script_is_one_comment_free_line_per_command() -> None:
    script = pgbench_script(for_schema("ledger"), 10)
    commands = [line for line in script.splitlines() if not line.startswith("\\")]
    assert len(commands) == 2  # reserve, commit
    for command in commands:
        assert "--" not in command
        assert "%(" not in command and ":tid" in command
        assert command.startswith("WITH")
