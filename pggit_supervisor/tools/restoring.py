"""What a restore plan is, for every tool that restores: the backup as its row describes it,
where it goes, and the commands that bring it back. Each adapter that can restore (`Restorer`)
makes its own plan; `restore.py` (the operator's `pggit-supervisor restore`) and the restore
drill (`restore_test.py`, into its sandbox) check the target and run the plan."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlparse

from ..config import ToolConfig
from ..errors import invalid
from ..runner import RunResult, RunSpec

# what a backup is restored into: a database (checked empty) or a data directory
RestoresInto = Literal["database", "directory"]
# a restore has no job and no lease: a day is the bound on a hung tool, not on a large copy
RESTORE_TIMEOUT = 86400.0


@dataclass(frozen=True)
class Backup:
    """The parts of a pggit.backups row a restore needs."""

    backup_id: str
    tool: str
    status: str
    location: str
    metadata: Mapping[str, Any]

    @property
    def path(self) -> str:
        """The backup's absolute, normalised path. The location is a table row's text: a
        relative path (`file:--role=postgres`) would resolve against the current directory
        and reach a tool's argv as an option, so only an absolute file:// path is accepted."""
        parsed = urlparse(self.location)
        shown = self.location if len(self.location) <= 200 else self.location[:197] + "..."
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise invalid(f"backup {self.backup_id}: location {shown!r} is not a file:// path on this host")
        path = parsed.path
        if not path.startswith("/") or "\0" in path or ".." in path.split("/") or parsed.query or parsed.fragment:
            raise invalid(
                f"backup {self.backup_id}: location {shown!r} is not an absolute file:// path "
                "(allowed: file:///absolute/path, without '..', ? or #)"
            )
        return os.path.normpath(path)


def confine(backup: Backup, tool: ToolConfig) -> str:
    """The real path of a file:// backup, which must lie below one of the tool's
    allowed_output_dirs (symlinks resolved, whatever the current directory): the path comes
    from a table row, and restoring hands it to pg_restore, psql, cp or tar."""
    path = backup.path
    real = os.path.realpath(path)
    for allowed in tool.allowed_output_dirs:
        root = os.path.realpath(allowed)
        if os.path.isabs(allowed) and real.startswith(root.rstrip("/") + "/"):
            return real
    shown = path if real == path else f"{path} (resolves to {real})"
    raise invalid(
        f"backup {backup.backup_id}: {shown} is not under tools.{tool.name}.allowed_output_dirs "
        f"(allowed: {', '.join(tool.allowed_output_dirs) or 'none'})"
    )


@dataclass(frozen=True)
class RestoreTarget:
    """Where a backup goes: a database (`dsn`, checked empty) or a directory (new or empty).
    `source` restores from a copy of the backup instead of its location (the drill's sandbox
    copy); `scratch` is a directory the plan may write into (a decompressed script)."""

    dsn: str | None = None
    directory: str | None = None
    jobs: int | None = None
    source: str | None = None
    scratch: str | None = None


@dataclass(frozen=True)
class RestorePlan:
    """The commands that restore one backup, in order. `setup` readies the target first (a
    directory made, an empty schema dropped, a script decompressed). pgBackRest and Barman
    write through their own catalogue: their plan is shown and run only when asked (`ask_first`);
    `note` is what the operator must do after it ran."""

    steps: tuple[RunSpec, ...]
    setup: Callable[[], None] | None = None
    ask_first: bool = False
    note: str | None = None

    @classmethod
    def of(
        cls,
        tool: ToolConfig,
        argvs: list[list[str]],
        env: Mapping[str, str] | None = None,
        timeout: float = RESTORE_TIMEOUT,
        **fields: Any,
    ) -> RestorePlan:
        """A plan whose every step runs as the tool's user, with `env`."""
        frozen = MappingProxyType(dict(env or {}))
        steps = tuple(
            RunSpec(tuple(argv), frozen, timeout, run_as=tool.run_as, kill_grace=float(tool.kill_grace))
            for argv in argvs
        )
        return cls(steps, **fields)


@runtime_checkable
class Restorer(Protocol):
    """An adapter whose backups `pggit-supervisor restore` can bring back."""

    name: str
    restores_into: RestoresInto

    def restore_plan(self, backup: Backup, tool: ToolConfig, target: RestoreTarget) -> RestorePlan:
        """The plan, or a JobError saying why this backup cannot be restored there."""


def run_plan(plan: RestorePlan, run: Callable[[RunSpec], RunResult]) -> RunResult:
    """Readies the target, then runs the steps with `run` until one fails; the last result."""
    if plan.setup is not None:
        plan.setup()
    result = None
    for spec in plan.steps:
        result = run(spec)
        if not result.ok:
            break
    if result is None:
        raise invalid("the restore plan has no step")  # every adapter's plan has one: a bug
    return result
