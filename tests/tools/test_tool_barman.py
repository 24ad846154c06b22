"""The Barman adapter against real Barman 3.4 and a cluster of the module's own: a backup
scheduled from SQL and run by a real supervisor, restored and started, and what an operator
meets besides (an unknown server, a failing `barman check`, another backup holding the lock,
reuse-backup on a postgres server, a backup that fails verification or has no manifest)."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import psycopg2
import pytest

from helpers.cluster import BIN, Cluster, as_postgres, free_port
from helpers.db import query, scalar
from helpers.jobs import claimed
from helpers.links import IdleLink
from helpers.processes import wait_until
from helpers.service import Service, wait_for_state
from pggit_supervisor import schema
from pggit_supervisor.archive_check import ArchiveChecks
from pggit_supervisor.config import Config, ToolConfig, Tools
from pggit_supervisor.errors import JobError
from pggit_supervisor.expiry import apply_retention
from pggit_supervisor.queue import ClaimedJob, Queue
from pggit_supervisor.retention import Retention
from pggit_supervisor.runner import TOOL_PATH, RunSpec, run_tool
from pggit_supervisor.tools.barman import BarmanAdapter, restore_argv
from pggit_supervisor.tools.base import Context, Outcome

pytestmark = pytest.mark.slow

BARMAN = "/usr/bin/barman"
ORDERS_STATE = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM public.orders t"


@dataclass
class Stack:
    cluster: Cluster
    home: Path  # Barman's own directory: config, catalogue, log (owned by barman)
    config: str
    service: Service

    @property
    def tool(self) -> ToolConfig:
        return ToolConfig(
            name="barman",
            path=BARMAN,
            run_as="barman",
            timeout=600,
            config=self.config,
            allowed_output_dirs=(),
            allowed_commands=(),
            kill_grace=5,
        )


def as_barman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    entry = pwd.getpwnam("barman")
    done = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": TOOL_PATH, "HOME": entry.pw_dir, "LANG": "C.UTF-8"},
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def write_barman_config(home: Path, cluster: Cluster) -> str:
    """Barman's main config and three servers: `pg` (the cluster, streaming), `broken` (nothing
    listens on its port) and `rs` (rsync, never run: only its settings are read)."""
    conf = home / "barman.conf"
    (home / "conf.d").mkdir()
    (home / "home").mkdir()  # barman_home: receive-wal puts its lock there before anything creates it
    conf.write_text(
        f"[barman]\nbarman_user = barman\nconfiguration_files_directory = {home}/conf.d\n"
        f"barman_home = {home}/home\nlog_file = {home}/barman.log\nlog_level = INFO\n"
    )
    # path_prefix: pg_verifybackup (for verify-backup) is only in the version's bin directory on
    # Debian, and tools run with a fixed PATH. immediate_checkpoint: no wait for a spread one.
    (home / "conf.d" / "pg.conf").write_text(
        f"[pg]\nconninfo = host=127.0.0.1 port={cluster.port} user=barman dbname=postgres\n"
        f"streaming_conninfo = host=127.0.0.1 port={cluster.port} user=barman\n"
        "backup_method = postgres\nstreaming_archiver = on\nslot_name = barman\ncreate_slot = auto\n"
        f"immediate_checkpoint = true\npath_prefix = {BIN}\n"
    )
    (home / "conf.d" / "broken.conf").write_text(
        "[broken]\nconninfo = host=127.0.0.1 port=1 user=barman dbname=postgres connect_timeout=2\n"
        "streaming_conninfo = host=127.0.0.1 port=1 user=barman connect_timeout=2\n"
        "backup_method = postgres\nstreaming_archiver = on\nslot_name = barman\n"
    )
    (home / "conf.d" / "rs.conf").write_text(
        "[rs]\nconninfo = host=127.0.0.1 port=1 user=barman dbname=postgres\n"
        "ssh_command = ssh -o BatchMode=yes postgres@127.0.0.1\nbackup_method = rsync\n"
        "backup_options = concurrent_backup\narchiver = on\n"
    )
    entry = pwd.getpwnam("barman")
    for path in [home, *home.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return str(conf)


def processes_using(path: Path) -> list[psutil.Process]:
    """Every process whose command line names `path`: receive-wal, pg_receivewal, a backup."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(path) in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            found.append(proc)
    return found


