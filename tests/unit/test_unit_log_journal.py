"""log.py: the same `"message" + fields(...)` call gives today's stderr line and, under systemd,
the journal fields JOB_ID, WORKER, DATABASE, TOOL, TARGET (any other key as PGGIT_<KEY>), which
`journalctl -u pggit-supervisor JOB_ID=...` filters on. The record -> fields mapping is tested
here without a running journald."""

from __future__ import annotations

import logging

import pytest

from pggit_supervisor import log
from pggit_supervisor.log import fields, journal_fields, use_journal


def record(message: object) -> logging.LogRecord:
    return logging.LogRecord("pggit.worker", logging.INFO, __file__, 1, message, None, None)


@pytest.fixture(autouse=True)
def no_context():
    log.set_context()
    yield
    log.set_context()


def test_the_message_keeps_its_stderr_text_and_carries_the_journal_fields():
    message = "job claimed" + fields(job="j-1", worker="host/1", tool="pg_dump", target="pg_dump:db", backup="b 1")

    assert message == "job claimed job=j-1 worker=host/1 tool=pg_dump target=pg_dump:db backup='b 1'"
    assert journal_fields(record(message)) == {
        "JOB_ID": "j-1",
        "WORKER": "host/1",
        "TOOL": "pg_dump",
        "TARGET": "pg_dump:db",
        "PGGIT_BACKUP": "b 1",
    }


def test_fields_survive_more_text_on_either_side_and_none_values_are_left_out():
    message = "lease expired" + fields(job="j-2", lost_by=None) + "; returned" + fields(state="ready")
    assert message == "lease expired job=j-2; returned state=ready"
    assert journal_fields(record(message)) == {"JOB_ID": "j-2", "PGGIT_STATE": "ready"}


def test_the_processs_context_gives_the_database_unless_the_message_names_its_own():
    log.set_context(database="sales")
    assert journal_fields(record("worker started" + fields(worker="h/1")))["DATABASE"] == "sales"
    assert journal_fields(record("x" + fields(database="hr")))["DATABASE"] == "hr"


def test_a_key_of_ours_never_passes_for_one_of_journalds_own_fields():
    found = journal_fields(record("x" + fields(message="m", priority="0", pid=1, **{"a-b": 2})))
    assert found == {"PGGIT_MESSAGE": "m", "PGGIT_PRIORITY": "0", "PGGIT_PID": "1", "PGGIT_A_B": "2"}


def test_a_plain_message_has_no_fields_of_its_own():
    assert journal_fields(record("supervisor started")) == {}
    assert journal_fields(record("%s jobs")) == {}


def test_the_journal_is_used_under_systemd_or_when_asked_and_stderr_otherwise():
    assert use_journal("stderr", {"JOURNAL_STREAM": "8:123"}) is False
    assert use_journal("journal", {}) is True
    assert use_journal("auto", {}) is False
    assert use_journal("auto", {"JOURNAL_STREAM": "8:123"}) is (log.JournalHandler is not None)


def test_without_python3_systemd_a_journal_setup_logs_stderr_lines_and_says_why(capsys, monkeypatch):
    monkeypatch.setattr(log, "JournalHandler", None)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        log.setup("INFO", "journal")
        logging.getLogger("pggit.test").info("hello" + fields(job="j-3"))
    finally:
        root.handlers[:], root.level = saved
    err = capsys.readouterr().err
    assert "python3-systemd is not installed: logging to stderr" in err
    assert "INFO pggit.test[" in err and "hello job=j-3" in err
