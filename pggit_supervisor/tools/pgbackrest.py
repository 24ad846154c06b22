"""pgBackRest: a full, differential or incremental backup of one stanza into its repository.

pgBackRest names and stores the backup itself. The adapter lists the stanza's backup labels
before and after the run to find the one this job made, reads its details from `info`, and
checks it with `verify`. Nothing is written outside pgBackRest's repository, so there is
nothing to discard: pgBackRest resumes or removes its own partial backup on its next run.
Every command runs as the tool's run_as user (the cluster's owner), with argv built only from
the validated job spec and the tool config, never through a shell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ..config import ToolConfig
from ..errors import JobError, invalid, transient
from ..queue import ClaimedJob
from ..runner import RunnerError, RunResult
from ..specs.pgbackrest import PARAMETERS, BackRestParams
from .archiving import ArchiveReading, Run
from .base import Context, Invocation, Outcome, Verification, run_check, tool_run
from .params import NAME_PATTERN, spec_params
from .pgbackrest_exits import EXIT_CODES, config_shown, explain_exit
from .pgbackrest_repository import archive_reading, dependants_held
from .removing import Removal
from .restoring import Backup, RestorePlan, RestoresInto, RestoreTarget

# the values pggit.backup_pgbackrest validates (p_backup_type, p_options.repo)
# `info` lists every backup of the stanza (about 600 bytes each): the runner's default 32 KiB
# capture would cut the JSON of a stanza with a few dozen backups.
CHECK_OUTPUT_LIMIT = 16 << 20

_LABEL = re.compile(r"\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?")
_REPORTED_LABEL = re.compile(r"new backup label = (\S+)")
_VERIFY_BACKUP = re.compile(r"^\s*backup: (\S+), status: ([\w-]+)(.*)$")
_VERIFY_ARCHIVE = re.compile(r"^\s*archiveId: (\S+),(.*)$")
_VERIFY_COUNTS = re.compile(r"^\s*missing: (\d+), checksum invalid: (\d+), size invalid: (\d+), other: (\d+)")
_COMPRESSION = {"gz": "gzip", "bz2": "bzip2", "lz4": "lz4", "zst": "zstd", "none": "none"}
_CHECKSUM_NOTE = (
    "pgBackRest keeps a SHA-1 of every file in the backup's manifest; the checksum "
    "recorded is the manifest's own checksum (backrest-checksum), which covers them all. "
    "It changes if the backup is later annotated (pgbackrest annotate)."
)


# pgBackRest's backup types as pggit.backups.backup_type names them
BACKUP_TYPES = {"full": "full", "incr": "incremental", "diff": "differential"}


__all__ = ["EXIT_CODES", "PARAMETERS", "BackRestParams", "PgBackRestAdapter", "explain_exit", "restore_argv"]


class PgBackRestAdapter:
    name = "pgbackrest"
    restores_into: RestoresInto = "directory"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        params = BackRestParams.parse(spec_params(job))
        stanza, kind, repo = params.stanza, params.type, params.repo
        entry = self._info(job, ctx, stanza, repo)  # a JobError that says whether a retry can help
        code = (entry or {}).get("status", {}).get("code")
        if entry is None or code in (1, 3):  # missing stanza path / missing stanza data
            shown = config_shown(ctx.tool)
            raise invalid(
                f"pgBackRest stanza '{stanza}' does not exist in {shown}: run stanza-create "
                f"(as {ctx.tool.run_as or 'the cluster owner'}: "
                f"{' '.join(_command(ctx.tool, stanza, None))} stanza-create)"
            )
        argv = _command(ctx.tool, stanza, None) + [f"--type={kind}"]
        argv += [f"--repo={repo}"] if repo is not None else []
        argv += ["--start-fast", "--log-level-console=info", "backup"]
        labels = tuple(backup["label"] for backup in entry.get("backup", []))
        return Invocation(
            tool_run(ctx, job, argv, {}), {"stanza": stanza, "type": kind, "repo": repo, "labels_before": labels}
        )

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        notes = invocation.notes
        if not result.ok:
            message, retryable = explain_exit(result, "backup", notes["stanza"], ctx.tool)
            return Outcome.failure(message, retryable)
        try:
            return self._record(job, notes, result, ctx)
        except JobError as exc:
            return Outcome.failure(exc.message, exc.retryable)

    def discard(self, invocation: Invocation) -> None:
        """Nothing to remove: a stopped backup leaves only pgBackRest's own partial backup in the
        repository, which the next backup of the stanza resumes or deletes."""

    def restore_plan(self, backup: Backup, tool: ToolConfig, target: RestoreTarget) -> RestorePlan:
        """`pgbackrest restore` of the backup's set into target.directory, as the tool's user;
        shown first, run only when asked (it reads pgBackRest's repository, not a file of ours)."""
        if target.directory is None:
            raise invalid(f"a {self.name} backup is restored into a directory: give --target-dir")
        repo = backup.metadata.get("repo")
        argv = restore_argv(tool, backup.location, target.directory, repo=repo if isinstance(repo, int) else None)
        return RestorePlan.of(tool, [argv], ask_first=True)

    # -- removal: expiry step 2 --------------------------------------------------------------

    def removal_plan(self, backup: Backup, tool: ToolConfig) -> Removal:
        """`pgbackrest --stanza=S expire --set=LABEL` as the tool's user: pgBackRest removes the
        set (and the sets that depend on it; the retention plan keeps the full of a kept
        incremental) from its repository. A set pgBackRest no longer has is removed already."""
        stanza, label = parse_location(backup.location)
        repo = backup.metadata.get("repo")
        base = _command(tool, stanza, repo if isinstance(repo, int) else None)
        argv = base + [f"--set={label}", "expire"]
        check = (base + ["--output=json", "info"], CHECK_OUTPUT_LIMIT, dependants_held(stanza, label))
        return Removal.command(f"pgBackRest set {label} of stanza {stanza}", tool, argv, gone=_set_missing, guard=check)

    def archive_reading(self, name: str, tool: ToolConfig, run: Run) -> ArchiveReading:
        """The stanza's archive as `pgbackrest info` shows it (pgbackrest_repository.py)."""
        return archive_reading(_command(tool, name, None) + ["--output=json", "info"], name, tool, run)

    # -- after a successful run --------------------------------------------------------------

    def _record(self, job: ClaimedJob, notes: Mapping[str, Any], result: RunResult, ctx: Context) -> Outcome:
        stanza, repo = notes["stanza"], notes["repo"]
        after = self._info(job, ctx, stanza, repo) or {}
        label = new_label(notes["labels_before"], [b["label"] for b in after.get("backup", [])], result.stdout.text())
        if label is None:
            return Outcome.failure(
                f"pgBackRest backup of stanza '{stanza}' reported success but no new label "
                f"appeared in pgbackrest info ({result.summary()})"
            )
        backup = self._backup(job, ctx, stanza, repo, label)
        manifest = self._manifest(job, ctx, stanza, repo, label)
        verification = self._verify(job, ctx, stanza, repo, backup)
        if not verification.verified:
            return verification.failure()

        info = backup.get("info", {})
        repository = info.get("repository", {})
        made = backup.get("type")
        metadata = {
            "stanza": stanza,
            "label": label,
            "type": made,
            "requested_type": notes["type"],
            "prior": backup.get("prior"),
            "reference": backup.get("reference"),
            "timestamp_start": _iso(backup.get("timestamp", {}).get("start")),
            "timestamp_stop": _iso(backup.get("timestamp", {}).get("stop")),
            "lsn_start": backup.get("lsn", {}).get("start"),
            "lsn_stop": backup.get("lsn", {}).get("stop"),
            "wal_start": backup.get("archive", {}).get("start"),
            "wal_stop": backup.get("archive", {}).get("stop"),
            "repo": backup.get("database", {}).get("repo-key", repo),
            "backrest_version": backup.get("backrest", {}).get("version"),
            # database_*: uncompressed; repository_*: as stored. *_backup_size: this backup's own
            # files; the others include what it references in earlier backups.
            "database_size": info.get("size"),
            "database_backup_size": info.get("delta"),
            "repository_size": repository.get("size"),
            "repository_backup_size": repository.get("delta"),
            "compress_type": manifest.get("compress_type"),
            "page_checksum_errors": bool(backup.get("error")),
            "checksum_note": _CHECKSUM_NOTE
            if manifest.get("checksum")
            else f"no checksum recorded: {manifest.get('problem', 'the manifest has none')}",
            **verification.facts(),
            "duration_seconds": round(result.duration, 3),
        }
        warnings = [line.strip() for line in result.stderr.text().splitlines() if "WARN:" in line][:10]
        if warnings:
            metadata["warnings"] = warnings  # e.g. "incr backup has been changed to full"
        promoted = (
            f" ({notes['type']} requested; pgBackRest made a {made}: no prior backup to build on)"
            if made != notes["type"]
            else ""
        )
        return Outcome.success(
            f"pgBackRest {made} backup {label} of stanza '{stanza}'{promoted}: {info.get('size')} bytes, "
            f"{repository.get('delta')} stored; {result.summary()}; verified by pgbackrest verify "
            f"({verification.details['scope']})",
            backup_size=info.get("size"),
            compressed_size=repository.get("size"),
            compression_type=manifest.get("compression_type"),
            checksum=manifest.get("checksum"),
            location=f"pgbackrest://{stanza}/{label}",
            metadata=metadata,
            verified=True,
            backup_type=BACKUP_TYPES.get(made, "full") if isinstance(made, str) else "full",
        )

    # -- pgBackRest's read-only commands, run as run_as under the job's limits -----------------

    def _run(self, job: ClaimedJob, ctx: Context, argv: list[str]) -> RunResult:
        try:
            result = run_check(ctx, job, argv, {}, output_limit=CHECK_OUTPUT_LIMIT)
        except RunnerError as exc:  # the runner says whether a retry can help
            raise JobError(f"cannot run pgbackrest {_command_of(argv)}: {exc}", retryable=exc.retryable) from None
        if not result.ok:
            message, retryable = explain_exit(result, _command_of(argv), _stanza_of(argv), ctx.tool)
            raise JobError(message, retryable=retryable)
        return result

    def _info(
        self, job: ClaimedJob, ctx: Context, stanza: str, repo: int | None, label: str | None = None
    ) -> dict[str, Any] | None:
        """The stanza's `info --output=json` entry (of one backup set if `label`), or None if
        pgBackRest does not list the stanza at all."""
        argv = _command(ctx.tool, stanza, repo) + ["--output=json"]
        argv += [f"--set={label}"] if label else []
        output = self._run(job, ctx, argv + ["info"]).stdout
        try:
            stanzas = json.loads(output.text())
        except ValueError:
            raise transient(
                f"pgbackrest info printed no valid JSON ({output.total_bytes} bytes: {output.text()[:200]!r})"
            ) from None
        return next((s for s in stanzas if isinstance(s, dict) and s.get("name") == stanza), None)

    def _backup(self, job: ClaimedJob, ctx: Context, stanza: str, repo: int | None, label: str) -> dict[str, Any]:
        entry = self._info(job, ctx, stanza, repo, label) or {}
        found = [b for b in entry.get("backup", []) if b.get("label") == label]
        if not found:
            status = entry.get("status", {}).get("message", "stanza not listed")
            raise transient(f"pgbackrest info --set={label} found no such backup ({status})")
        return found[0]

    def _manifest(self, job: ClaimedJob, ctx: Context, stanza: str, repo: int | None, label: str) -> dict[str, Any]:
        """Compression and the manifest checksum, read from the backup's manifest. Optional: a
        repository that cannot serve it leaves both unknown rather than failing the backup."""
        argv = _command(ctx.tool, stanza, repo) + ["repo-get", f"backup/{stanza}/{label}/backup.manifest"]
        try:
            text = self._run(job, ctx, argv).stdout.text()
        except JobError as exc:
            return {"problem": f"the manifest could not be read: {exc}"}
        values = manifest_values(
            text,
            {
                ("backup:option", "option-compress-type"),
                ("backup:option", "option-compress"),
                ("backrest", "backrest-checksum"),
            },
        )
        compress = values.get(("backup:option", "option-compress-type"))
        if compress is None and ("backup:option", "option-compress") in values:  # manifests before 2.27
            compress = "gz" if values[("backup:option", "option-compress")] else "none"
        checksum = values.get(("backrest", "backrest-checksum"))
        return {
            "compress_type": compress,
            "compression_type": _COMPRESSION.get(compress) if compress else None,
            "checksum": f"pgbackrest-manifest-sha1:{checksum}" if checksum else None,
        }

    def _verify(
        self, job: ClaimedJob, ctx: Context, stanza: str, repo: int | None, backup: Mapping[str, Any]
    ) -> Verification:
        """`pgbackrest verify` of the whole stanza: 2.45's --set is marked internal and ignores an
        unknown label, and verify exits 0 even when it finds damage, so its text report is read."""
        argv = _command(ctx.tool, stanza, repo) + ["--output=text", "--verbose", "verify"]
        try:
            report = self._run(job, ctx, argv).stdout.text()
        except JobError as exc:
            return Verification.failed(str(exc))
        return judge_verify(report, backup["label"], backup.get("reference") or [])


def new_label(before: Sequence[str], after: Sequence[str], output: str) -> str | None:
    """The label this run made: one listed after it and not before, preferring the one pgBackRest
    reported; otherwise the newest (`info` lists oldest first)."""
    new = [label for label in after if label not in set(before)]
    reported = _REPORTED_LABEL.findall(output)
    if reported and reported[-1] in new:
        return reported[-1]
    return new[-1] if new else None


def manifest_values(text: str, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Values of (section, key) pairs of a pgBackRest manifest (an INI file of JSON values)."""
    found: dict[tuple[str, str], Any] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if sep and section is not None and (section, key) in wanted:
            try:
                found[(section, key)] = json.loads(value)
            except ValueError:
                pass
    return found


def judge_verify(report: str, label: str, references: Sequence[str]) -> Verification:
    """Reads `verify --output=text --verbose`. The backup passes when it and every backup it
    references are valid and no WAL of the stanza is missing or damaged; damage in unrelated
    older backups is recorded but does not fail this one."""
    overall = None
    backups: dict[str, str] = {}
    details: dict[str, str] = {}
    wal_problems: list[str] = []
    current = None  # the backup or archive the next counts line belongs to
    for line in report.splitlines():
        if line.startswith("status:"):
            overall = line.split(":", 1)[1].strip()
        elif match := _VERIFY_BACKUP.match(line):
            current = match.group(1)
            backups[current] = match.group(2)
            details[current] = match.group(3).strip(", ")
        elif match := _VERIFY_ARCHIVE.match(line):
            current = f"archive {match.group(1)}"
            details[current] = match.group(2).strip(", ")
        elif (match := _VERIFY_COUNTS.match(line)) and current is not None:
            counts = line.strip()
            if any(int(n) for n in match.groups()):
                details[current] += f"; {counts}"
                if current.startswith("archive "):
                    wal_problems.append(f"{current}: {details[current]}")
    if overall is None:
        return Verification.failed(f"pgbackrest verify printed no report: {report.strip()[:300]!r}")
    needed = [label] + [ref for ref in references if ref != label]
    bad = [
        f"backup {name} is {backups.get(name, 'not reported')}" + (f" ({details[name]})" if name in details else "")
        for name in needed
        if backups.get(name) != "valid"
    ]
    if bad or wal_problems:
        return Verification.failed("pgbackrest verify: " + "; ".join(bad + wal_problems))
    others = {
        name: f"{status} ({details[name]})"
        for name, status in backups.items()
        if status != "valid" and name not in needed
    }
    return Verification.passed(
        "pgbackrest verify",
        tool="pgbackrest verify",
        scope="whole stanza",
        why_whole_stanza="pgBackRest 2.45 marks verify --set internal and ignores an unknown label",
        stanza_status=overall,
        backup_status=backups[label],
        backup_detail=details[label],
        references_valid=needed[1:],
        other_invalid_backups=others,
    )


def parse_location(location: str) -> tuple[str, str]:
    """(stanza, label) of a `pgbackrest://STANZA/LABEL` location; refused for good otherwise."""
    prefix = "pgbackrest://"
    stanza, _, label = location[len(prefix) :].partition("/") if location.startswith(prefix) else ("", "", "")
    if not NAME_PATTERN.fullmatch(stanza) or not _LABEL.fullmatch(label):
        raise invalid(
            f"not a pgBackRest backup location: {location!r} "
            "(expected pgbackrest://STANZA/LABEL, e.g. pgbackrest://main/20250101-000000F)"
        )
    return stanza, label


def restore_argv(tool: ToolConfig, location: str, target_dir: str, *, repo: int | None = None) -> list[str]:
    """The pgBackRest command that restores a backup into `target_dir` (empty or missing), to be
    run as the tool's run_as user. The copy recovers to the end of the archive and promotes.

    --archive-mode=off: the copy has the source's system id, so pgBackRest would accept its WAL
    into the source stanza's archive, and a later restore of the source would follow the copy's
    new timeline. --tablespace-map-all: tablespaces go next to the copy, never onto the source's.
    """
    stanza, label = parse_location(location)
    if not target_dir.startswith("/"):
        raise invalid(f"restore target must be an absolute directory, got {target_dir!r}")
    target = target_dir.rstrip("/") or "/"
    argv = _command(tool, stanza, repo) + [
        f"--pg1-path={target}",
        f"--set={label}",
        "--archive-mode=off",
        f"--tablespace-map-all={target}.tablespaces",
    ]
    return argv + ["restore"]


def _command(tool: ToolConfig, stanza: str, repo: int | None) -> list[str]:
    argv = [tool.executable()] + ([f"--config={tool.config}"] if tool.config else []) + [f"--stanza={stanza}"]
    return argv + ([f"--repo={repo}"] if repo is not None else [])


def _set_missing(result: RunResult) -> bool:
    """`expire --set` of a set the repository no longer holds (pgBackRest's own retention took
    it, or an earlier removal whose record was lost): pgBackRest says it is not valid."""
    return "is not valid" in result.stderr.text() + result.stdout.text() or "does not exist" in result.stderr.text()


def _command_of(argv: Sequence[str]) -> str:
    return next((arg for arg in argv[1:] if not arg.startswith("--")), "?")


def _stanza_of(argv: Sequence[str]) -> str:
    return next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--stanza=")), "?")


def _iso(epoch: Any) -> str | None:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat() if isinstance(epoch, (int, float)) else None
