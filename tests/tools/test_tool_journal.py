"""The real python3-systemd JournalHandler (Debian 12's, as the package depends on it) gets each
log line's fields: the system Python imports log.py from the checkout (it needs nothing but the
standard library and systemd), logs one line with fields(...) through log.setup('journal'), and
a sender standing in for journald records what the handler would send. No journald runs here:
the handler's send function is the one boundary replaced."""

from __future__ import annotations

import json
import subprocess

from helpers import ROOT

SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = """
import json, logging
from pggit_supervisor import log
log.set_context(database="mydb")
log.setup("INFO", "{destination}")
handler = logging.getLogger().handlers[0]
sent = []
if hasattr(handler, "send"):
    handler.send = lambda MESSAGE, **values: sent.append({{"MESSAGE": MESSAGE, **values}})
logging.getLogger("pggit.worker").info(
    "job claimed" + log.fields(job="j-1", worker="h/1", tool="pg_dump", target="pgbackrest:main", attempt="1/3")
)
print(json.dumps({{"handler": type(handler).__name__,
                  "sent": [{{k: str(v) for k, v in item.items() if k.isupper()}} for item in sent]}}))
"""


def probe(destination: str, env: dict[str, str] | None = None) -> tuple[dict, str]:
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", PROBE.format(destination=destination)],
        capture_output=True,
        text=True,
        cwd="/tmp",
        env={"PYTHONPATH": str(ROOT), **(env or {})},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr + "\n(python3-systemd missing? run: sh packaging/install-deps.sh)"
    return json.loads(done.stdout), done.stderr


def test_the_journal_handler_sends_each_lines_fields_as_journal_fields():
    found, _ = probe("journal")

    assert found["handler"] == "JournalHandler"
    (sent,) = found["sent"]
    assert sent["MESSAGE"] == (
        "INFO pggit.worker: job claimed job=j-1 worker=h/1 tool=pg_dump target=pgbackrest:main attempt=1/3"
        " database=mydb"
    )
    expected = {
        "JOB_ID": "j-1",
        "WORKER": "h/1",
        "TOOL": "pg_dump",
        "TARGET": "pgbackrest:main",
        "DATABASE": "mydb",
        "PGGIT_ATTEMPT": "1/3",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "pggit-supervisor",
    }
    assert {key: sent.get(key) for key in expected} == expected


def test_under_systemd_auto_picks_the_journal_and_elsewhere_stderr_lines():
    assert probe("auto", {"JOURNAL_STREAM": "8:12345"})[0]["handler"] == "JournalHandler"
    found, stderr = probe("auto")
    assert found == {"handler": "StreamHandler", "sent": []}
    assert "INFO pggit.worker[" in stderr and "job claimed job=j-1 worker=h/1" in stderr
