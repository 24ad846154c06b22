"""The restore drill's sandbox: who runs it, what it can be reached by, that it waits for the end
of recovery, and that every way a drill ends (done, failed, cancelled, timed out, missing user)
leaves no server and no file behind."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from helpers.db import scalar
from helpers.processes import wait_until
from helpers.service import wait_for_state
from helpers.session import DRILL_USER
from pggit_supervisor import sandbox
from pggit_supervisor.errors import JobError
from pggit_supervisor.runner import RunSpec, run_tool


def _slow_dump(db, backup_dir, rows: int = 40) -> str:
    """A completed pg_dump backup whose rows take 0.3 s each to load when it is restored."""
    here = scalar(db, "SELECT current_database()")
    db.cursor().execute(f"""
        CREATE FUNCTION public.slow(x integer) RETURNS boolean LANGUAGE sql AS
            $$ SELECT current_database() = '{here}' OR (SELECT true FROM pg_sleep(0.3)) $$;
        CREATE TABLE public.slow (x integer CHECK (public.slow(x)));
        INSERT INTO public.slow SELECT generate_series(1, {rows})""")
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', 'public', 'custom', %s)", (str(backup_dir),))
    job = str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))
    wait_for_state(db, job, "completed", timeout=90)
    return str(backup_id)


def _drill_servers(drill_tmpdir: Path) -> list[psutil.Process]:
    """The drill user's processes of this sandbox; their name and cmdline are read once, here
    (`proc.info`), since a short-lived one such as initdb may be gone a moment later."""
    found = []
    for proc in psutil.process_iter(["username", "name", "cmdline"]):
        if proc.info["username"] == DRILL_USER and str(drill_tmpdir) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _postmaster(drill_tmpdir: Path) -> psutil.Process:
    """The drill's postmaster: a postgres with -D (pg_ctl, which has -D too, is gone soon)."""
    return wait_until(
        lambda: next(
            (
                p
                for p in _drill_servers(drill_tmpdir)
                if p.info["name"] == "postgres" and "-D" in (p.info["cmdline"] or [])
            ),
            None,
        ),
        60,
        "the drill's postgres",
    )


def _assert_nothing_left(drill_tmpdir: Path) -> None:
    wait_until(lambda: not _drill_servers(drill_tmpdir), 15, "every process of the drill gone")
    assert not list(drill_tmpdir.iterdir()), "the drill's sandbox is removed"


def test_drill_server_runs_as_the_drill_user_on_a_private_socket_only(service, db, backup_dir, drill_tmpdir):
    service()
    backup_id = _slow_dump(db, backup_dir)
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    postmaster = _postmaster(drill_tmpdir)
    root = Path(postmaster.info["cmdline"][postmaster.info["cmdline"].index("-D") + 1]).parent
    assert postmaster.username() == DRILL_USER and postmaster.uids().real != 0
    entry = pwd.getpwnam(DRILL_USER)
    assert entry.pw_shell.endswith("nologin") and entry.pw_uid not in (0, pwd.getpwnam("postgres").pw_uid)
    assert not postmaster.net_connections(kind="inet"), "the sandbox listens on no TCP port"
    run_dir = os.stat(root / "run")
    assert run_dir.st_uid == entry.pw_uid and stat.S_IMODE(run_dir.st_mode) == 0o700, (
        "the socket's directory is private"
    )
    copy = next((root / "input").iterdir())
    assert copy.stat().st_uid == entry.pw_uid and stat.S_IMODE(copy.stat().st_mode) == 0o400, "a read-only copy"
    assert (root / "pg_hba.conf").read_text().strip().splitlines()[-1] == "local all all trust"
    row = wait_for_state(db, drill, {"completed", "permanently_failed"}, timeout=120)
    assert row["job_state"] == "completed", row["last_error"]
    _assert_nothing_left(drill_tmpdir)


