"""Files a job touches, as root, in directories another user owns: the output path rules
(allowed_output_dirs, opened without following a symlink), temporary and scratch names,
handing files to a tool's user, checksums, tar archives and what a PostgreSQL data directory
says of itself. Below every adapter, the restore orchestrator and the drill's sandbox."""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, TypeVar

from .config import ToolConfig
from .errors import invalid

TAR = "/bin/tar"
# A file name component taken from the database: letters, digits and _ . - only
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
# hashing checks in with the worker after this many bytes (about a second of disk reads)
_CHECKPOINT_BYTES = 64 << 20

Checkpoint = Callable[[], None]
Digest = tuple[str, int, Mapping[str, str]]
T = TypeVar("T")


def safe_component(value: Any, limit: int) -> str:
    """A piece of a file name taken from the database (branch, commit, job id, ...): only
    letters, digits and _ . -, so no value can add a directory or climb out of one."""
    return _UNSAFE_NAME_CHARS.sub("_", str(value))[:limit]


# -- where a job may write ----------------------------------------------------------------


def allowed_output_dir(directory: str, tool: ToolConfig) -> str:
    """The real path of `directory` if it lies under one of the tool's allowed_output_dirs
    (symlinks resolved on both sides); otherwise a JobError that is not retryable."""
    real = os.path.realpath(directory)
    for allowed in tool.allowed_output_dirs:
        root = os.path.realpath(allowed)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return real
    shown = directory if real == directory else f"{directory} (resolves to {real})"
    raise invalid(
        f"output directory {shown} is not under tools.{tool.name}.allowed_output_dirs "
        f"(allowed: {', '.join(tool.allowed_output_dirs) or 'none'})"
    )


def prepare_output_dir(path: str, tool: ToolConfig) -> None:
    """Create the checked output directory `path` (a real path from allowed_output_dir) and
    any missing parents below its allowed root, each owned by the tool's user when we are root.

    The tool's user owns directories on the way: between the check and this call it could swap
    one for a symlink, and root would create and chown a directory wherever it points. So the
    walk goes from / one opened directory at a time, never following a symlink (the checked
    path has none), and creates and chowns each new directory through its descriptor."""
    root = next(
        (
            real
            for real in map(os.path.realpath, tool.allowed_output_dirs)
            if path == real or path.startswith(real.rstrip("/") + "/")
        ),
        None,
    )
    if root is None:
        raise invalid(
            f"output directory {path} is not under tools.{tool.name}.allowed_output_dirs "
            f"(allowed: {', '.join(tool.allowed_output_dirs) or 'none'})"
        )
    may_create_from = len(_components(os.path.dirname(root)))
    os.close(open_real_dir(path, create_below=may_create_from, owner=tool.run_as))


def partial_path(directory: str, job_id: str, suffix: str) -> str:
    """The temporary name a backup is written under: one per job, so that the retry of an
    attempt whose worker was killed mid-write finds and removes what that attempt left.
    `directory` is a real path (allowed_output_dir); the leftover is removed relative to the
    directory opened without following any symlink."""
    name = f".pggit-{safe_component(job_id, 64)}{safe_component(suffix, 16)}.partial"
    fd = open_real_dir(directory)
    try:
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=fd)
        elif info is not None:
            os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    return os.path.join(directory, name)


