"""The metrics textfiles from a real supervisor (issue 11): each served database's, written by an
idle worker, and the supervisor's own, which counts a worker killed with SIGKILL and restarted;
both parse with the Prometheus client library's parser."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from helpers.processes import wait_until


def samples(path: Path) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_a_supervisor_writes_its_databases_metrics_and_its_own_and_counts_a_worker_restart(make_service, tmp_path):
    directory = tmp_path / "textfiles"
    directory.mkdir()
    service = make_service(
        metrics_textfile_dir=str(directory),
        metrics_interval="10s",
        retention=[{"target": {"tool": "pg_dump", "schema": "never"}}],
        tools={"pg_dump": {}},
    ).start()
    service.wait_for_log("worker started", count=2)
    database_file = wait_until(lambda: next(directory.glob("pggit_pggit_*.prom"), None), 30, "the database's file")
    own = directory / "pggit_supervisor_test.prom"
    wait_until(own.exists, 30, "the supervisor's file")

    def both_workers_recorded() -> dict | None:
        # the first file may be written before the second worker has recorded itself
        found = samples(database_file)
        alive = {s.labels["state"]: s.value for s in found["pggit_workers"]}["alive"]
        return found if alive == 2 else None

    found = wait_until(both_workers_recorded, 40, "a file that counts both workers alive")
    (target,) = found["pggit_target_info"]
    assert (target.labels["tool"], target.labels["target"].endswith("/never")) == ("pg_dump", True)
    assert "pggit_backup_last_success_timestamp_seconds" not in found, "never backed up: absent, never 0"
    assert samples(own)["pggit_worker_restarts_total"][0].value == 0

    victim = service.workers()[0]
    os.kill(victim.pid, signal.SIGKILL)
    service.wait_for_log("worker died")

    def restarted() -> bool:
        return samples(own)["pggit_worker_restarts_total"][0].value == 1

    wait_until(restarted, 30, "the supervisor counts the restart")
    mine = samples(own)
    assert sum(s.value for s in mine["pggit_supervisor_workers"]) in (1, 2)
    assert service.stop() == 0
    assert sorted(p.name for p in directory.iterdir()) == sorted([database_file.name, own.name]), (
        "no temporary file left"
    )
