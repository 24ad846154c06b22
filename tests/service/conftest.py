"""The service layer: real `pggit-supervisor` processes (helpers/service.py) and their workers,
against the test's database; everything they started is killed at the end of the test."""

from __future__ import annotations

import pytest


@pytest.fixture
def service(make_service, backup_dir, drill_tmpdir):
    """service(**settings) -> a started supervisor that backs up with pg_dump into backup_dir and
    runs its restore drills' sandboxes in drill_tmpdir (the drill tests read their leftovers)."""

    def start(**settings):
        settings.setdefault("tools", {"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}})
        return make_service(**settings).start(env={"TMPDIR": str(drill_tmpdir)})

    return start