def remove_path(path: str) -> None:
    """Removes a file or a directory tree (a partial backup); nothing there is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def remove_backup_path(path: str, tool: ToolConfig) -> bool:
    """Removes an expired backup's file or directory tree at the absolute, normalised `path`,
    which must lie below one of the tool's allowed_output_dirs as written (not as a symlink
    resolves): its directory is opened one component at a time without following a symlink
    (a symlink on the way is refused, not retryable), and the entry is removed through that
    descriptor; a directory tree is removed without following any symlink inside it (rmtree
    with dir_fd), and a symlink planted in the backup's place is removed itself, never what it
    names; a directory holding entries named as backups are is refused (an output directory).
    False if nothing was there (removed before: the removal is done)."""
    roots = [os.path.realpath(each).rstrip("/") + "/" for each in tool.allowed_output_dirs if os.path.isabs(each)]
    if not any(path.startswith(root) for root in roots):
        raise invalid(
            f"{path} is not under tools.{tool.name}.allowed_output_dirs "
            f"(allowed: {', '.join(tool.allowed_output_dirs) or 'none'}): not removed"
        )
    parent, name = os.path.split(path)
    try:
        fd = open_real_dir(parent)
    except FileNotFoundError:
        return False
    try:
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(info.st_mode):
            _refuse_a_directory_of_backups(path, name, fd)
            shutil.rmtree(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)
        return True
    finally:
        os.close(fd)


# what a backup made by a file tool is named (backup_stem): a directory holding one is an output
# directory, never one backup (a directory dump or base backup holds toc.dat, base.tar, PG_VERSION)
_BACKUP_NAME = re.compile(r"(pg_dump|pg_basebackup)[-_]")


def _refuse_a_directory_of_backups(path: str, name: str, parent_fd: int) -> None:
    """The location is a worker's word: one naming an output directory (or any directory
    holding backups, of this database or of another served one, whose rows this database does
    not see) would remove them all. Refused, not retryable."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        held = sorted(entry for entry in os.listdir(fd) if _BACKUP_NAME.match(entry))
    finally:
        os.close(fd)
    if held:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise invalid(f"{path} holds other backups ({shown}): it is a directory of backups, not one; not removed")


def make_scratch_dir(parent: str, prefix: str, run_as: str | None) -> str:
    """A new directory with a random name under the real directory `parent`, made and given to
    `run_as` through descriptors, as prepare_output_dir does (tempfile.mkdtemp plus a chown by
    name would chown whatever a swapped-in symlink names)."""
    fd = open_real_dir(parent)
    try:
        for _attempt in range(100):
            name = f"{prefix}{secrets.token_hex(6)}"
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                continue
            os.close(_open_created(fd, name, run_as))
            return os.path.join(parent, name)
        raise FileExistsError(errno.EEXIST, f"no free scratch name under {parent}")
    finally:
        os.close(fd)


def open_real_dir(path: str, *, create_below: int | None = None, owner: str | None = None) -> int:
    """A descriptor of the directory `path`, opened from / one component at a time with
    O_NOFOLLOW: a symlink anywhere on the way is refused (not retryable), so what is opened is
    the path as checked. Components after the first `create_below` are made if missing, given
    to `owner`."""
    parts = _components(path)
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index, name in enumerate(parts):
            try:
                next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if create_below is None or index < create_below:
                    raise
                try:
                    os.mkdir(name, 0o750, dir_fd=fd)
                    made_by = owner
                except FileExistsError:
                    made_by = None  # made meanwhile by someone else: opened, never chowned
                next_fd = _open_created(fd, name, made_by)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise invalid(
                    f"{path}: {'/' + '/'.join(parts[: index + 1])} is not a directory "
                    "(a symlink or file put there after the path was checked?)"
                ) from None
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_created(dir_fd: int, name: str, owner: str | None) -> int:
    """Open the directory just made as `name` (refusing a symlink swapped in meanwhile) and
    chown that very directory, through its descriptor."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise invalid(f"the directory {name} just created was replaced by a symlink or file") from None
    try:
        if owner and os.geteuid() == 0:
            entry = pwd.getpwnam(owner)
            os.chown(fd, entry.pw_uid, entry.pw_gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def give_to(path: str, user: str | None) -> None:
    """chown `path` to `user` and its primary group, when we are root and a user is named.
    A symlink at `path` is chowned itself, never what it points to."""
    if user and os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


# -- reading what a tool's user wrote ------------------------------------------------------


def open_regular(path: str) -> BinaryIO:
    """A regular file the tool's user wrote, opened for reading as root: a symlink (to
    /etc/shadow, /dev/zero, ...) or any other kind of file put in its place is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return os.fdopen(fd, "rb")


