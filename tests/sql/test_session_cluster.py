"""The run's own server: a throwaway cluster unless PGGIT_TEST_* name one, and gone after the run
however the run ended."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import session
from helpers.db import scalar

TESTS = Path(__file__).resolve().parents[1]  # what puts helpers on sys.path

_STARTS_ITS_CLUSTER_AND_WAITS = """
import sys, time
sys.path.insert(0, sys.argv[1])
from helpers.cluster import Cluster
cluster = Cluster()
cluster.remove_when_this_process_ends()
cluster.start()
print(cluster.dir, cluster.port, flush=True)
time.sleep(600)
"""


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_tests_use_a_cluster_of_their_own_unless_told_otherwise(db):
    data_directory = scalar(db, "SHOW data_directory")

    if session.OWN_SERVER:
        assert data_directory.startswith("/tmp/pggit-cluster-"), data_directory
        assert session.PG_PORT != 5432
        assert scalar(db, "SHOW fsync") == "off"
        assert scalar(db, "SHOW wal_level") == "replica"
    else:
        assert session.PG_PORT == int(os.environ.get("PGGIT_TEST_PGPORT") or 5432)


def test_a_cluster_is_stopped_and_removed_after_its_process_is_killed():
    starter = subprocess.Popen(
        [sys.executable, "-c", _STARTS_ITS_CLUSTER_AND_WAITS, str(TESTS)], stdout=subprocess.PIPE, text=True
    )
    try:
        directory, port = starter.stdout.readline().split()
        assert Path(directory).is_dir() and _accepts(int(port))

        starter.send_signal(signal.SIGKILL)  # no atexit, no finally: only the reaper can clean up
        starter.wait(10)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (Path(directory).exists() or _accepts(int(port))):
            time.sleep(0.2)
        assert not _accepts(int(port)), "the server outlived the killed run"
        assert not Path(directory).exists(), "the cluster's directory was left behind"
    finally:
        starter.kill()
        starter.wait()
