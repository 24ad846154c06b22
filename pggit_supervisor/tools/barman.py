"""Barman: `barman backup [--wait] SERVER` for one server section of Barman's own configuration.

Barman keeps its own catalogue, so the adapter asks it which backup a run made (list-backups
before and after), describes that backup (show-backup) and checks it (verify-backup, which runs
pg_verifybackup on the backup_manifest pg_basebackup wrote). Barman must find pg_verifybackup
on its PATH: on Debian it is only in /usr/lib/postgresql/15/bin, and tools run with a fixed PATH,
so the server section needs `path_prefix = /usr/lib/postgresql/15/bin`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..config import ToolConfig
from ..errors import JobError, invalid, transient
from ..queue import ClaimedJob
from ..runner import RunnerError, RunResult
from ..specs.barman import BarmanParams
from .archiving import ArchiveReading, Run
from .barman_archive import archive_reading
from .barman_commands import (
    QUERY_OUTPUT_LIMIT,
    QUERY_TIMEOUT,
    barman_argv,
    config_name,
    delete_argv,
    last_lines,
    new_backup,
    parsed,
    restore_argv,
)
from .base import Context, Invocation, Outcome, Verification, failure_from, run_check, tool_run
from .params import job_timeout, spec_params
from .removing import Removal
from .restoring import Backup, RestorePlan, RestoresInto, RestoreTarget

# Only the rsync executors copy file by file and can hard-link or copy unchanged files from
# the previous backup; pg_basebackup (backup_method = postgres) always copies everything.
REUSING_METHODS = ("rsync", "local-rsync")
_NO_CHECKSUM = (
    "Barman records no checksum of a backup; its integrity is checked with "
    "barman verify-backup (pg_verifybackup against the backup_manifest)"
)


class BarmanAdapter:
    name = "barman"
    restores_into: RestoresInto = "directory"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        params = BarmanParams.parse(spec_params(job))
        server, wait, reuse = params.server, params.wait, params.reuse_backup
        before = self._backups(job, ctx, server)
        settings = self._server_settings(job, ctx, server)
        if settings.get("active") is False:
            raise invalid(
                f"Barman server {server!r} is inactive (active = false in {config_name(ctx.tool)}): "
                "barman backup skips it; set active = true or schedule another server"
            )
        method = str(settings.get("backup_method") or "rsync")
        argv = barman_argv(ctx.tool, "backup")
        if wait:
            argv.append("--wait")
        reuse_note = None
        if reuse is not None:
            applied = method in REUSING_METHODS
            reuse_note = {"requested": reuse, "applied": applied}
            if applied:
                argv.append(f"--reuse-backup={reuse}")
            else:
                # Barman 3.4 accepts the flag and ignores it (and refuses reuse_backup in the
                # config file): say so instead of passing an option that does nothing.
                reuse_note["reason"] = (
                    f"--reuse-backup applies only to backup_method = rsync; server {server!r} "
                    f"uses backup_method = {method}, which copies every file (a full backup)"
                )
        argv.append(server)
        return Invocation(
            tool_run(ctx, job, argv, {}, cwd="/"),
            {
                "server": server,
                "wait": wait,
                "before": tuple(sorted(before)),
                "backup_method": method,
                "compression": settings.get("backup_compression"),
                "path_prefix": settings.get("path_prefix"),
                "reuse_backup": reuse_note,
            },
        )

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        notes = invocation.notes
        server = notes["server"]
        try:
            if not result.ok:
                return self._failure(job, result, ctx, server)
            return self._collect_backup(job, invocation, result, ctx)
        except JobError as exc:
            if not exc.retryable:  # the server vanished from Barman's config during the run
                return Outcome.failure(exc.message, retryable=False)
            return Outcome.failure(f"barman backup {result.summary()}, then reading Barman's catalogue failed: {exc}")

    def _collect_backup(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        notes = invocation.notes
        server = notes["server"]
        after = self._backups(job, ctx, server)
        backup_id = new_backup(after, notes["before"], result.stdout.text())
        if backup_id is None:
            new = sorted(after - set(notes["before"]))
            return Outcome.failure(
                f"barman backup {result.summary()} but "
                + (
                    f"several new backups of server {server!r} appeared ({', '.join(new)}): cannot tell which "
                    "is this job's; another Barman process is backing up the same server"
                    if new
                    else f"no new backup of server {server!r} is in Barman's catalogue "
                    f"(is the server disabled in {config_name(ctx.tool)}?)"
                )
            )
        info = self._show_backup(job, ctx, server, backup_id)
        status = info.get("status")
        if status == "FAILED":
            return Outcome.failure(
                f"Barman marked backup {backup_id} of server {server!r} FAILED: "
                f"{info.get('error') or 'no reason recorded'}"
            )
        if status != "DONE" and (notes["wait"] or status != "WAITING_FOR_WALS"):
            return Outcome.failure(
                f"backup {backup_id} of server {server!r} is {status} after barman backup"
                + (
                    " --wait: Barman is still missing WAL between its begin and end; is receive-wal (barman cron) "
                    "running?"
                    if notes["wait"]
                    else ""
                )
            )
        verification = self._verify(job, ctx, server, backup_id, status, notes)
        if verification.fails_job:
            return verification.failure()
        return self._success(job, ctx, notes, result, backup_id, info, verification)

    def discard(self, invocation: Invocation) -> None:
        """Nothing to remove. Barman marks a run that fails, or is stopped while copying, FAILED
        in its own catalogue; one stopped while waiting for WAL leaves a complete backup that
        Barman marks DONE when the WAL arrives. Only Barman (`barman delete`, retention
        policies) removes backups from its catalogue."""

    def restore_plan(self, backup: Backup, tool: ToolConfig, target: RestoreTarget) -> RestorePlan:
        """`barman recover` into target.directory as Barman's user; shown first, run only when
        asked. Its files belong to that user: the note says what to do before starting it."""
        if target.directory is None:
            raise invalid(f"a {self.name} backup is restored into a directory: give --target-dir")
        argv = restore_argv(tool, backup.location, target.directory)
        note = (
            f"note: the files belong to {tool.run_as or 'barman'}: chown -R postgres: "
            f"{target.directory} before starting it, and set its port"
        )
        return RestorePlan.of(tool, [argv], ask_first=True, note=note)

    # -- Barman's answers -----------------------------------------------------------------

    # -- removal: expiry step 2 --------------------------------------------------------------

    def archive_reading(self, name: str, tool: ToolConfig, run: Run) -> ArchiveReading:
        """The server's archive as `barman diagnose` shows it (barman_archive.py)."""
        return archive_reading(name, tool, run)

    def removal_plan(self, backup: Backup, tool: ToolConfig) -> Removal:
        """`barman delete SERVER BACKUP_ID` as Barman's user (the tool's run_as)."""
        argv = delete_argv(tool, backup.location)
        return Removal.command(f"Barman backup {backup.location}", tool, argv, gone=_backup_missing)

    def _query(self, job: ClaimedJob, ctx: Context, *args: str, timeout: float = QUERY_TIMEOUT) -> RunResult:
        """`barman [-c CFG] ARGS` as the tool's user, with the worker's lease-renewing tick."""
        try:
            return run_check(
                ctx,
                job,
                barman_argv(ctx.tool, *args),
                {},
                cwd="/",
                timeout=min(job_timeout(job, ctx.tool), timeout),
                output_limit=QUERY_OUTPUT_LIMIT,
            )
        except RunnerError as exc:  # the runner says whether a retry can help
            raise JobError(str(exc), retryable=exc.retryable) from None

    def _json(self, job: ClaimedJob, ctx: Context, server: str, *args: str) -> Mapping[str, Any]:
        """`barman -f json ARGS`; an unknown server is refused for good, other errors may pass."""
        result = self._query(job, ctx, "-f", "json", *args)
        answer = parsed(result)
        errors = [str(error) for error in answer.get("_ERROR", [])] if answer is not None else []
        if any(error.startswith("Unknown server") for error in errors):
            raise invalid(self._unknown_server(job, ctx, server))
        if not result.ok or errors or answer is None:
            detail = " | ".join(errors) if errors else failure_from(result, "barman")
            raise transient(f"barman {' '.join(args)} {result.summary()}: {detail}")
        return answer

    def _unknown_server(self, job: ClaimedJob, ctx: Context, server: str) -> str:
        listed = parsed(self._query(job, ctx, "-f", "json", "list-servers")) or {}
        known = sorted(name for name in listed if not name.startswith("_"))
        return (
            f"Barman server {server!r} is not configured in {config_name(ctx.tool)} "
            f"(known: {', '.join(known) or 'none'})"
        )

    def _backups(self, job: ClaimedJob, ctx: Context, server: str) -> set[str]:
        """The server's backup ids, from `barman -f json list-backups --minimal SERVER`."""
        return {
            str(backup_id)
            for backup_id in self._json(job, ctx, server, "list-backups", "--minimal", server).get(server, [])
        }

    def _server_settings(self, job: ClaimedJob, ctx: Context, server: str) -> Mapping[str, Any]:
        return self._json(job, ctx, server, "show-servers", server).get(server, {})

    def _show_backup(self, job: ClaimedJob, ctx: Context, server: str, backup_id: str) -> Mapping[str, Any]:
        return self._json(job, ctx, server, "show-backup", server, backup_id).get(server, {})

    def _version(self, job: ClaimedJob, ctx: Context) -> str | None:
        """'3.4.0' from `barman --version`; None if it cannot tell (the backup is still good)."""
        try:
            result = self._query(job, ctx, "--version")
        except JobError:
            return None
        words = (result.stdout.text() or result.stderr.text()).split()
        return words[0] if result.ok and words else None

    # -- outcomes -------------------------------------------------------------------------

    def _failure(self, job: ClaimedJob, result: RunResult, ctx: Context, server: str) -> Outcome:
        """Barman exits 1 for nearly everything: its message says whether a retry can help."""
        text = result.stderr.text() + "\n" + result.stdout.text()
        summary = f"barman backup {result.summary()}"
        if result.exit_code == 2:
            return Outcome.failure(
                f"{summary}: Barman rejected the command line ({last_lines(text)}); "
                f"check that {ctx.tool.path} is Barman 3.x",
                retryable=False,
            )
        if result.exit_code != 1:
            return Outcome.failure(failure_from(result, "barman backup"))
        if "Unknown server" in text:
            return Outcome.failure(self._unknown_server(job, ctx, server), retryable=False)
        if "Another backup process is running" in text or "holding the backup lock" in text:
            return Outcome.failure(
                f"{summary}: another backup of Barman server {server!r} is running "
                "(Barman's server lock); retrying later"
            )
        if "Impossible to start the backup" in text:
            return Outcome.failure(f"{summary}: barman check {server} fails: {self._failing_checks(job, ctx, server)}")
        failed = re.search(r"Backup failed (.*?)(?:\nDETAILS: (.*))?$", text, re.S)
        if failed:
            details = " | ".join(line.strip() for line in (failed.group(2) or "").strip().splitlines()[:5])
            return Outcome.failure(
                f"{summary}: backup failed {failed.group(1).strip()}" + (f": {details}" if details else "")
            )
        return Outcome.failure(failure_from(result, "barman backup"))

    def _failing_checks(self, job: ClaimedJob, ctx: Context, server: str) -> str:
        try:
            answer = (parsed(self._query(job, ctx, "-f", "json", "check", server)) or {}).get(server, {})
        except JobError as exc:
            return f"(could not run barman check: {exc})"
        failing = [
            name.replace("_", " ") + (f" ({check['hint']})" if check.get("hint") else "")
            for name, check in sorted(answer.items())
            if isinstance(check, dict) and check.get("status") == "FAILED"
        ]
        return "; ".join(failing) or "no check reports FAILED now (a passing problem?)"

    def _verify(
        self, job: ClaimedJob, ctx: Context, server: str, backup_id: str, status: str, notes: Mapping[str, Any]
    ) -> Verification:
        if status != "DONE":
            return Verification.unverifiable(
                f"not verified: the backup is {status} (wait = false); run barman verify-backup "
                f"{server} {backup_id} once Barman has its WAL and marks it DONE"
            )
        if notes["compression"]:
            return Verification.unverifiable(
                f"not verified: server {server!r} keeps backups compressed "
                f"(backup_compression = {notes['compression']}), and pg_verifybackup reads plain ones only"
            )
        # verify-backup reads every file: give it the job's whole time, not a query's
        check = self._query(job, ctx, "-f", "json", "verify-backup", server, backup_id, timeout=float("inf"))
        errors = [str(error).strip() for error in (parsed(check) or {}).get("_ERROR", [])]
        if check.ok and not errors:
            return Verification.passed("barman verify-backup (pg_verifybackup of the backup_manifest)")
        detail = " | ".join(errors) or failure_from(check, "barman verify-backup")
        if "pg_verifybackup not found" in detail:
            return Verification.failed(
                f"Barman cannot find pg_verifybackup (path_prefix = {notes['path_prefix']}); set "
                f"path_prefix = /usr/lib/postgresql/<version>/bin in the [{server}] section"
            )
        if re.search(r'backup_manifest".*No such file', detail):
            return Verification.unverifiable(
                f"not verified: backup {backup_id} has no backup_manifest for pg_verifybackup "
                f"(backup_method = {notes['backup_method']}, compression = {notes['compression']}); "
                f"barman generate-manifest {server} {backup_id} can make one"
            )
        return Verification.failed(f"barman verify-backup {server} {backup_id} {check.summary()}: {detail}")

    def _success(
        self,
        job: ClaimedJob,
        ctx: Context,
        notes: Mapping[str, Any],
        result: RunResult,
        backup_id: str,
        info: Mapping[str, Any],
        verification: Verification,
    ) -> Outcome:
        server = notes["server"]
        base = info.get("base_backup_information", {})
        size = int(base.get("disk_usage_bytes", 0))
        compression = notes["compression"]
        metadata: dict[str, Any] = {
            "barman_server": server,
            "backup_id": backup_id,
            "status": info.get("status"),
            "begin_lsn": base.get("begin_lsn"),
            "end_lsn": base.get("end_lsn"),
            "begin_wal": base.get("begin_wal"),
            "end_wal": base.get("end_wal"),
            "timeline": base.get("timeline"),
            "begin_time": base.get("begin_time"),
            "end_time": base.get("end_time"),
            "postgresql_version": info.get("postgresql_version"),
            "barman_version": self._version(job, ctx),
            "backup_method": notes["backup_method"],
            "waited_for_wal": notes["wait"],
            "disk_usage_with_wals_bytes": base.get("disk_usage_with_wals_bytes"),
            "checksum_note": _NO_CHECKSUM,
            "duration_seconds": round(result.duration, 3),
        }
        metadata.update(verification.facts())
        if notes["reuse_backup"] is not None:
            metadata["reuse_backup"] = dict(notes["reuse_backup"])
        reuse = notes["reuse_backup"] or {}
        message = (
            f"barman backup {result.summary()}: {server}/{backup_id} {info.get('status')}, {size} bytes, "
            + verification.summary
            + (f"; reuse-backup={reuse['requested']} ignored: {reuse['reason']}" if reuse.get("reason") else "")
        )
        return Outcome.success(
            message,
            location=f"barman://{server}/{backup_id}",
            backup_size=size,
            # with backup_compression Barman keeps the compressed archive: its size is what it reports
            compressed_size=size if compression else None,
            compression_type=compression or "none",
            checksum=None,
            verified=verification.verified,
            metadata=metadata,
        )


def _backup_missing(result: RunResult) -> bool:
    """`barman delete` of a backup Barman no longer lists (its own retention, or an earlier
    removal whose record was lost)."""
    return "Unknown backup" in result.stderr.text() + result.stdout.text()
