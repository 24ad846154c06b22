"""What a removal plan is, for every tool whose backups retention removes (expiry step 2, issue
10): the files and directories we wrote (pg_dump, pg_basebackup), removed below the tool's
allowed_output_dirs without following a symlink, or the tool's own command (`pgbackrest expire
--set=LABEL`, `barman delete SERVER ID`) run as its user. Each adapter that can remove
(`Remover`) makes its own plan; `expiry.py` runs it and records the outcome on the expiration."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..config import ToolConfig
from ..errors import invalid
from ..files import remove_backup_path
from ..runner import RunResult, RunSpec
from .base import failure_from
from .restoring import Backup

# a removal has no job lease: an hour bounds a hung tool, not a large repository
REMOVAL_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Removal:
    """How one expired backup's data goes: `local` removes our own files (False: nothing was
    there), or `steps` run the tool's commands in order. `gone` reads a failed step's output
    and says whether the tool reports the backup already absent (expired by the tool's own
    retention, or removed by an earlier attempt whose record was lost): the removal is done."""

    what: str
    steps: tuple[RunSpec, ...] = ()
    local: Callable[[], bool] | None = None
    gone: Callable[[RunResult], bool] | None = None
    # run first: what the tool says about the backup's repository, read by `held_by` with the
    # locations of the target's other expired backups; a reason returned holds the removal
    # (nothing else runs), e.g. a set pgBackRest would expire along with it that this queue
    # does not know as expired (another database's, or one a DBA made by hand)
    guard: RunSpec | None = None
    held_by: Callable[[RunResult, frozenset[str]], str | None] | None = None

    @classmethod
    def files(cls, tool_name: str, backup: Backup, tool: ToolConfig) -> Removal:
        """The file or directory a pg_dump or pg_basebackup backup wrote, removed below
        allowed_output_dirs without following a symlink (files.remove_backup_path). Only a name
        the tool's adapter gives (backup_stem: it starts with the tool's name) is removed: a row
        naming a directory such as the output directory itself is refused, not emptied."""
        path = backup.path
        if not os.path.basename(path).startswith(f"{tool_name}-"):
            raise invalid(f"backup {backup.backup_id}: {path} is not a name {tool_name} gives its backups: not removed")
        return cls(path, local=lambda: remove_backup_path(path, tool))

    @classmethod
    def command(
        cls,
        what: str,
        tool: ToolConfig,
        argv: list[str],
        gone: Callable[[RunResult], bool],
        guard: tuple[list[str], int, Callable[[RunResult, frozenset[str]], str | None]] | None = None,
    ) -> Removal:
        """`argv` as the tool's user; `guard`: (argv, output limit, held_by) of the check run first."""
        spec = RunSpec(tuple(argv), {}, REMOVAL_TIMEOUT, run_as=tool.run_as, kill_grace=float(tool.kill_grace))
        if guard is None:
            return cls(what, (spec,), gone=gone)
        check_argv, limit, held_by = guard
        check = RunSpec(
            tuple(check_argv),
            {},
            REMOVAL_TIMEOUT,
            run_as=tool.run_as,
            kill_grace=float(tool.kill_grace),
            output_limit=limit,
        )
        return cls(what, (spec,), gone=gone, guard=check, held_by=held_by)


@runtime_checkable
class Remover(Protocol):
    """An adapter whose expired backups retention removes."""

    name: str

    def removal_plan(self, backup: Backup, tool: ToolConfig) -> Removal:
        """The plan, or a JobError (not retryable) saying why this backup cannot be removed."""


def run_removal(
    removal: Removal, run: Callable[[RunSpec], RunResult], expiring: frozenset[str] = frozenset()
) -> str | None:
    """Runs the plan; None when the data is gone, else what went wrong or why it is held (for
    the expiration row). `expiring`: the locations of the target's other expired backups."""
    if removal.local is not None:
        removal.local()
        return None
    if removal.guard is not None and removal.held_by is not None:
        if (held := removal.held_by(run(removal.guard), expiring)) is not None:
            return held
    for spec in removal.steps:
        result = run(spec)
        if result.ok or (removal.gone is not None and removal.gone(result)):
            continue
        return failure_from(result, f"removing {removal.what}:")
    return None


__all__ = ["REMOVAL_TIMEOUT", "Removal", "Remover", "run_removal"]