def sha256_of(path: str, checkpoint: Checkpoint | None = None, abort: threading.Event | None = None) -> Digest:
    """('sha256:HEX', total bytes, per-file digests). A directory's digest is over the sorted
    list of its files' names and digests, so any changed, added or removed file changes it.
    Hashing a large backup takes minutes: `checkpoint` keeps the worker's lease meanwhile; a set
    `abort` stops it (HashAborted)."""
    if os.path.isfile(path):
        digest, size = _file_sha256(path, checkpoint, abort)
        return f"sha256:{digest}", size, {}
    files: dict[str, str] = {}
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            digest, size = _file_sha256(full, checkpoint, abort)
            files[os.path.relpath(full, path)] = digest
            total += size
    tree = hashlib.sha256("".join(f"{name}\0{files[name]}\n" for name in sorted(files)).encode())
    return f"sha256-tree:{tree.hexdigest()}", total, files


class HashAborted(Exception):
    """sha256_of was told to stop (its result is no longer wanted)."""


# while a job's helper thread outlasts the work beside it, the lease is kept this often
_THREAD_WAIT_SECONDS = 0.5


def join_keeping_lease(thread: threading.Thread, checkpoint: Checkpoint | None) -> None:
    """Waits for a job's helper thread (a hash, pg_dump's row counts) in the job's own thread,
    calling `checkpoint` meanwhile: the helper never touches the worker's connection, so this is
    what keeps the lease and notices a stop (which the checkpoint raises)."""
    while thread.is_alive():
        thread.join(_THREAD_WAIT_SECONDS)
        if thread.is_alive() and checkpoint is not None:
            checkpoint()


def sha256_while(
    path: str, checkpoint: Checkpoint | None, work: Callable[[], T], wanted: Callable[[T], bool]
) -> tuple[T, Digest | None]:
    """Hashes `path` in a thread while `work()` runs in this one, and returns both: a backup's
    verification reads the whole file too, so both read it from the page cache on two cores at
    once instead of one after the other (issue 12 figure 4: the checksum was pg_dump's 0.1 s at
    308 MB). hashlib releases the GIL on large updates, and the thread never touches the
    database: this thread keeps the lease (`checkpoint`) while the hash outlasts `work`. If
    `work` fails, or its result is not `wanted` (a failed verification), the hash stops and its
    digest is None. The file must not change meanwhile: it is the job's own, under its
    temporary name."""
    abort = threading.Event()
    done: dict[str, Any] = {}

    def hash_it() -> None:
        try:
            done["digest"] = sha256_of(path, None, abort)
        except BaseException as exc:  # handed to the caller's thread
            done["error"] = exc

    thread = threading.Thread(target=hash_it, name="sha256", daemon=True)
    thread.start()
    try:
        result = work()
        if not wanted(result):
            abort.set()
        join_keeping_lease(thread, checkpoint)
    except BaseException:
        abort.set()
        thread.join()
        raise
    if abort.is_set():
        return result, None
    if "error" in done:
        raise done["error"]
    return result, done["digest"]


def _file_sha256(path: str, checkpoint: Checkpoint | None, abort: threading.Event | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open_regular(path) as handle:
        while chunk := handle.read(1 << 20):
            if abort is not None and abort.is_set():
                raise HashAborted(path)
            digest.update(chunk)
            size += len(chunk)
            if checkpoint is not None and size % _CHECKPOINT_BYTES < (1 << 20):
                checkpoint()
    return digest.hexdigest(), size


def tree_size(path: str) -> int:
    """Bytes of a file, or of every file below a directory (without following links)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.lstat(os.path.join(root, name)).st_size for root, _dirs, names in os.walk(path) for name in names)


# -- tar archives and PostgreSQL data directories -------------------------------------------


def tar_members(directory: str) -> tuple[str | None, str | None]:
    """(base archive, WAL archive) of a tar-format base backup, whatever their compression."""
    names = sorted(os.listdir(directory))
    base = next((n for n in names if n.startswith("base.tar")), None)
    wal = next((n for n in names if n.startswith("pg_wal.tar")), None)
    return base, wal


def extract_argv(archive: str, target: str) -> list[str]:
    """GNU tar recognises gzip, lz4 and zstd archives by their content when extracting."""
    return [TAR, "-x", "-f", archive, "-C", target]


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
