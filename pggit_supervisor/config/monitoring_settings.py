"""The top-level settings of monitoring (issue 11): WAL archive readings, the metrics textfile,
`status --check`'s limits and where log lines go. settings.py puts them in ROOT; they are kept
apart only so that neither file grows past a reader's page count."""

from __future__ import annotations

import re

from .kinds import Derived, Duration, Name, Number, Path, Setting

MONITORING: tuple[Setting, ...] = (
    # -- WAL archiving freshness (issue 11) ---------------------------------------------------
    Setting(
        "archive_check_interval",
        Duration(10, 86400),
        "how often the WAL archive of each pgBackRest stanza and Barman server the schedules and"
        " retention name is read (by one worker of any host)",
        "5m",
    ),
    # -- metrics (issue 11) ---------------------------------------------------------------------
    Setting(
        "metrics_textfile_dir",
        Path("an absolute directory path", not_root=True),
        "where each served database's Prometheus metrics file pggit_<database>.prom is written, for"
        " node_exporter's textfile collector (e.g. /var/lib/prometheus/node-exporter)",
        Derived("none: no metrics are written"),
        null_is_default=True,
    ),
    Setting(
        "metrics_interval",
        Duration(10, 3600),
        "how often an idle worker rewrites its database's metrics file",
        "60s",
    ),
    # -- status and its --check probe, logging to the journal (issue 11) --------------------
    Setting(
        "worker_silence",
        Duration(30, 7 * 86400),
        "`status` calls a worker dead, and --check is CRITICAL for a database none of whose workers was seen,"
        " after this long without a record",
        "2m",
    ),
    Setting(
        "max_wal_age",
        Duration(60, 30 * 86400),
        "`status --check` is CRITICAL when a pgBackRest stanza's or Barman server's WAL archive is this far"
        " behind (pggit.archive_freshness), or was never read",
        "1h",
    ),
    Setting(
        "warning_fraction",
        Number(0.1, 1.0),
        "`status --check` is WARNING once an age reaches this fraction of its limit (max_age, worker_silence,"
        " max_wal_age, max_drill_age)",
        0.8,
    ),
    Setting(
        "log_destination",
        Name(re.compile("auto|journal|stderr"), "be auto, journal or stderr", allowed="auto, journal, stderr"),
        "where log lines go: journal (the systemd journal, with fields JOB_ID, WORKER, DATABASE, TOOL, TARGET;"
        " needs python3-systemd), stderr, or auto: the journal when systemd started the service"
        " (JOURNAL_STREAM is set) and python3-systemd is installed, else stderr",
        "auto",
    ),
)

__all__ = ["MONITORING"]
