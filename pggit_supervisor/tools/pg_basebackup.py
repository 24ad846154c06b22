"""pg_basebackup: a physical copy of the cluster of the queue's database, with its WAL streamed
alongside (-X stream) so the copy is self-contained, and a SHA-256 manifest verified by
pg_verifybackup before the backup counts.

Like pg_dump, the copy is written under a temporary name and renamed once verified.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..queue import ClaimedJob
from ..runner import RunResult
from .base import (
    Choice,
    Context,
    IntRange,
    InvalidJob,
    Invocation,
    Outcome,
    Parameter,
    allowed_output_dir,
    backup_stem,
    failure_from,
    libpq_env,
    make_scratch_dir,
    open_real_dir,
    open_regular,
    param_dir,
    partial_path,
    prepare_output_dir,
    run_check,
    safe_component,
    sha256_of,
    spec_params,
    tool_run,
    tree_size,
)

TAR = "/bin/tar"
# the values pggit.backup_pg_basebackup validates (p_options.format, .compression, .checkpoint;
# .compression_level has a range per compression method)
FORMAT = Choice(("plain", "tar"), "plain")
COMPRESSION = Choice(("none", "gzip", "lz4", "zstd"), "none")
# the levels pg_basebackup 15 accepts per method (as pggit.backup_pg_basebackup checks them)
COMPRESSION_LEVELS: Mapping[str, IntRange] = MappingProxyType(
    {"gzip": IntRange(1, 9), "lz4": IntRange(1, 12), "zstd": IntRange(1, 22)}
)
CHECKPOINT = Choice(("fast", "spread"), "fast")
PARAMETERS: Mapping[str, Parameter] = MappingProxyType(
    {"format": FORMAT, "compression": COMPRESSION, "checkpoint": CHECKPOINT}
)
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass(frozen=True)
class BaseBackupParams:
    """A pg_basebackup job's parameters as pggit.backup_pg_basebackup validated them, checked
    again here (the spec is a row another login may have written): the adapter's only re-check."""

    output_dir: str
    format: str
    compression: str
    compression_level: int | None
    checkpoint: str

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> BaseBackupParams:
        fmt = FORMAT.parse(params, "format")
        compression = COMPRESSION.parse(params, "compression")
        if compression != "none" and fmt != "tar":
            raise InvalidJob(
                f"parameter compression: {compression!r} needs the tar format (allowed with format plain: none)"
            )
        level = COMPRESSION_LEVELS.get(compression, COMPRESSION_LEVELS["zstd"]).parse(params, "compression_level")
        if level is not None and compression == "none":
            raise InvalidJob(
                "parameter compression_level: needs a compression method "
                "(allowed: gzip, lz4 or zstd with the tar format)"
            )
        checkpoint = CHECKPOINT.parse(params, "checkpoint")
        return cls(param_dir(params), fmt, compression, level, checkpoint)


def pg_bin_dir(version: str) -> str:
    """Debian keeps pg_verifybackup, pg_ctl, ... only under /usr/lib/postgresql/VERSION/bin."""
    return f"/usr/lib/postgresql/{version}/bin"