def archive_first_wal(config: str, dsn: str) -> None:
    """`switch-wal --force --archive` once receive-wal streams (a slot Barman created has no
    restart LSN yet, so a receiver started after the switch would begin past the closed
    segment). Barman archives a streamed segment only once a later one has begun, so write
    WAL while it waits, as any busy server would."""
    wait_until(
        lambda: scalar_in(
            dsn,
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
            "AND application_name = 'barman_receive_wal'",
        ),
        30,
        "receive-wal streaming",
    )
    entry = pwd.getpwnam("barman")
    switch = subprocess.Popen(
        [BARMAN, "-c", config, "switch-wal", "--force", "--archive", "--archive-timeout", "60", "pg"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": TOOL_PATH, "HOME": entry.pw_dir},
    )
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS public.wal_ticks (at timestamptz)")
            while switch.poll() is None:
                cur.execute("INSERT INTO public.wal_ticks VALUES (now())")
                time.sleep(0.2)
    finally:
        conn.close()
    output = switch.communicate()[0]
    assert switch.returncode == 0, f"barman switch-wal --archive pg failed:\n{output}"


def scalar_in(dsn: str, sql: str):
    conn = psycopg2.connect(dsn)
    try:
        return scalar(conn, sql)
    finally:
        conn.close()


def wait_for_barman_check(config: str, server: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (check := as_barman(BARMAN, "-c", config, "check", server, check=False)).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"barman check {server} still fails:\n{check.stdout}{check.stderr}")
        time.sleep(0.5)


def fill_cluster(cluster: Cluster) -> None:
    """Barman's role, the orders a restore must bring back, and the pggit schema."""
    conn = psycopg2.connect(cluster.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE ROLE barman SUPERUSER LOGIN REPLICATION")
        cur.execute("""CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL,
                                                   amount numeric(10,2) NOT NULL, placed_at timestamptz NOT NULL)""")
        cur.execute("""INSERT INTO public.orders SELECT i, 'customer ' || (i % 37), (i * 7 % 1000) / 4.0,
                              timestamptz '2024-01-01 00:00+00' + i * interval '1 hour'
                         FROM generate_series(1, 2000) i""")
    conn.close()
    schema.install(cluster.dsn, log=lambda *_: None)


def start_receive_wal(config: str, home: Path) -> subprocess.Popen:
    """What `barman cron` would start, but ours: started here and ended by `stop_receive_wal`."""
    entry = pwd.getpwnam("barman")
    with open(home / "receive-wal.out", "wb") as out:
        return subprocess.Popen(
            [BARMAN, "-c", config, "receive-wal", "pg"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": TOOL_PATH, "HOME": entry.pw_dir},
            start_new_session=True,
        )


def stop_receive_wal(receiver: subprocess.Popen) -> None:
    """SIGTERM to its process group: barman receive-wal and its pg_receivewal."""
    try:
        os.killpg(receiver.pid, signal.SIGTERM)
        receiver.wait(10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(receiver.pid, signal.SIGKILL)
        receiver.wait(10)


def kill_leftovers(home: Path) -> list[list[str]]:
    """The command lines of processes still naming Barman's directory after 10 s, killed."""
    try:
        wait_until(lambda: not processes_using(home), 10, "Barman's processes to exit")
        return []
    except AssertionError:
        leftovers = processes_using(home)
        for proc in leftovers:
            proc.kill()
        return [proc.info["cmdline"] for proc in leftovers]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A cluster, Barman streaming its WAL with `barman check pg` passing, and a supervisor
    allowed to run Barman as barman. Nothing of it outlives the module."""
    cluster = Cluster(extra_conf="max_replication_slots = 10")
    home = Path(tempfile.mkdtemp(prefix="pggit-barman-", dir="/tmp"))
    receiver = service = None
    try:
        cluster.start()
        fill_cluster(cluster)
        config = write_barman_config(home, cluster)
        # check creates the server's directories (streaming, wals, base): it fails until WAL is archived
        as_barman(BARMAN, "-c", config, "check", "pg", check=False)
        as_barman(BARMAN, "-c", config, "receive-wal", "--create-slot", "pg")
        receiver = start_receive_wal(config, home)
        archive_first_wal(config, cluster.dsn)
        wait_for_barman_check(config, "pg")
        service = Service(
            tmp_path_factory.mktemp("barman-service"),
            cluster.dsn,
            workers=1,
            tools={"barman": {"path": BARMAN, "run_as": "barman", "config": config, "timeout": 600}},
        )
        service.start()
        service.wait_for_log("worker started")
        yield Stack(cluster, home, config, service)
    finally:
        if service is not None:
            service.cleanup()
        if receiver is not None:
            stop_receive_wal(receiver)
        leftovers = kill_leftovers(home)
        cluster.remove()
        shutil.rmtree(home, ignore_errors=True)
        assert not leftovers, f"Barman processes outlived the test: {leftovers}"


@pytest.fixture(scope="module")
def db(stack):
    conn = psycopg2.connect(stack.cluster.dsn)
    conn.autocommit = True
    yield conn
    conn.close()


def schedule(db, sql: str) -> str:
    """Runs a pggit.backup_barman call; returns the id of the job it queued."""
    backup_id = scalar(db, sql)
    return str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))


def backup_of(db, job_id: str) -> dict:
    return query(
        db,
        """SELECT b.*, j.output, j.last_error, j.attempts, j.max_attempts
                          FROM pggit.backups b JOIN pggit.backup_jobs j USING (backup_id) WHERE j.job_id = %s""",
        (job_id,),
    )[0]


@pytest.fixture(scope="module")
def first_backup(stack, db):
    """The guide's call, run by the supervisor; the orders as they were when it was taken, then
    more orders, which a restore of this backup must not show."""
    count, digest = query(db, ORDERS_STATE)[0].values()
    job_id = schedule(db, """SELECT pggit.backup_barman('pg', 'main', '{"wait": true}'::jsonb)""")
    row = wait_for_state(db, job_id, {"completed", "will_retry", "permanently_failed"}, timeout=90)
    with db.cursor() as cur:
        cur.execute("INSERT INTO public.orders SELECT i, 'late', 1, now() FROM generate_series(5001, 5100) i")
    return {"job": row, "backup": backup_of(db, job_id), "count": count, "md5": digest}


def test_scheduled_backup_completes_with_barman_location_sizes_lsns_and_verification(first_backup):
    job, backup = first_backup["job"], first_backup["backup"]
    assert job["job_state"] == "completed", job["last_error"]
    assert backup["status"] == "completed"
    meta = backup["metadata"]
    assert meta["backup_id"] and backup["location"] == f"barman://pg/{meta['backup_id']}"
    assert backup["backup_size"] > 1_000_000
    assert meta["status"] == "DONE" and meta["barman_server"] == "pg" and meta["waited_for_wal"] is True
    assert meta["begin_lsn"] and meta["end_lsn"] and meta["begin_wal"] and meta["end_wal"] and meta["timeline"] == 1
    assert meta["barman_version"].startswith("3.") and meta["backup_method"] == "postgres"
    assert "pg_verifybackup" in meta["verified_by"] and backup["verified_at"] is not None
    assert backup["checksum"] is None and "no checksum" in meta["checksum_note"]
    assert backup["compression_type"] == "none" and backup["compressed_size"] is None
    assert "verified" in backup["output"]


def test_restored_backup_starts_and_holds_the_orders_of_backup_time(stack, first_backup):
    location = first_backup["backup"]["location"]
    root = Path(tempfile.mkdtemp(prefix="pggit-barman-restore-", dir="/tmp"))
    data, sockets = root / "data", root / "sock"
    entry = pwd.getpwnam("barman")
    try:
        for path in (root, data):  # a new, empty directory Barman (run as barman) can write
            path.mkdir(exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        argv = restore_argv(stack.tool, location, str(data))
        assert argv == [BARMAN, "-c", stack.config, "recover", "pg", location.rsplit("/", 1)[1], str(data)]
        recovered = run_tool(RunSpec(argv=tuple(argv), env={}, timeout=120, run_as="barman", cwd="/"))
        assert recovered.ok, recovered.stderr.text() + recovered.stdout.text()
        assert (data / "PG_VERSION").stat().st_uid == entry.pw_uid, "a local recovery writes as barman"
        assert any((data / "pg_wal").glob("0000000*")), "Barman copied the WAL the backup needs into pg_wal"
        subprocess.run(["chown", "-R", "postgres:postgres", str(root)], check=True)
        as_postgres(["mkdir", str(sockets)])
        port = free_port()
        as_postgres(
            [
                str(BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "pg.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {sockets} -c listen_addresses=''",
                "start",
            ]
        )
        conn = psycopg2.connect(host=str(sockets), port=port, user="postgres", dbname="postgres")
        try:
            count, digest = query(conn, ORDERS_STATE)[0].values()
            in_recovery = scalar(conn, "SELECT pg_is_in_recovery()")
        finally:
            conn.close()
        assert first_backup["count"] == 2000, "the 100 orders added after the backup are not in it"
        assert (count, digest) == (first_backup["count"], first_backup["md5"])
        assert in_recovery is False
        as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)


def test_unknown_server_fails_permanently_at_once_naming_it(stack, db):
    job_id = schedule(db, "SELECT pggit.backup_barman('nosuchserver')")
    row = wait_for_state(db, job_id, "permanently_failed", timeout=30)
    assert row["attempts"] == row["max_attempts"], "no retry was left for a job no retry can fix"
    assert (
        f"invalid job: Barman server 'nosuchserver' is not configured in {stack.config} (known: broken, pg, rs)"
    ) == row["last_error"]
    assert backup_of(db, job_id)["status"] == "failed"


def test_reuse_backup_on_a_postgres_server_completes_as_a_full_backup_and_says_so(stack, db, first_backup):
    job_id = schedule(db, """SELECT pggit.backup_barman('pg', 'main', '{"reuse-backup": "link"}'::jsonb)""")
    row = wait_for_state(db, job_id, {"completed", "will_retry", "permanently_failed"}, timeout=90)
    backup = backup_of(db, job_id)
    assert row["job_state"] == "completed", row["last_error"]
    reuse = backup["metadata"]["reuse_backup"]
    assert reuse["requested"] == "link" and reuse["applied"] is False
    assert "backup_method = postgres" in reuse["reason"]
    assert "reuse-backup=link ignored" in backup["output"]
    assert backup["metadata"]["backup_id"] != first_backup["backup"]["metadata"]["backup_id"]
    assert backup["verified_at"] is not None


# -- the adapter called directly, for failures a supervisor would only retry later ---------


def direct(stack: Stack, **params) -> tuple[BarmanAdapter, ClaimedJob, Context]:
    job = claimed(
        "barman",
        job_id="00000000-0000-0000-0000-0000000000b1",
        backup_id="00000000-0000-0000-0000-0000000000b2",
        spec={"tool": "barman", "params": params},
        command="barman backup",
        claim_token=1,
        backup_name="direct",
        database_name="postgres",
    )
    ctx = Context(
        Config(dsn=stack.cluster.dsn, tools=Tools((stack.tool,))), stack.tool, datetime.now(timezone.utc), "test"
    )
    return BarmanAdapter(), job, ctx


def test_reuse_backup_is_passed_to_an_rsync_server_and_dropped_for_a_postgres_one(stack):
    adapter, job, ctx = direct(stack, server="rs", wait=True, reuse_backup="link")
    argv = list(adapter.prepare(job, ctx).run.argv)
    assert argv == [BARMAN, "-c", stack.config, "backup", "--wait", "--reuse-backup=link", "rs"]
    adapter, job, ctx = direct(stack, server="pg", wait=False, reuse_backup="copy")
    invocation = adapter.prepare(job, ctx)
    assert list(invocation.run.argv) == [BARMAN, "-c", stack.config, "backup", "pg"]
    assert invocation.notes["reuse_backup"]["applied"] is False


def test_backup_without_wait_completes_and_is_verified_only_once_done(stack):
    adapter, job, ctx = direct(stack, server="pg", wait=False)
    invocation = adapter.prepare(job, ctx)
    assert "--wait" not in invocation.run.argv
    outcome = adapter.collect(job, invocation, run_tool(invocation.run), ctx)
    assert outcome.ok, outcome.message
    meta = outcome.facts["metadata"]
    assert meta["waited_for_wal"] is False and meta["status"] in ("DONE", "WAITING_FOR_WALS")
    assert outcome.facts["verified"] is (meta["status"] == "DONE")
    if not outcome.facts["verified"]:
        assert "WAITING_FOR_WALS (wait = false)" in meta["verification"]


def test_invalid_params_are_refused_before_barman_runs(stack):
    for params, words in (
        (dict(server="all"), "reserved"),
        (dict(server="-v"), "parameter server: '-v' is not allowed .*a Barman server name"),
        (dict(server="pg", wait="yes"), r"parameter wait: 'yes' is not allowed \(allowed: true, false\)"),
        (dict(server="pg", reuse_backup="incremental"), "reuse_backup"),
    ):
        adapter, job, ctx = direct(stack, **params)
        with pytest.raises(JobError, match=words):
            adapter.prepare(job, ctx)


def test_failing_barman_check_is_retryable_and_lists_the_failed_checks(stack):
    adapter, job, ctx = direct(stack, server="broken", wait=True)
    invocation = adapter.prepare(job, ctx)
    outcome = adapter.collect(job, invocation, run_tool(invocation.run), ctx)
    assert not outcome.ok and outcome.retryable
    assert "barman check broken fails: " in outcome.message and "postgresql" in outcome.message


def test_backup_while_another_holds_barmans_server_lock_is_retryable(stack):
    lock_path = stack.home / "home" / ".pg-backup.lock"
    adapter, job, ctx = direct(stack, server="pg", wait=True)
    invocation = adapter.prepare(job, ctx)
    entry = pwd.getpwnam("barman")
    with open(lock_path, "a") as lock:
        os.chown(lock_path, entry.pw_uid, entry.pw_gid)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running `barman backup pg` holds
        result = run_tool(invocation.run)
    outcome = adapter.collect(job, invocation, result, ctx)
    assert not outcome.ok and outcome.retryable
    assert "another backup of Barman server 'pg' is running" in outcome.message


def backup_then(stack: Stack, change: Callable[[Path], object]) -> Outcome:
    """A direct `barman backup --wait pg`, `change(data_dir)` on what it made, then collect."""
    adapter, job, ctx = direct(stack, server="pg", wait=True)
    invocation = adapter.prepare(job, ctx)
    result = run_tool(invocation.run)
    assert result.ok, result.stderr.text()
    newest = max((stack.home / "home" / "pg" / "base").iterdir(), key=lambda path: path.name)
    change(newest / "data")
    return adapter.collect(job, invocation, result, ctx)


def test_backup_changed_after_the_copy_fails_verification_and_may_be_retried(stack):
    def grow_pg_version(data: Path) -> None:
        with open(data / "PG_VERSION", "a") as handle:
            handle.write("x")

    outcome = backup_then(stack, grow_pg_version)
    assert not outcome.ok and outcome.retryable
    assert outcome.message.startswith("verification failed: barman verify-backup pg ")
    assert '"PG_VERSION" has size 4 on disk but size 3 in the manifest' in outcome.message


def test_backup_without_a_manifest_completes_unverified_and_says_why(stack):
    outcome = backup_then(stack, lambda data: (data / "backup_manifest").unlink())
    assert outcome.ok and outcome.facts["verified"] is False
    assert "has no backup_manifest" in outcome.facts["metadata"]["verification"]
    assert "barman generate-manifest pg" in outcome.message


def test_restore_argv_refuses_what_is_not_a_barman_location(stack):
    for location in ("file:///backups/x", "barman://pg/latest", "barman://-x/20240101T000000", "barman://pg"):
        with pytest.raises(JobError, match="not a Barman backup location"):
            restore_argv(stack.tool, location, "/tmp/x")
    with pytest.raises(JobError, match="absolute"):
        restore_argv(stack.tool, "barman://pg/20240101T000000", "relative/dir")


def test_retention_removes_an_expired_backup_with_barman_delete_and_keeps_the_newest(stack, db, first_backup):
    job_id = schedule(db, """SELECT pggit.backup_barman('pg', 'main', '{"wait": true}'::jsonb)""")
    assert wait_for_state(db, job_id, {"completed", "will_retry", "permanently_failed"}, timeout=90)["job_state"] == (
        "completed"
    )
    newest = backup_of(db, job_id)
    old_id, old_barman_id = str(first_backup["backup"]["backup_id"]), first_backup["backup"]["location"].split("/")[-1]
    config = Config(dsn=stack.cluster.dsn, worker_id="host-x", tools=Tools((stack.tool,)))

    done = apply_retention(Queue(db), config, Retention(target={"tool": "barman", "server": "pg"}, keep_last=1))

    marked = {row[0] for row in done.marked}
    assert old_id in marked and str(newest["backup_id"]) not in marked
    assert [each.error for each in done.removals] == [None] * len(done.removals), done.render()
    listed = as_barman(BARMAN, "-c", stack.config, "list-backup", "--minimal", "pg").stdout.split()
    assert old_barman_id not in listed and newest["location"].split("/")[-1] in listed
    status = query(db, "SELECT removal, removed_by FROM pggit.backup_expiration_status WHERE backup_id = %s", (old_id,))
    assert status == [{"removal": "removed", "removed_by": "host-x"}]


def test_wal_freshness_of_a_server_falls_behind_while_barman_does_not_archive_and_catches_up(stack, db):
    """Streamed segments reach Barman's archive only when `barman cron` (or archive-wal) files
    them: with none running, the archive falls behind the server, whatever `barman check` says.
    Barman's own view of the server (diagnose) says where the server is."""
    target = {"tool": "barman", "server": "pg"}
    config = Config(
        dsn=stack.cluster.dsn, worker_id="host-w", tools=Tools((stack.tool,)), retention=(Retention(target),)
    )
    checks, queue, key = ArchiveChecks(config, IdleLink()), Queue(db), json.dumps(target, sort_keys=True)

    def switch() -> str:
        with db.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS public.wal_noise (x int); INSERT INTO public.wal_noise VALUES (1)")
            cur.execute("SELECT pg_walfile_name(pg_switch_wal())")
            closed = cur.fetchone()[0]
            cur.execute("INSERT INTO public.wal_noise VALUES (2)")
        return closed

    switch()
    last = switch()
    behind = checks.check(queue, target, key)
    shown = query(db, "SELECT * FROM pggit.archive_freshness")[0]
    assert behind.error is None and behind.archive_max < last < behind.server_segment, behind
    assert shown["behind_since"] is not None and shown["server_position_known"] and shown["detail"].startswith("BARMAN")

    def caught_up() -> bool:
        as_barman(BARMAN, "-c", stack.config, "archive-wal", "pg")
        return checks.check(queue, target, key).archive_max >= last

    wait_until(caught_up, 60, "Barman filed the streamed segments")
    shown = query(db, "SELECT * FROM pggit.archive_freshness")[0]
    assert shown["behind_since"] is None and shown["wal_age_seconds"] < 60
