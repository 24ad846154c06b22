"""The completer in-process, over a stand-in queue: each ending goes to its one queue call, a
report whose commit was not seen is confirmed rather than sent twice, a refused call is given
up at once, and a stopping service gives up after ABORT_DELIVERY_SECONDS. The real queue
functions and a real PostgreSQL restart are in the sql and service tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import pytest

from helpers.jobs import claimed
from pggit_supervisor import completer as completer_module
from pggit_supervisor.completer import Completer
from pggit_supervisor.config import RetryConfig
from pggit_supervisor.errors import Failure
from pggit_supervisor.executor import LOST_CLAIM, SHUTDOWN, Abandoned, Completed, Failed, HandedBack


@dataclass
class StandInQueue:
    """Answers like the queue functions; `breaks` calls raise before answering."""

    breaks: list[BaseException] = field(default_factory=list)
    status: str | None = None  # what claimed_job_status says
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def _call(self, name: str, answer: Any, *args: Any) -> Any:
        self.calls.append((name, args))
        if self.breaks:
            raise self.breaks.pop(0)
        return answer

    def finish(self, job, output, facts, result):
        return self._call("finish", True, output, dict(facts), dict(result))

    def fail(self, job, error, retryable, base_delay, max_delay, result):
        return self._call("fail", "will_retry" if retryable else "permanently_failed", error, retryable)

    def release(self, job, reason):
        return self._call("release", True, reason)

    def abandon(self, job):
        return self._call("abandon", True)

    def outcome_of(self, job):
        self.calls.append(("outcome_of", ()))
        return self.status


@dataclass
class Link:
    queue: StandInQueue
    aborting: bool = False
    name: str = "test/1"
    told: list[tuple[Any, ...]] = field(default_factory=list)
    lost: int = 0

    def ensure_connected(self):
        return self.queue

    def lost_connection(self, exc):
        self.lost += 1

    def beat(self):
        pass

    def tell(self, *words):
        self.told.append(words)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(completer_module, "_RETRY_PAUSE", 0.01)


def complete(ending, queue=None, **link):
    link = Link(queue or StandInQueue(), **link)
    Completer(link, RetryConfig(base_delay=1, max_delay=2)).complete(claimed(), ending)
    return link


def test_each_ending_goes_to_its_one_queue_call_and_the_worker_says_idle():
    cases = [
        (Completed("done", {"backup_size": 1}, {"argv": ["/bin/true"]}), "finish", ("idle", "ok")),
        (Failed(Failure("boom", True)), "fail", ("idle", "failed")),
        (Abandoned(LOST_CLAIM), "abandon", ("idle", "stopped")),
        (HandedBack(SHUTDOWN), "release", ("idle", "stopped")),
    ]
    for ending, call, told in cases:
        link = complete(ending)
        assert [name for name, _ in link.queue.calls] == [call], ending
        assert link.told == [told]


def test_an_abandoned_job_is_handed_back_when_the_service_began_stopping():
    link = complete(Abandoned(LOST_CLAIM), aborting=True)
    assert [name for name, _ in link.queue.calls] == ["release"]
    assert link.queue.calls[0][1][0] == f"{SHUTDOWN}: handed back by test/1"


def test_a_result_whose_commit_was_not_seen_is_confirmed_not_sent_again(caplog):
    queue = StandInQueue(breaks=[psycopg2.OperationalError("server closed the connection")], status="completed")
    with caplog.at_level(logging.INFO, logger="pggit.worker"):
        link = complete(Completed("done", {}, {}), queue)
    assert [name for name, _ in queue.calls] == ["finish", "outcome_of"]
    assert link.lost == 1
    assert any("job completed" in r.getMessage() for r in caplog.records)


def test_an_unconfirmed_result_is_sent_again_once_the_database_answers():
    queue = StandInQueue(breaks=[psycopg2.InterfaceError("connection already closed")], status=None)
    complete(Failed(Failure("boom", False)), queue)
    assert [name for name, _ in queue.calls] == ["fail", "outcome_of", "fail"]


def test_a_call_the_database_refuses_is_given_up_at_once_and_logged(caplog):
    queue = StandInQueue(breaks=[psycopg2.DataError("p_output: 70000 bytes is more than the limit")])
    with caplog.at_level(logging.WARNING, logger="pggit.worker"):
        link = complete(Completed("done", {}, {}), queue)
    assert [name for name, _ in queue.calls] == ["finish"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not record the job's result: p_output" in m for m in messages)
    assert any("result discarded" in m for m in messages)
    assert link.told == [("idle", "ok")]


def test_a_stopping_service_gives_up_on_an_unreachable_database(monkeypatch, caplog):
    monkeypatch.setattr(completer_module, "ABORT_DELIVERY_SECONDS", 0.2)
    queue = StandInQueue(breaks=[psycopg2.OperationalError("down")] * 1000, status=None)
    with caplog.at_level(logging.ERROR, logger="pggit.worker"):
        link = complete(HandedBack(SHUTDOWN), queue, aborting=True)
    assert any("the job's lease will return it to the queue" in r.getMessage() for r in caplog.records)
    assert link.told == [("idle", "stopped")]
