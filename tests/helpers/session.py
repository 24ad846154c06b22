"""The test run's server and the other things fixed once per run, importable anywhere.

The server is a throwaway cluster of the run's own (trust auth on a free port; conftest.py
starts it at session start), so the tests do not depend on how the machine's PostgreSQL is set
up. PGGIT_TEST_PGHOST / PGGIT_TEST_PGPORT / PGGIT_TEST_PGUSER point the run at a server instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from helpers.cluster import free_port

_SERVER_VARIABLES = ("PGGIT_TEST_PGHOST", "PGGIT_TEST_PGPORT", "PGGIT_TEST_PGUSER")
OWN_SERVER = not any(os.environ.get(name) for name in _SERVER_VARIABLES)
PG_HOST = os.environ.get("PGGIT_TEST_PGHOST") or "127.0.0.1"
# The session cluster's port is chosen now, so modules can import it; the cluster starts at
# session start (pytest_sessionstart), after the check for missing tools.
PG_PORT = free_port() if OWN_SERVER else int(os.environ.get("PGGIT_TEST_PGPORT") or "5432")
PG_USER = os.environ.get("PGGIT_TEST_PGUSER") or "postgres"
DRILL_USER = "pggit-drill"  # the default drill_user, which the Debian package creates
# Enough for the concurrency tests; wal_level and wal senders (in Cluster) for pg_basebackup.
SESSION_SERVER_CONF = "max_connections = 200\n"

# What a test runs as another OS user must be readable by that user, wherever the checkout is
# (a checkout under /root, mode 0700, is not): a copy in a directory everyone can read.
_SHARED_DIR = Path(tempfile.mkdtemp(prefix="pggit-test-shared-", dir="/tmp"))
os.chmod(_SHARED_DIR, 0o755)
atexit.register(shutil.rmtree, _SHARED_DIR, ignore_errors=True)
FAKE_TOOL = str(_SHARED_DIR / "fake_tool.py")
shutil.copy(Path(__file__).with_name("fake_tool.py"), FAKE_TOOL)
os.chmod(FAKE_TOOL, 0o755)
