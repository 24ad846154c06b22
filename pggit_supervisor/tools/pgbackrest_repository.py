"""What a pgBackRest repository says about itself, read from `pgbackrest --output=json info`:
the sets that `expire --set` would take along with one (retention's removal guard), and the
newest WAL segment in the stanza's archive (WAL freshness, issue 11)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..config import ToolConfig
from ..runner import RunResult
from .archiving import ArchiveReading, Run, check_spec, segment

# `info` lists every backup of the stanza (about 600 bytes each)
INFO_OUTPUT_LIMIT = 16 << 20


def _stanza_entry(result: RunResult, stanza: str) -> dict[str, Any] | None:
    """The stanza's object in info's JSON; None if it is not there; ValueError if not JSON."""
    entries = json.loads(result.stdout.text() or "[]")
    if not isinstance(entries, list):
        raise ValueError("not a JSON list")
    return next((e for e in entries if isinstance(e, dict) and e.get("name") == stanza), None)


def dependants_held(stanza: str, label: str) -> Callable[[RunResult, frozenset[str]], str | None]:
    """`expire --set=LABEL` takes every set that depends on LABEL (its `prior` chain or its
    `reference` list, transitively). The queue's own dependants are held in SQL (016) while not
    expired; this reads the repository itself, so a set the queue does not hold as expired (a
    DBA's manual backup, or one recorded in another queue database) holds the removal too."""

    def held(result: RunResult, expiring: frozenset[str]) -> str | None:
        if not result.ok:
            return (
                f"held: pgbackrest info failed, so the sets that depend on {label} are not known ({result.summary()})"
            )
        try:
            backups = (_stanza_entry(result, stanza) or {}).get("backup") or []
        except (ValueError, AttributeError, TypeError) as exc:
            return f"held: pgbackrest info did not parse ({exc}), so the sets that depend on {label} are not known"
        chain, grew = {label}, True
        while grew:
            grew = False
            for each in backups:
                name = each.get("label")
                if name in chain or not isinstance(name, str):
                    continue
                if each.get("prior") in chain or set(each.get("reference") or ()) & chain:
                    chain.add(name)
                    grew = True
        unknown = sorted(name for name in chain - {label} if f"pgbackrest://{stanza}/{name}" not in expiring)
        if unknown:
            return (
                f"held: pgBackRest would expire with {label} the set(s) {', '.join(unknown)} that depend on it, "
                "which this queue does not hold as expired (made by hand, or recorded in another database)"
            )
        return None

    return held


def archive_reading(argv: list[str], stanza: str, tool: ToolConfig, run: Run) -> ArchiveReading:
    """The newest segment of the stanza's archive in each repository (the oldest of them is what
    a restore from any repository can reach), the server's system id, and the stanza's status."""
    result = run(check_spec(tool, argv, INFO_OUTPUT_LIMIT))
    if not result.ok:
        return ArchiveReading(error=f"pgbackrest info failed: {result.summary()}")
    try:
        entry = _stanza_entry(result, stanza)
    except (ValueError, TypeError) as exc:
        return ArchiveReading(error=f"pgbackrest info did not parse: {exc}")
    if entry is None:
        return ArchiveReading(error=f"pgbackrest info does not list stanza {stanza!r}")
    status = entry.get("status") or {}
    detail = f"stanza {stanza}: {status.get('message', '?')} (code {status.get('code', '?')})"
    newest: dict[Any, str] = {}
    for archive in entry.get("archive") or []:
        found = segment(archive.get("max"))
        repo = (archive.get("database") or {}).get("repo-key", 1)
        if found is not None and found > newest.get(repo, ""):
            newest[repo] = found
    databases = entry.get("db") or []
    system_id = databases[-1].get("system-id") if databases and isinstance(databases[-1], dict) else None
    if not newest:
        return ArchiveReading(
            system_id=str(system_id) if system_id else None, detail=detail, error="the archive holds no WAL yet"
        )
    return ArchiveReading(
        archive_max=min(newest.values()), system_id=str(system_id) if system_id else None, detail=detail
    )


__all__ = ["INFO_OUTPUT_LIMIT", "archive_reading", "dependants_held"]
