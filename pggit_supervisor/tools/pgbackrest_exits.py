"""What pgBackRest's exit codes mean for the operator, and whether a retry can help: read from
its error codes (src/build/error/error.yaml), kept apart from the adapter because the table is
long and changes only with pgBackRest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import ToolConfig
from ..runner import RunResult
from .base import failure_from

DEFAULT_CONFIG = "/etc/pgbackrest/pgbackrest.conf"


@dataclass(frozen=True)
class ExitCode:
    """What one of pgBackRest's exit codes means for the operator, and whether a retry can help."""

    name: str
    meaning: str  # may name {stanza}, {config}, {user}
    retryable: bool


# pgBackRest's exit code is its error code (src/build/error/error.yaml).
EXIT_CODES: Mapping[int, ExitCode] = {
    28: ExitCode("FileInvalidError", "a repository file is invalid (backup.info / archive.info damaged?)", False),
    31: ExitCode(
        "OptionInvalidError",
        "invalid option: pgBackRest rejected an option of the command or of "
        "{config}; check the [{stanza}] and [global] sections",
        False,
    ),
    32: ExitCode(
        "OptionInvalidValueError", "bad option value: check the job's type/repo and the values in {config}", False
    ),
    37: ExitCode(
        "OptionRequiredError",
        "a required option is missing: is there a [{stanza}] section with pg1-path in {config}?",
        False,
    ),
    41: ExitCode(
        "FileOpenError",
        "cannot open a file: {user} must be able to read {config}, the data "
        "directory and write the repository, lock-path and log-path",
        False,
    ),
    44: ExitCode(
        "ArchiveMismatchError",
        "the stanza's archive does not match this database (a new initdb or "
        "a major upgrade?): run pgbackrest --stanza={stanza} stanza-upgrade, or fix pg1-path",
        False,
    ),
    46: ExitCode("VersionNotSupportedError", "this PostgreSQL version is not supported by this pgBackRest", False),
    47: ExitCode(
        "PathCreateError",
        "cannot create a directory: {user} must be able to write the repository, lock-path and log-path",
        False,
    ),
    49: ExitCode("HostConnectError", "cannot reach the repository or database host", True),
    50: ExitCode(
        "LockAcquireError",
        "another pgBackRest process holds the stanza lock (another backup or "
        "expire of stanza '{stanza}' is running); retry later",
        True,
    ),
    51: ExitCode(
        "BackupMismatchError",
        "the stanza's backup history does not match this database: run "
        "pgbackrest --stanza={stanza} stanza-upgrade, or fix pg1-path",
        False,
    ),
    55: ExitCode(
        "FileMissingError",
        "a file pgBackRest needs is missing: {config} itself, or the stanza's "
        "archive.info/backup.info (run pgbackrest --stanza={stanza} stanza-create)",
        False,
    ),
    56: ExitCode(
        "DbConnectError",
        "cannot connect to PostgreSQL: is the server running, and are pg1-port / "
        "pg1-socket-path in {config} right? {user} must be a database superuser role",
        True,
    ),
    57: ExitCode("DbQueryError", "a query to PostgreSQL failed", True),
    58: ExitCode(
        "DbMismatchError",
        "the database does not match the stanza (system id or version): run "
        "pgbackrest --stanza={stanza} stanza-upgrade, or fix pg1-path",
        False,
    ),
    62: ExitCode("StopError", "pgBackRest is stopped for this stanza: run pgbackrest --stanza={stanza} start", True),
    63: ExitCode("TermError", "pgBackRest was terminated by a signal", True),
    64: ExitCode("FileWriteError", "cannot write to the repository (disk full?)", True),
    68: ExitCode(
        "ArchiveCommandInvalidError",
        "archive_command does not call pgbackrest: set archive_command = "
        "'pgbackrest --stanza={stanza} archive-push %p' (plus --config if needed) and reload",
        False,
    ),
    82: ExitCode(
        "ArchiveTimeoutError",
        "WAL did not reach the archive in time: check that archive_command "
        "works (pg_stat_archiver.failed_count, the server log) and archive-timeout",
        True,
    ),
    87: ExitCode(
        "ArchiveDisabledError",
        "archive_mode is off: set archive_mode = on (needs a restart) and "
        "archive_command = 'pgbackrest --stanza={stanza} archive-push %p'",
        False,
    ),
    88: ExitCode(
        "FileOwnerError",
        "a file has the wrong owner: run pgBackRest as the cluster's owner (tools.pgbackrest.run_as)",
        False,
    ),
    101: ExitCode("ServiceError", "the repository storage service failed (e.g. an S3 5xx)", True),
    103: ExitCode("RepoInvalidError", "no valid repository: check repo settings in {config} and the job's repo", False),
    105: ExitCode("AccessError", "the repository storage refused access: check its credentials in {config}", False),
}


def explain_exit(result: RunResult, command: str, stanza: str, tool: ToolConfig) -> tuple[str, bool]:
    """(message, retryable) for a pgBackRest command that did not exit 0."""
    what = f"pgBackRest {command} of stanza '{stanza}'"
    known = EXIT_CODES.get(result.exit_code) if result.exit_code is not None and not result.timed_out else None
    if known is None:
        return f"{what} failed: {failure_from(result, 'pgbackrest')}", True
    meaning = known.meaning.format(stanza=stanza, config=config_shown(tool), user=tool.run_as or "the service user")
    return f"{what} failed: {meaning} [{known.name}, {failure_from(result, 'pgbackrest')}]", known.retryable


def config_shown(tool: ToolConfig) -> str:
    return tool.config or f"the default configuration ({DEFAULT_CONFIG})"