def read_pg_version(data_dir: str) -> str:
    """The major version a data directory says it is. Read as root in a directory the tool's
    user owns: a symlink is refused (it could name any file) and so is anything but digits."""
    fd = os.open(os.path.join(data_dir, "PG_VERSION"), os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as handle:
        version = handle.read(16).strip()
    if not version.isdigit():
        raise ValueError(f"{data_dir}/PG_VERSION does not hold a PostgreSQL major version")
    return version


def tar_members(directory: str) -> tuple[str | None, str | None]:
    """(base archive, WAL archive) of a tar-format base backup, whatever their compression."""
    names = sorted(os.listdir(directory))
    base = next((n for n in names if n.startswith("base.tar")), None)
    wal = next((n for n in names if n.startswith("pg_wal.tar")), None)
    return base, wal


def extract_argv(archive: str, target: str) -> list[str]:
    """GNU tar recognises gzip, lz4 and zstd archives by their content when extracting."""
    return [TAR, "-x", "-f", archive, "-C", target]


class PgBaseBackupAdapter:
    name = "pg_basebackup"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        params = BaseBackupParams.parse(spec_params(job))
        directory = allowed_output_dir(params.output_dir, ctx.tool)
        prepare_output_dir(directory, ctx.tool)
        final = os.path.join(directory, backup_stem(job, ctx.now))
        partial = partial_path(directory, job, "")
        fmt, compression, level = params.format, params.compression, params.compression_level
        # the label lands in backup_label, a line-based file the server parses: names from the
        # database are kept to one line of plain characters
        label = f"pggit {_LABEL_UNSAFE.sub('_', str(job.backup_name))[:200]} job {safe_component(job.job_id, 64)}"
        argv = [
            ctx.tool.executable(),
            f"--pgdata={partial}",
            f"--format={fmt}",
            "--wal-method=stream",
            f"--checkpoint={params.checkpoint}",
            "--manifest-checksums=SHA256",
            "--no-password",
            f"--label={label}",
        ]
        if compression != "none":
            argv.append(f"--compress=client-{compression}" + (f":{level}" if level is not None else ""))
        env = libpq_env(ctx.config.dsn)
        env.pop("PGDATABASE", None)  # a replication connection takes no database
        return Invocation(
            tool_run(ctx, job, argv, env, cwd=directory),
            {"format": fmt, "final": final, "partial": partial, "compression": compression},
        )

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        notes = invocation.notes
        if not result.ok:
            self.discard(invocation)
            return Outcome.failure(failure_from(result, "pg_basebackup"))
        verified, how, problem = self._verify(job, notes, ctx)
        if problem:
            self.discard(invocation)
            return Outcome.failure(f"verification failed: {problem}")
        # the manifest holds a SHA-256 of every file: its own hash stands for the whole backup
        manifest_sum, _, _ = sha256_of(os.path.join(notes["partial"], "backup_manifest"), ctx)
        size = tree_size(notes["partial"])
        os.rename(notes["partial"], notes["final"])
        manifest = os.path.join(notes["final"], "backup_manifest")
        metadata: dict[str, Any] = {
            "directory": notes["final"],
            "format": notes["format"],
            "verified_by": how,
            "duration_seconds": round(result.duration, 3),
            **_manifest_facts(manifest),
        }
        compressed = notes["compression"] != "none"
        return Outcome.success(
            f"pg_basebackup {result.summary()}, {size} bytes, " + ("verified" if verified else how),
            backup_size=size,
            compressed_size=size if compressed else None,
            compression_type=notes["compression"],
            checksum=manifest_sum,
            verified=verified,
            location=f"file://{notes['final']}",
            metadata=metadata,
        )

    def discard(self, invocation: Invocation) -> None:
        shutil.rmtree(invocation.notes["partial"], ignore_errors=True)

    def _verify(self, job: ClaimedJob, notes: Mapping[str, Any], ctx: Context) -> tuple[bool, str, str | None]:
        """(verified, how, problem). A tar backup is extracted to a scratch directory first:
        pg_verifybackup reads plain directories only."""
        partial = notes["partial"]
        if notes["format"] == "plain":
            return self._verifybackup(job, ctx, partial, read_pg_version(partial), [])
        base, wal = tar_members(partial)
        if base is None:
            return False, "", "no base.tar* in the tar-format backup"
        scratch = make_scratch_dir(os.path.dirname(partial), ".verify-", ctx.tool.run_as)
        try:
            steps = [extract_argv(os.path.join(partial, base), scratch)]
            if wal:
                os.close(
                    open_real_dir(
                        os.path.join(scratch, "pg_wal"), create_below=len(scratch.split("/")) - 1, owner=ctx.tool.run_as
                    )
                )
                steps.append(extract_argv(os.path.join(partial, wal), os.path.join(scratch, "pg_wal")))
            for argv in steps:
                extracted = run_check(ctx, job, argv, {})
                if not extracted.ok:
                    if "lz4" in extracted.stderr.text() or "zstd" in extracted.stderr.text():
                        return False, f"not verified: tar cannot extract {base} here ({extracted.summary()})", None
                    return False, "", failure_from(extracted, "extracting the tar backup:")
            return self._verifybackup(
                job,
                ctx,
                scratch,
                read_pg_version(scratch),
                [f"--manifest-path={os.path.join(partial, 'backup_manifest')}"],
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @staticmethod
    def _verifybackup(
        job: ClaimedJob, ctx: Context, directory: str, version: str, extra: list[str]
    ) -> tuple[bool, str, str | None]:
        tool = os.path.join(pg_bin_dir(version), "pg_verifybackup")
        check = run_check(ctx, job, [tool, *extra, directory], {})
        if check.ok:
            return True, "pg_verifybackup", None
        return False, "", failure_from(check, "pg_verifybackup")


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
