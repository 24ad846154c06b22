"""pg_basebackup: a physical copy of the cluster of the queue's database, with its WAL streamed
alongside (-X stream) so the copy is self-contained, and a SHA-256 manifest verified by
pg_verifybackup before the backup counts; restored by laying it out as a data directory.

Like pg_dump, the copy is written under a temporary name and renamed once verified.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from ..config import ToolConfig
from ..errors import invalid
from ..files import (
    allowed_output_dir,
    extract_argv,
    give_to,
    make_scratch_dir,
    open_real_dir,
    open_regular,
    partial_path,
    pg_bin_dir,
    prepare_output_dir,
    read_pg_version,
    safe_component,
    sha256_of,
    tar_members,
    tree_size,
)
from ..libpq import libpq_env
from ..queue import ClaimedJob
from ..runner import RunResult
from ..specs.pg_basebackup import FORMAT, BaseBackupParams
from .base import Context, Invocation, Outcome, Verification, backup_stem, failure_from, run_check, tool_run
from .params import spec_params
from .removing import Removal
from .restoring import Backup, RestorePlan, RestoresInto, RestoreTarget, confine

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


class PgBaseBackupAdapter:
    name = "pg_basebackup"
    restores_into: RestoresInto = "directory"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        params = BaseBackupParams.parse(spec_params(job))
        directory = allowed_output_dir(params.output_dir, ctx.tool)
        prepare_output_dir(directory, ctx.tool)
        final = os.path.join(directory, backup_stem(job, ctx.now))
        partial = partial_path(directory, job.job_id, "")
        # the label lands in backup_label, a line-based file the server parses: names from the
        # database are kept to one line of plain characters
        label = f"pggit {_LABEL_UNSAFE.sub('_', str(job.backup_name))[:200]} job {safe_component(job.job_id, 64)}"
        argv = [
            ctx.tool.executable(),
            f"--pgdata={partial}",
            f"--format={params.format}",
            "--wal-method=stream",
            f"--checkpoint={params.checkpoint}",
            "--manifest-checksums=SHA256",
            "--no-password",
            f"--label={label}",
        ]
        if params.compression != "none":
            level = params.compression_level
            argv.append(f"--compress=client-{params.compression}" + (f":{level}" if level is not None else ""))
        env = libpq_env(ctx.config.dsn)
        env.pop("PGDATABASE", None)  # a replication connection takes no database
        return Invocation(
            tool_run(ctx, job, argv, env, cwd=directory), {"params": params, "final": final, "partial": partial}
        )

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        notes = invocation.notes
        params: BaseBackupParams = notes["params"]
        if not result.ok:
            self.discard(invocation)
            return Outcome.failure(failure_from(result, "pg_basebackup"))
        verification = self._verify(job, params.format, notes["partial"], ctx)
        if verification.fails_job:
            self.discard(invocation)
            return verification.failure()
        # the manifest holds a SHA-256 of every file: its own hash stands for the whole backup
        manifest_sum, _, _ = sha256_of(os.path.join(notes["partial"], "backup_manifest"), ctx.checkpoint)
        size = tree_size(notes["partial"])
        os.rename(notes["partial"], notes["final"])
        manifest = os.path.join(notes["final"], "backup_manifest")
        metadata: dict[str, Any] = {
            "directory": notes["final"],
            "format": params.format,
            **verification.facts(),
            "duration_seconds": round(result.duration, 3),
            **_manifest_facts(manifest),
        }
        compressed = params.compression != "none"
        return Outcome.success(
            f"pg_basebackup {result.summary()}, {size} bytes, {verification.summary}",
            backup_size=size,
            compressed_size=size if compressed else None,
            compression_type=params.compression,
            checksum=manifest_sum,
            verified=verification.verified,
            location=f"file://{notes['final']}",
            metadata=metadata,
        )

    def discard(self, invocation: Invocation) -> None:
        shutil.rmtree(invocation.notes["partial"], ignore_errors=True)

    def _verify(self, job: ClaimedJob, fmt: str, partial: str, ctx: Context) -> Verification:
        """A tar backup is extracted to a scratch directory first: pg_verifybackup reads plain
        directories only."""
        if fmt == "plain":
            return self._verifybackup(job, ctx, partial, read_pg_version(partial), [])
        base, wal = tar_members(partial)
        if base is None:
            return Verification.failed("no base.tar* in the tar-format backup")
        scratch = make_scratch_dir(os.path.dirname(partial), ".verify-", ctx.tool.run_as)
        try:
            steps = [extract_argv(os.path.join(partial, base), scratch)]
            if wal:
                wal_dir = os.path.join(scratch, "pg_wal")
                os.close(open_real_dir(wal_dir, create_below=len(scratch.split("/")) - 1, owner=ctx.tool.run_as))
                steps.append(extract_argv(os.path.join(partial, wal), wal_dir))
            for argv in steps:
                extracted = run_check(ctx, job, argv, {})
                if not extracted.ok:
                    if "lz4" in extracted.stderr.text() or "zstd" in extracted.stderr.text():
                        return Verification.unverifiable(f"tar cannot extract {base} here ({extracted.summary()})")
                    return Verification.failed(failure_from(extracted, "extracting the tar backup:"))
            manifest = f"--manifest-path={os.path.join(partial, 'backup_manifest')}"
            return self._verifybackup(job, ctx, scratch, read_pg_version(scratch), [manifest])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @staticmethod
    def _verifybackup(job: ClaimedJob, ctx: Context, directory: str, version: str, extra: list[str]) -> Verification:
        tool = os.path.join(pg_bin_dir(version), "pg_verifybackup")
        check = run_check(ctx, job, [tool, *extra, directory], {})
        if check.ok:
            return Verification.passed("pg_verifybackup")
        return Verification.failed(failure_from(check, "pg_verifybackup"))

    # -- restore: laid out as a data directory ----------------------------------------------

    def restore_plan(self, backup: Backup, tool: ToolConfig, target: RestoreTarget) -> RestorePlan:
        """Copies (plain) or extracts (tar) the backup into target.directory, which the plan's
        setup creates (mode 0700, owned by the tool's user); run as the tool's user."""
        if target.directory is None:
            raise invalid(f"a {self.name} backup is restored into a directory: give --target-dir")
        source = target.source or confine(backup, tool)
        target_dir = os.path.abspath(target.directory)
        steps = copy_steps(backup, source, target_dir)

        def setup() -> None:
            os.makedirs(target_dir, mode=0o700, exist_ok=True)
            os.chmod(target_dir, 0o700)
            give_to(target_dir, tool.run_as)

        return RestorePlan.of(tool, steps, setup=setup)

    # -- removal: expiry step 2 --------------------------------------------------------------

    def removal_plan(self, backup: Backup, tool: ToolConfig) -> Removal:
        return Removal.files(self.name, backup, tool)


def copy_steps(backup: Backup, source: str, target_dir: str) -> list[list[str]]:
    """argv lists that lay a pg_basebackup backup (at its confined path `source`) out as a
    data directory in target_dir."""
    if not os.path.isabs(source) or not os.path.isabs(target_dir):
        raise invalid(f"backup {backup.backup_id}: paths must be absolute ({source!r}, {target_dir!r})")
    fmt = backup.metadata.get("format", "plain")
    if fmt not in FORMAT.values:
        raise invalid(f"backup {backup.backup_id}: metadata.format {str(fmt)[:40]!r} is not one of plain, tar")
    if fmt == "plain":
        return [["/bin/cp", "-a", "--", source + "/.", target_dir]]
    base, wal = tar_members(source)
    if base is None:
        raise invalid(f"backup {backup.backup_id}: no base.tar* in {source}")
    steps = [extract_argv(os.path.join(source, base), target_dir)]
    if wal:
        steps.append(["/bin/mkdir", "-p", os.path.join(target_dir, "pg_wal")])
        steps.append(extract_argv(os.path.join(source, wal), os.path.join(target_dir, "pg_wal")))
    return steps


def _manifest_facts(manifest: str) -> dict[str, Any]:
    try:
        with open_regular(manifest) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    ranges = data.get("WAL-Ranges") or []
    facts: dict[str, Any] = {"files": len(data.get("Files", []))}
    if ranges:
        facts.update(
            timeline=ranges[0].get("Timeline"), start_lsn=ranges[0].get("Start-LSN"), stop_lsn=ranges[-1].get("End-LSN")
        )
    return facts
