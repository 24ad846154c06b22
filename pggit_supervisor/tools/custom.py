"""Custom commands from enqueue_backup_job: split like shell words, never run by a shell, and
only when the executable is on tools.custom.allowed_commands. The service's database
credentials reach a command only when its allowed_commands entry says pass_credentials."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import invalid
from ..libpq import libpq_env
from ..queue import ClaimedJob
from ..runner import RunResult
from .base import Context, Invocation, Outcome, failure_from, tool_run
from .params import spec_params

# as pggit.enqueue_backup_job checks p_command
_COMMAND = re.compile(r"[^\x00-\x1f\x7f;|&$`<>\\*?(){}]{1,4096}")
_COMMAND_ALLOWED = (
    "one executable and its arguments, at most 4096 characters, without control characters "
    "or ; | & $ ` < > \\ * ? ( ) { }"
)


@dataclass(frozen=True)
class CustomParams:
    """A custom job's argv, split from the command pggit.enqueue_backup_job checked, checked
    again here (the spec is a row another login may have written)."""

    argv: tuple[str, ...]

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> CustomParams:
        command = params.get("command")
        if not isinstance(command, str) or not _COMMAND.fullmatch(command):
            raise invalid(f"parameter command: {command!r} is not allowed (allowed: {_COMMAND_ALLOWED})")
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise invalid(f"command cannot be split into words ({exc}): {command!r}") from exc
        if not argv:
            raise invalid(f"parameter command: is empty (allowed: {_COMMAND_ALLOWED})")
        return cls(tuple(argv))


class CustomAdapter:
    name = "custom"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        argv = CustomParams.parse(spec_params(job)).argv
        executable = resolve_allowed(argv[0], ctx.tool.allowed_commands)
        # the DSN's password, a passfile or service file, client certificates: only when asked
        env = libpq_env(ctx.config.dsn, job.database_name, credentials=executable in ctx.tool.pass_credentials)
        env.update(
            PGGIT_JOB_ID=job.job_id,
            PGGIT_BACKUP_ID=job.backup_id,
            PGGIT_BACKUP_NAME=job.backup_name,
            PGGIT_COMMIT_HASH=job.commit_hash or "",
            PGGIT_BRANCH=job.branch_name or "",
        )
        return Invocation(tool_run(ctx, job, [executable, *argv[1:]], env))

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        if result.ok:
            return Outcome.success(f"{os.path.basename(invocation.run.argv[0])} {result.summary()}")
        return Outcome.failure(failure_from(result, os.path.basename(invocation.run.argv[0])))

    def discard(self, invocation: Invocation) -> None:
        """A custom command's output is its own business."""


def resolve_allowed(word: str, allowed: tuple[str, ...]) -> str:
    """The allowlisted absolute path `word` names: itself if absolute and listed, or the one
    listed entry with that base name."""
    listing = ", ".join(allowed) or "none"
    if os.path.isabs(word):
        if os.path.normpath(word) in allowed:
            return os.path.normpath(word)
    elif "/" not in word:
        matches = [path for path in allowed if os.path.basename(path) == word]
        if len(matches) == 1:
            return matches[0]
    raise invalid(f"command not allowed by configuration: {word} (tools.custom.allowed_commands: {listing})")
