"""The registry of tools: each tool's adapter, and the vocabulary the SQL shares with it (tool
names, the stanza/server name pattern, each tool's parameter values). Adding a tool is adding a
module and a line here; tests/sql/test_vocabulary.py checks that the SQL says the same. The restore
drill gets the adapters whose backups it can drill from here, so it imports none of them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..errors import invalid
from ..specs import barman as specs_barman
from ..specs import pg_basebackup as specs_pg_basebackup
from ..specs import pg_dump as specs_pg_dump
from ..specs import pgbackrest as specs_pgbackrest
from .archiving import Archiver, ArchiveReading
from .barman import BarmanAdapter
from .base import Adapter, Context, Invocation, Outcome, Verification
from .custom import CustomAdapter
from .params import NAME_PATTERN, Choice, IntRange, Parameter
from .pg_basebackup import PgBaseBackupAdapter
from .pg_dump import PgDumpAdapter
from .pgbackrest import PgBackRestAdapter
from .removing import Removal, Remover, run_removal
from .restore_test import RestoreTestAdapter
from .restoring import Restorer

_PG_DUMP = PgDumpAdapter()
_PG_BASEBACKUP = PgBaseBackupAdapter()

ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        _PG_DUMP,
        _PG_BASEBACKUP,
        PgBackRestAdapter(),
        BarmanAdapter(),
        CustomAdapter(),
        # a drill restores a dump into a fresh cluster, a base backup as its data directory
        RestoreTestAdapter(database=_PG_DUMP, directory=_PG_BASEBACKUP),
    )
}

# every tool a job may name (pggit.backup_jobs.tool, the claim's p_tools)
TOOLS: tuple[str, ...] = tuple(ADAPTERS)

# the tools a pggit.backup_<tool> function schedules, and the parameter values it validates
# (pg_basebackup's compression_level range depends on the method: pg_basebackup.COMPRESSION_LEVELS)
PARAMETERS: Mapping[str, Mapping[str, Parameter]] = MappingProxyType(
    {
        "pg_dump": specs_pg_dump.PARAMETERS,
        "pg_basebackup": specs_pg_basebackup.PARAMETERS,
        "pgbackrest": specs_pgbackrest.PARAMETERS,
        "barman": specs_barman.PARAMETERS,
    }
)


def adapter_for(tool: str) -> Adapter:
    try:
        return ADAPTERS[tool]
    except KeyError:
        raise invalid(
            f"no adapter for tool {tool!r} in this version of pggit-supervisor "
            f"(available: {', '.join(sorted(ADAPTERS))})"
        ) from None


def restorer_for(tool: str) -> Restorer:
    """The adapter that restores backups made by `tool`; refused for good for a tool whose
    backups are restored by its own tooling (custom commands) or that makes none."""
    adapter = ADAPTERS.get(tool)
    if not isinstance(adapter, Restorer):
        restorable = sorted(name for name, each in ADAPTERS.items() if isinstance(each, Restorer))
        raise invalid(
            f"backups made by {tool[:40]} are restored by their own tooling "
            f"(pggit-supervisor restores: {', '.join(restorable)})"
        )
    return adapter


def archiver_for(tool: str) -> Archiver | None:
    """The adapter that reads `tool`'s WAL archive (WAL freshness), None for a tool without one."""
    adapter = ADAPTERS.get(tool)
    return adapter if isinstance(adapter, Archiver) else None


def remover_for(tool: str) -> Remover:
    """The adapter that removes an expired backup made by `tool` (expiry step 2); refused for
    good for a tool retention has no targets of."""
    adapter = ADAPTERS.get(tool)
    if not isinstance(adapter, Remover):
        removable = sorted(name for name, each in ADAPTERS.items() if isinstance(each, Remover))
        raise invalid(f"backups made by {tool[:40]} are not removed by retention (it removes: {', '.join(removable)})")
    return adapter


__all__ = [
    "ADAPTERS",
    "NAME_PATTERN",
    "PARAMETERS",
    "TOOLS",
    "Adapter",
    "Choice",
    "Context",
    "IntRange",
    "Invocation",
    "Outcome",
    "Parameter",
    "Removal",
    "Remover",
    "ArchiveReading",
    "Archiver",
    "archiver_for",
    "Restorer",
    "Verification",
    "adapter_for",
    "remover_for",
    "restorer_for",
    "run_removal",
]
