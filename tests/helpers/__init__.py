"""What more than one test module uses, importable by every layer and by conftest.py alike.

Tests import these as `from helpers.db import query` (the pytest config puts tests/ on
sys.path). Nothing here imports conftest.py: pytest imports each layer's conftest.py under the
same module name, so `from conftest import ...` would get whichever one it loaded last.

- session: the run's server (host, port, user), the drill user and the fake tool's copy
- db: connection strings and the query / scalar / refused shorthands
- queue: schedule, claim and read queue rows from SQL
- service: a real supervisor process and waiting for what it does
- cluster: throwaway PostgreSQL clusters (also used by packaging/test_installed.py)
- clock: a fake monotonic clock for the in-process units
- jobs: a claimed job as a worker holds it, without a queue
- config_files: a config written for a test, and the problems the loader finds in it
- webhook_server: a local HTTP endpoint for notifications, and the README's receiver snippet
- prerequisites, release_0_1_0, schema_snapshot, fake_tool: one job each, see their docstrings
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/helpers/ is two levels down
CLI = [sys.executable, "-m", "pggit_supervisor"]  # the program, as the tests run it
