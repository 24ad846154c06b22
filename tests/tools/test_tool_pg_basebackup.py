"""pg_basebackup end to end, on a cluster of the test's own: backed up by a real supervisor,
verified with pg_verifybackup, restored with `pggit-supervisor restore --target-dir`, started,
and compared with the source; and the restore drill that does the same by itself."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest

from helpers import CLI, ROOT
from helpers.cluster import BIN, Cluster, as_postgres, free_port
from helpers.db import query, scalar
from helpers.service import Service, wait_for_state
from pggit_supervisor import schema

pytestmark = pytest.mark.slow
TABLE_DIGEST = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM public.orders t"


@pytest.fixture(scope="module")
def source():
    cluster = Cluster().start()
    try:
        schema.install(cluster.dsn, log=lambda *_: None)
        conn = psycopg2.connect(cluster.dsn)
        conn.autocommit = True
        conn.cursor().execute(
            "CREATE TABLE public.orders AS SELECT g AS id, md5(g::text) AS label FROM generate_series(1, 20000) g"
        )
        yield cluster, conn
        conn.close()
    finally:
        cluster.remove()


@pytest.fixture
def running(source, tmp_path, backup_dir, drill_tmpdir):
    cluster, _ = source
    config = {"pg_basebackup": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}}
    service = Service(tmp_path, cluster.dsn, workers=2, tools=config).start(env={"TMPDIR": str(drill_tmpdir)})
    yield service
    service.cleanup()


def _job(conn, backup_id, tool="pg_basebackup"):
    return str(
        scalar(conn, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s AND tool = %s", (backup_id, tool))
    )


def _start_restored(data_dir: Path) -> tuple[int, Path]:
    port = free_port()
    sock = data_dir.parent / "sock"
    as_postgres(["mkdir", "-p", str(sock)])
    as_postgres(
        [
            "sh",
            "-c",
            f"printf \"port = {port}\\nunix_socket_directories = '{sock}'\\n\" >> {data_dir}/postgresql.auto.conf",
        ]
    )
    as_postgres([str(BIN / "pg_ctl"), "-D", str(data_dir), "-l", str(data_dir.parent / "restored.log"), "-w", "start"])
    return port, sock


@pytest.mark.parametrize(
    "options", ["{}", '{"format": "tar", "compression": "gzip", "compression_level": 6}'], ids=["plain", "tar-gzip"]
)
def test_base_backup_is_verified_restored_started_and_equal_to_the_source(
    source, running, backup_dir, options, drill_tmpdir
):
    cluster, conn = source
    expected = query(conn, TABLE_DIGEST)[0]
    backup_id = scalar(conn, "SELECT pggit.backup_pg_basebackup('main', %s, %s::jsonb)", (str(backup_dir), options))
    wait_for_state(conn, _job(conn, backup_id), "completed", timeout=120)
    row = query(conn, "SELECT * FROM pggit.backups WHERE backup_id = %s", (backup_id,))[0]
    assert row["status"] == "completed" and row["verified_at"] is not None
    assert row["metadata"]["verified_by"] == "pg_verifybackup"
    assert row["metadata"]["start_lsn"] and row["metadata"]["stop_lsn"]
    assert row["checksum"].startswith("sha256:") and row["backup_size"] > 1_000_000
    path = Path(row["location"].removeprefix("file://"))
    assert (path / "backup_manifest").exists() and not list(backup_dir.glob(".*partial"))

    target = Path(tempfile.mkdtemp(prefix="pggit-restored-", dir="/tmp"))
    shutil.chown(target, "postgres", "postgres")
    data_dir = target / "data"
    config = target / "supervisor.yaml"
    config.write_text(
        f"dsn: '{cluster.dsn}'\ntools:\n  pg_basebackup: {{run_as: postgres, allowed_output_dirs: [{backup_dir}]}}\n"
    )
    try:
        out = subprocess.run(
            CLI + ["restore", str(backup_id), "--target-dir", str(data_dir), "-c", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        port, sock = _start_restored(data_dir)
        restored = psycopg2.connect(host=str(sock), port=port, user="postgres", dbname="postgres")
        try:
            assert query(restored, TABLE_DIGEST)[0] == expected
        finally:
            restored.close()
            as_postgres([str(BIN / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"])
        again = subprocess.run(
            CLI + ["restore", str(backup_id), "--target-dir", str(data_dir), "-c", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert again.returncode == 1 and "is not empty" in again.stderr
    finally:
        subprocess.run([str(BIN / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(target, ignore_errors=True)

    drill = str(scalar(conn, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    wait_for_state(conn, drill, "completed", timeout=120)
    row = query(conn, "SELECT restore_test_result, metadata FROM pggit.backups WHERE backup_id = %s", (backup_id,))[0]
    assert row["restore_test_result"] == "passed"
    assert row["metadata"]["restore_test"]["kind"] == "start-and-query"
    assert row["metadata"]["restore_test"]["databases"] >= 2
    assert not list(drill_tmpdir.iterdir()), "the drill's sandbox is removed"


def test_restore_drill_of_a_pgbackrest_backup_is_refused_with_a_hint(source):
    _, conn = source
    backup_id = scalar(
        conn, "SELECT pggit.register_backup('x', 'full', 'pgbackrest', 'pgbackrest://demo/1', p_branch_name := 'main')"
    )
    conn.cursor().execute("SELECT pggit.complete_backup(%s)", (backup_id,))
    with pytest.raises(psycopg2.Error) as exc:
        conn.cursor().execute("SELECT pggit.schedule_restore_test(%s)", (backup_id,))
    assert exc.value.pgcode == "22023" and "pggit-supervisor restore" in exc.value.diag.message_hint
