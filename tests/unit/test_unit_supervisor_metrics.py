"""The supervisor's own metrics file (supervisor_metrics.py): deaths, kills and rescues counted
per database since it started, written whole, no more often than metrics_interval."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pggit_supervisor.config import Config, Database
from pggit_supervisor.supervisor_metrics import SupervisorMetrics


def values(path: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(open(path).read()):
        for sample in family.samples:
            found[(sample.name, sample.labels.get("database", ""))] = sample.value
    return found


def test_counts_per_database_written_at_most_every_interval(tmp_path):
    now = [100.0]
    config = Config(
        dsn="dbname=app",
        worker_id="host/1 ",
        databases=(Database("app", "dbname=app", 2), Database("billing", "dbname=billing", 1)),
        metrics_textfile_dir=str(tmp_path),
        metrics_interval=60,
    )
    metrics = SupervisorMetrics(config, clock=lambda: now[0])
    metrics.worker_died("app")
    metrics.worker_killed("billing")
    metrics.jobs_rescued("app", 3)
    assert metrics.write_if_due(["app", "app", "billing"])
    path = metrics.path()
    assert path == str(tmp_path / "pggit_supervisor_host_1_.prom"), "the host's id, safe as a file name"
    found = values(path)
    assert found[("pggit_worker_restarts_total", "app")] == 1 and found[("pggit_worker_restarts_total", "billing")] == 0
    assert found[("pggit_worker_kills_total", "billing")] == 1
    assert found[("pggit_lease_rescues_total", "app")] == 3
    assert found[("pggit_supervisor_workers", "app")] == 2 and found[("pggit_supervisor_workers", "billing")] == 1

    metrics.worker_died("app")
    assert not metrics.write_if_due(["app"]), "not before metrics_interval"
    now[0] += 61
    assert metrics.write_if_due(["app"])
    assert values(path)[("pggit_worker_restarts_total", "app")] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pggit_supervisor_host_1_.prom"]


def test_nothing_is_written_without_a_directory():
    assert not SupervisorMetrics(Config(dsn="dbname=app")).write_if_due([])
