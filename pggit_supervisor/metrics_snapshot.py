"""What one read of a queue database gives the metrics file (Queue.metrics_snapshot, metrics.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    """What one scrape-equivalent read of a queue database found (Queue.metrics_snapshot)."""

    targets: Sequence[Mapping[str, Any]]  # pggit.backup_target_summary rows
    jobs: Mapping[str, int]  # by state (the guide's backup_job_queue states)
    oldest_ready_seconds: float | None
    longest_running_seconds: float | None
    archives: Sequence[Mapping[str, Any]]  # pggit.archive_freshness rows
    drills: Sequence[Mapping[str, Any]]  # newest passed drill per target
    slots: Mapping[str, Mapping[str, int]]  # schedule -> outcome/reason -> count
    retention_jobs: Mapping[str, int] = field(default_factory=dict)  # by status
    workers: Mapping[str, int] = field(default_factory=dict)  # alive / dead / stopped
    unacknowledged_failures: int = 0
    notifications: Mapping[str, int] = field(default_factory=dict)  # deliveries by state
    oldest_pending_notification_seconds: float | None = None


__all__ = ["Snapshot"]
