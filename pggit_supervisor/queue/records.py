"""What the queue calls return: a claimed job, a claimed retention job, a claimed notification,
the queue server's WAL position."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds: valid only while (job_id, claim_token, our login) still match in
    the database. claim_token is the claim's secret: it is never logged or shown."""

    job_id: str
    backup_id: str
    tool: str
    spec: Mapping[str, Any]
    command: str
    claim_token: str = field(repr=False)
    attempts: int
    max_attempts: int
    metadata: Mapping[str, Any]
    backup_name: str
    branch_name: str | None
    commit_hash: str | None
    database_name: str

    @property
    def params(self) -> Mapping[str, Any]:
        return self.spec.get("params", {})


@dataclass(frozen=True)
class ClaimedMaintenance:
    """A retention job this worker holds (schema/017); claim_token is its secret, never shown."""

    job_id: str
    kind: str
    target: Mapping[str, str]
    reason: str
    attempts: int
    claim_token: str = field(repr=False)
    target_index: int = 0  # the claimed target's place in the targets the claim was given


def as_float(value: Any) -> float | None:
    """A number the database returned (numeric, double), or None."""
    return None if value is None else float(value)


@dataclass(frozen=True)
class ServerWal:
    """The queue database's server as WAL freshness reads it (Queue.server_wal)."""

    system_id: str
    segment: str | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_at: str | None


@dataclass(frozen=True)
class ClaimedDelivery:
    """One notification this worker may post now (schema/018): valid while its lease runs and
    nobody claimed it again. claim_token is the claim's secret: never logged or shown."""

    delivery_id: str
    event_id: str
    endpoint: str  # webhook_url (the backup's own) or a notifications.endpoints name
    url: str = field(repr=False)  # may carry a token
    event: str
    payload: Mapping[str, Any]
    attempt: int
    claim_token: str = field(repr=False)
