"""A Barman server's WAL archive as Barman itself sees it (WAL freshness, issue 11).

`barman diagnose` (JSON, every server) gives the newest WAL file of the archive per timeline and,
from Barman's own connection to the server, the segment the server writes now and its system id:
so a streaming archiver that died shows as an archive falling behind, whatever `barman check`
says. `barman check --nagios SERVER`'s summary line is kept as the reading's detail."""

from __future__ import annotations

from ..config import ToolConfig
from .archiving import ArchiveReading, Run, check_spec, segment
from .barman_commands import QUERY_OUTPUT_LIMIT, barman_argv, last_lines, parsed


def archive_reading(server: str, tool: ToolConfig, run: Run) -> ArchiveReading:
    check = run(check_spec(tool, barman_argv(tool, "check", "--nagios", server), 64 << 10))
    detail = (check.stdout.text().strip().splitlines() or [check.summary()])[0][:500]
    result = run(check_spec(tool, barman_argv(tool, "diagnose"), QUERY_OUTPUT_LIMIT))
    answer = parsed(result) if result.ok else None
    if answer is None:
        why = result.summary() if not result.ok else "its output is not a whole JSON object"
        return ArchiveReading(detail=detail, error=f"barman diagnose failed: {why} {last_lines(result.stderr.text())}")
    entry = (answer.get("servers") or {}).get(server)
    if not isinstance(entry, dict):
        return ArchiveReading(detail=detail, error=f"barman diagnose does not list server {server!r}")
    timelines = (entry.get("wals") or {}).get("last_archived_wal_per_timeline") or {}
    names = [segment(each.get("name")) for each in timelines.values() if isinstance(each, dict)]
    newest = max((name for name in names if name), default=None)
    status = entry.get("status") or {}
    system_id = status.get("postgres_systemid")
    return ArchiveReading(
        archive_max=newest,
        server_segment=segment(status.get("current_xlog")),
        system_id=str(system_id) if system_id else None,
        detail=detail,
        error=None if newest else "the archive holds no WAL yet",
    )


__all__ = ["archive_reading"]
