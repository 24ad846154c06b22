"""The metrics file's content from a real queue database (metrics.py, schema/022): parsed with
the client library's own parser; a target that was never backed up has no last-success sample
(never a 0) but is listed in pggit_target_info; the writer replaces the file whole."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helpers.db import scalar
from helpers.retention import make
from pggit_supervisor.config import Config
from pggit_supervisor.metrics import MetricsWriter, registry_of
from pggit_supervisor.queue import Queue
from pggit_supervisor.retention import Retention
from pggit_supervisor.scheduler import Schedule


def samples(text: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def config_for(dsn: str, **settings) -> Config:
    return Config(
        dsn=dsn,
        worker_id="host-m",
        retention=(Retention({"tool": "pg_dump"}), Retention({"tool": "pgbackrest", "stanza": "never"})),
        schedules=(Schedule("nightly", "0 2 * * *", "pgbackrest", {"stanza": "never", "backup_type": "full"}),),
        **settings,
    )


def test_a_backed_up_target_has_its_times_and_one_never_backed_up_has_none(db, dsn):
    now = scalar(db, "SELECT now()")
    make(db, now - timedelta(days=2))
    newest = make(db, now - timedelta(hours=3))
    make(db, now - timedelta(hours=1), status="failed", verified=False)
    text = generate_latest(registry_of(config_for(dsn), Queue(db).metrics_snapshot())).decode()
    found = samples(text)

    (success,) = found["pggit_backup_last_success_timestamp_seconds"]
    assert success.labels["tool"] == "pg_dump" and success.labels["backup_type"] == "snapshot"
    completed = scalar(db, "SELECT extract(epoch FROM completed_at) FROM pggit.backups WHERE backup_id = %s", (newest,))
    assert abs(success.value - float(completed)) < 0.01
    assert [s.value for s in found["pggit_backups_verified"]] == [2]
    assert {s.labels["result"]: s.value for s in found["pggit_backup_runs"]} == {
        "completed": 2,
        "failed": 1,
        "cancelled": 0,
    }
    listed = {(s.labels["tool"], s.labels["target"]) for s in found["pggit_target_info"]}
    database = scalar(db, "SELECT current_database()")
    assert listed == {("pgbackrest", "never"), ("pg_dump", database)}
    assert success.labels["target"] == database, "the same target label as pggit_target_info's"
    assert not [s for s in found["pggit_backup_last_success_timestamp_seconds"] if s.labels["stanza"] == "never"]
    assert "pggit_wal_archive_age_seconds" not in found, "no reading yet: no sample, never a 0"
    (fire,) = found["pggit_schedule_next_fire_timestamp_seconds"]
    assert fire.labels["schedule"] == "nightly" and fire.value > now.timestamp()
    assert found["pggit_build_info"][0].value == 1 and found["pggit_metrics_written_timestamp_seconds"][0].value > 0


def test_the_writer_replaces_the_file_whole_once_it_is_older_than_the_interval(db, dsn, tmp_path):
    writer = MetricsWriter(config_for(dsn, metrics_textfile_dir=str(tmp_path), metrics_interval=60), "host-m/1")
    assert writer.tick(Queue(db))
    path = writer.path
    assert path == str(tmp_path / f"pggit_{scalar(db, 'SELECT current_database()')}.prom") and os.path.isfile(path)
    assert "pggit_target_info" in samples(open(path).read())
    writer.next_look = 0.0
    assert not writer.tick(Queue(db)), "fresh enough: left alone"
    os.utime(path, (0, 0))
    writer.next_look = 0.0
    assert writer.tick(Queue(db)) and os.stat(path).st_mtime > 0
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)], "no temporary file is left"


ALERTS = Path(__file__).resolve().parents[2] / "packaging" / "prometheus" / "pggit-supervisor-alerts.yml"


def test_the_shipped_alert_rules_name_only_metrics_the_file_has_and_cover_each_case(db, dsn):
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} >= {
        "PggitBackupTooOld",
        "PggitNeverBackedUp",
        "PggitWalArchiveTooOld",
        "PggitRestoreDrillTooOld",
        "PggitPermanentFailures",
        "PggitNoWorkers",
        "PggitMetricsStale",
    }
    registry = registry_of(config_for(dsn), Queue(db).metrics_snapshot())
    declared = {metric.name for metric in registry.collect()}
    used = {name for rule in rules for name in re.findall(r"\bpggit_[a-z_]+", rule["expr"])}
    assert used - declared == set(), "every metric an alert reads is one the file declares"
