"""Which WAL archives a database's workers read (archive_check.archive_targets): each pgBackRest
stanza and Barman server its schedules back up or its retention keeps, once each."""

from __future__ import annotations

from pggit_supervisor.archive_check import archive_targets
from pggit_supervisor.config import Config
from pggit_supervisor.retention import Retention
from pggit_supervisor.scheduler import Schedule


def test_every_stanza_and_server_named_once_and_no_dump_target():
    config = Config(
        dsn="dbname=app",
        schedules=(
            Schedule("full", "@daily", "pgbackrest", {"backup_type": "full"}),  # the default stanza, main
            Schedule("incr", "@hourly", "pgbackrest", {"stanza": "main", "backup_type": "incr"}),
            Schedule("bm", "@daily", "barman", {"server_name": "pg"}),
            Schedule("dump", "@daily", "pg_dump", {}),
        ),
        retention=(
            Retention({"tool": "pgbackrest", "stanza": "other"}),
            Retention({"tool": "barman", "server": "pg"}),
            Retention({"tool": "pg_dump"}),
        ),
    )
    assert archive_targets(config) == [
        {"tool": "barman", "server": "pg"},
        {"tool": "pgbackrest", "stanza": "main"},
        {"tool": "pgbackrest", "stanza": "other"},
    ]
    assert archive_targets(Config(dsn="dbname=app")) == []