def test_drill_server_and_its_backends_run_in_a_network_namespace_of_their_own_as_the_same_uid(
    service, db, backup_dir, drill_tmpdir
):
    service()
    backup_id = _slow_dump(db, backup_dir)
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))

    def server_and_restoring_backend() -> tuple[psutil.Process, psutil.Process] | None:
        """The postmaster (not initdb's bootstrap postgres, which has -D too) and the backend
        that pg_restore's slow rows keep busy running the dump's code."""
        for proc in _drill_servers(drill_tmpdir):
            try:
                if not any(arg.startswith("unix_socket_directories=") for arg in proc.cmdline()):
                    continue
                for child in proc.children():
                    if " drill [local]" in " ".join(child.cmdline()):
                        return proc, child
            except psutil.NoSuchProcess:
                pass  # a short-lived process that has already gone
        return None

    postmaster, backend = wait_until(server_and_restoring_backend, 60, "the drill's server restoring")
    host_net = os.stat("/proc/self/ns/net").st_ino
    uid = pwd.getpwnam(DRILL_USER).pw_uid
    for proc in (postmaster, backend):
        assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino != host_net, f"{proc.cmdline()} has the host's network"
        assert os.stat(f"/proc/{proc.pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
        assert Path(f"/proc/{proc.pid}/uid_map").read_text().split() == [str(uid), str(uid), "1"], (
            "inside, the drill user is itself (not root)"
        )
        assert proc.uids().effective == uid
    # the namespace has no interface up: loopback is down, nothing else exists
    links = Path(f"/proc/{postmaster.pid}/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in links] == ["lo"]
    assert not postmaster.net_connections(kind="inet")
    row = wait_for_state(db, drill, {"completed", "permanently_failed"}, timeout=120)
    assert row["job_state"] == "completed", "the worker reaches the server through its socket file: " + str(
        row["last_error"]
    )
    _assert_nothing_left(drill_tmpdir)


def test_drill_is_refused_naming_the_sysctl_when_user_namespaces_are_switched_off(tmp_path):
    proc_sys = tmp_path / "sys"
    (proc_sys / "user").mkdir(parents=True)
    (proc_sys / "kernel").mkdir()
    (proc_sys / "user" / "max_user_namespaces").write_text("15000\n")
    sandbox.check_namespaces(str(proc_sys))  # the host as it runs the drills above
    (proc_sys / "kernel" / "unprivileged_userns_clone").write_text("0\n")
    with pytest.raises(JobError, match=r"sysctl kernel\.unprivileged_userns_clone = 0.*network namespace"):
        sandbox.check_namespaces(str(proc_sys))
    (proc_sys / "kernel" / "unprivileged_userns_clone").write_text("1\n")
    (proc_sys / "user" / "max_user_namespaces").write_text("0\n")
    with pytest.raises(JobError, match=r"sysctl user\.max_user_namespaces = 0"):
        sandbox.check_namespaces(str(proc_sys))
    sandbox.check_namespaces()  # this host allows them: the drills here ran isolated


def test_cancelled_drill_leaves_no_server_and_no_file(service, db, backup_dir, drill_tmpdir):
    svc = service()
    backup_id = _slow_dump(db, backup_dir)
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    _postmaster(drill_tmpdir)
    wait_until(
        lambda: any(p.info["name"] == "pg_restore" for p in _drill_servers(drill_tmpdir)), 30, "pg_restore running"
    )
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (drill,))
    svc.wait_for_log("job stopped: cancelled", timeout=30)
    _assert_nothing_left(drill_tmpdir)


def test_timed_out_drill_leaves_no_server_and_no_file(service, db, backup_dir, drill_tmpdir):
    service()
    backup_id = _slow_dump(db, backup_dir)
    drill = str(
        scalar(
            db, "SELECT pggit.schedule_restore_test(%s, %s)", (backup_id, '{"timeout_seconds": 8, "max_attempts": 1}')
        )
    )
    row = wait_for_state(db, drill, {"completed", "permanently_failed"}, timeout=60)
    assert row["job_state"] == "permanently_failed" and "timed out" in row["last_error"], row["last_error"]
    _assert_nothing_left(drill_tmpdir)


def test_drill_without_its_os_user_fails_for_good_naming_the_user_and_how_to_create_it(
    service, db, backup_dir, drill_tmpdir
):
    db.cursor().execute("CREATE TABLE public.items AS SELECT 1 AS id")
    service(drill_user="pggit-nodrill")
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', 'public', 'custom', %s)", (str(backup_dir),))
    job = str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))
    wait_for_state(db, job, "completed", timeout=90)
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    row = wait_for_state(db, drill, {"completed", "permanently_failed", "will_retry"}, timeout=60)
    assert row["job_state"] == "permanently_failed"
    assert "'pggit-nodrill' does not exist" in row["last_error"] and "useradd --system" in row["last_error"]
    assert not list(drill_tmpdir.iterdir())


def test_wait_ready_waits_for_the_end_of_recovery(drill_tmpdir, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(drill_tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)
    box = sandbox.create(DRILL_USER, sandbox.server_bin_dir(None))
    try:

        def as_drill(*argv: str):
            result = run_tool(RunSpec(argv, {}, 120, run_as=DRILL_USER, cwd=box.root))
            assert result.ok, result.stderr.text()

        as_drill(*box.initdb_argv())
        Path(box.data, "standby.signal").touch()  # a server that stays in recovery until promoted
        os.chown(Path(box.data, "standby.signal"), pwd.getpwnam(DRILL_USER).pw_uid, -1)
        as_drill(*[arg if arg != "-w" else "-W" for arg in box.start_argv()])  # pg_ctl would wait for good
        wait_until(lambda: Path(box.data, "postmaster.pid").exists(), 30, "the server started")
        started = time.monotonic()
        with pytest.raises(JobError, match="did not finish recovery within 3 s"):
            sandbox.wait_ready(box, sandbox.SUPERUSER, deadline_seconds=3)
        assert time.monotonic() - started >= 3
        as_drill(os.path.join(box.bin_dir, "pg_ctl"), "-D", box.data, "promote")
        sandbox.wait_ready(box, sandbox.SUPERUSER, deadline_seconds=60)
    finally:
        sandbox.remove(box)
    assert not list(drill_tmpdir.iterdir())
    assert not subprocess.run(["pgrep", "-u", DRILL_USER, "-f", str(drill_tmpdir)]).returncode == 0


def test_drill_whose_restore_fails_leaves_no_server_and_no_file(service, db, backup_dir, drill_tmpdir):
    service()
    here = scalar(db, "SELECT current_database()")
    # rows that load here but refuse to load anywhere else: pg_restore fails in the sandbox
    db.cursor().execute(f"""
        CREATE FUNCTION public.only_here(x integer) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            IF current_database() <> '{here}' THEN RAISE EXCEPTION 'refusing to load elsewhere'; END IF;
            RETURN true;
        END $$;
        CREATE TABLE public.picky (x integer CHECK (public.only_here(x)));
        INSERT INTO public.picky VALUES (1)""")
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', 'public', 'custom', %s)", (str(backup_dir),))
    job = str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))
    wait_for_state(db, job, "completed", timeout=90)
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    row = wait_for_state(db, drill, {"completed", "permanently_failed"}, timeout=60)
    assert row["job_state"] == "permanently_failed"
    assert row["last_error"].startswith("restore exit 1") and "refusing to load elsewhere" in row["last_error"]
    assert scalar(db, "SELECT restore_test_result FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == "failed"
    _assert_nothing_left(drill_tmpdir)
