"""Tool adapters by name. Adding a tool is adding a module and a line here."""

from __future__ import annotations

from .barman import BarmanAdapter
from .base import Adapter, Context, InvalidJob, Invocation, Outcome
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


def adapter_for(tool: str) -> Adapter:
    try:
        return ADAPTERS[tool]
    except KeyError:
        raise InvalidJob(
            f"no adapter for tool {tool!r} in this version of pggit-supervisor "
            f"(available: {', '.join(sorted(ADAPTERS))})"
        ) from None


__all__ = ["ADAPTERS", "Adapter", "Context", "InvalidJob", "Invocation", "Outcome", "adapter_for"]
