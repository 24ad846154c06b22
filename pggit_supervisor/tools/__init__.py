"""The registry of tools: each tool's adapter, and the vocabulary the SQL shares with it (tool
names, the stanza/server name pattern, each tool's parameter values). Adding a tool is adding a
module and a line here; tests/test_vocabulary.py checks that the SQL says the same."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from . import barman, pg_basebackup, pg_dump, pgbackrest
from .barman import BarmanAdapter
from .base import NAME_PATTERN, Adapter, Choice, Context, IntRange, InvalidJob, Invocation, Outcome, Parameter
from .custom import CustomAdapter
from .pg_basebackup import PgBaseBackupAdapter
from .pg_dump import PgDumpAdapter
from .pgbackrest import PgBackRestAdapter
from .restore_test import RestoreTestAdapter

ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        PgDumpAdapter(),
        PgBaseBackupAdapter(),
        PgBackRestAdapter(),
        BarmanAdapter(),
        CustomAdapter(),
        RestoreTestAdapter(),
    )
}

# every tool a job may name (pggit.backup_jobs.tool, the claim's p_tools)
TOOLS: tuple[str, ...] = tuple(ADAPTERS)

# the tools a pggit.backup_<tool> function schedules, and the parameter values it validates
# (pg_basebackup's compression_level range depends on the method: pg_basebackup.COMPRESSION_LEVELS)
PARAMETERS: Mapping[str, Mapping[str, Parameter]] = MappingProxyType(
    {
        "pg_dump": pg_dump.PARAMETERS,
        "pg_basebackup": pg_basebackup.PARAMETERS,
        "pgbackrest": pgbackrest.PARAMETERS,
        "barman": barman.PARAMETERS,
    }
)


def adapter_for(tool: str) -> Adapter:
    try:
        return ADAPTERS[tool]
    except KeyError:
        raise InvalidJob(
            f"no adapter for tool {tool!r} in this version of pggit-supervisor "
            f"(available: {', '.join(sorted(ADAPTERS))})"
        ) from None


__all__ = [
    "ADAPTERS",
    "NAME_PATTERN",
    "PARAMETERS",
    "TOOLS",
    "Adapter",
    "Choice",
    "Context",
    "IntRange",
    "InvalidJob",
    "Invocation",
    "Outcome",
    "Parameter",
    "adapter_for",
]
