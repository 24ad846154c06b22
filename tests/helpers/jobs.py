"""A claimed job as a worker holds it, for the tests that hand one to an adapter, the executor
or the completer without claiming it from a queue."""

from __future__ import annotations

from typing import Any

from pggit_supervisor.queue import ClaimedJob


def claimed(tool: str = "custom", **changes: Any) -> ClaimedJob:
    """A claimed job of `tool` with no parameters; `changes` replace any field."""
    fields: dict[str, Any] = dict(
        job_id="00000000-0000-0000-0000-000000000001",
        backup_id="00000000-0000-0000-0000-000000000002",
        tool=tool,
        spec={"params": {}},
        command="requested",
        claim_token="secret",
        attempts=1,
        max_attempts=3,
        metadata={},
        backup_name="b",
        branch_name="main",
        commit_hash=None,
        database_name="db",
    )
    fields.update(changes)
    return ClaimedJob(**fields)
