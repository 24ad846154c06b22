"""The executor in-process: each way a job can end gives exactly one ending, the invocation is
discarded exactly once unless the job completed, and the argv that started is recorded once.
Real processes (/bin/true, /bin/sleep, a missing path) run through the real runner; the adapter
is a small stand-in, so every path of the executor can be reached on purpose."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from helpers.jobs import claimed
from pggit_supervisor.config import Config
from pggit_supervisor.errors import Stopped, invalid, transient
from pggit_supervisor.executor import (
    LOST_CLAIM,
    SHUTDOWN,
    Abandoned,
    Completed,
    Failed,
    HandedBack,
    execute,
)
from pggit_supervisor.queue import ClaimedJob
from pggit_supervisor.runner import RunSpec
from pggit_supervisor.tools import Invocation, Outcome

CONFIG = Config(dsn="dbname=unused", heartbeat_interval=0.2)


@dataclass
class Control:
    """The worker's side, recording what the executor told it."""

    stop: str | None = None  # what interrupted() says
    stop_on_tick: str | None = None  # what tick() says (and from then on interrupted())
    started: list[int] = field(default_factory=list)
    commands: list[tuple[str, ...]] = field(default_factory=list)

    def tick(self) -> str | None:
        if self.stop_on_tick is not None:
            self.stop = self.stop_on_tick
        return self.stop

    def interrupted(self) -> str | None:
        return self.stop

    def tool_started(self, pgid: int) -> None:
        self.started.append(pgid)

    def command_ran(self, argv: Any) -> None:
        self.commands.append(tuple(argv))


@dataclass
class StandIn:
    """An adapter whose every step does what the test says."""

    argv: tuple[str, ...] = ("/bin/true",)
    timeout: float = 30.0
    prepare_raises: BaseException | None = None
    outcome: Outcome = field(default_factory=lambda: Outcome.success("done", backup_size=1))
    collect_raises: BaseException | None = None
    discard_raises: BaseException | None = None
    discarded: int = 0
    name: str = "custom"

    def prepare(self, job: ClaimedJob, ctx: Any) -> Invocation:
        if self.prepare_raises is not None:
            raise self.prepare_raises
        return Invocation(RunSpec(argv=self.argv, env={}, timeout=self.timeout, kill_grace=0.5))

    def collect(self, job: ClaimedJob, invocation: Invocation, result: Any, ctx: Any) -> Outcome:
        if self.collect_raises is not None:
            raise self.collect_raises
        return self.outcome

    def discard(self, invocation: Invocation) -> None:
        self.discarded += 1
        if self.discard_raises is not None:
            raise self.discard_raises


def run(adapter: StandIn, control: Control | None = None) -> tuple[Any, Control]:
    control = control or Control()
    return execute(claimed(), CONFIG, "test/1", control, find_adapter=lambda _tool: adapter), control


def test_a_completed_job_keeps_its_output_records_its_argv_once_and_clears_the_tool_group():
    adapter = StandIn(argv=("/bin/sh", "-c", "exit 0", "it's"))
    ending, control = run(adapter)
    assert isinstance(ending, Completed) and ending.message == "done" and ending.facts == {"backup_size": 1}
    assert ending.record["argv"] == ["/bin/sh", "-c", "exit 0", "it's"] and ending.record["exit_code"] == 0
    assert adapter.discarded == 0, "a completed job's output is the backup: never discarded"
    assert control.commands == [("/bin/sh", "-c", "exit 0", "it's")]
    assert control.started[0] > 0 and control.started[-1] == 0, "the supervisor learns the group, then that it is gone"


def test_a_failed_collect_is_a_failure_with_the_adapters_retryable_and_is_discarded_once():
    adapter = StandIn(outcome=Outcome.failure("verification failed: short", retryable=False))
    ending, _ = run(adapter)
    assert isinstance(ending, Failed)
    assert ending.failure.message == "verification failed: short" and ending.failure.retryable is False
    assert ending.record["argv"] == ["/bin/true"]
    assert adapter.discarded == 1


def test_an_invalid_job_fails_for_good_even_while_the_service_stops():
    adapter = StandIn(prepare_raises=invalid("parameter format: 'zip' is not allowed (allowed: custom, plain)"))
    ending, control = run(adapter, Control(stop=SHUTDOWN))
    assert isinstance(ending, Failed) and ending.failure.retryable is False
    assert ending.failure.message == "invalid job: parameter format: 'zip' is not allowed (allowed: custom, plain)"
    assert adapter.discarded == 0 and control.commands == [], "nothing was prepared, nothing ran"


def test_a_transient_prepare_error_is_retryable_and_is_handed_back_when_the_service_stops():
    ending, _ = run(StandIn(prepare_raises=transient("server not reachable")))
    assert isinstance(ending, Failed) and ending.failure.retryable is True
    assert ending.failure.message == "cannot prepare custom: server not reachable"
    ending, _ = run(StandIn(prepare_raises=transient("server not reachable")), Control(stop=SHUTDOWN))
    assert ending == HandedBack(SHUTDOWN)


def test_a_missing_binary_fails_for_good_naming_the_path_and_records_no_command():
    adapter = StandIn(argv=("/nonexistent/pg_dump", "--version"))
    ending, control = run(adapter)
    assert isinstance(ending, Failed) and ending.failure.retryable is False
    assert "/nonexistent/pg_dump does not exist" in ending.failure.message
    assert control.commands == [], "a tool that never started did not run"
    assert adapter.discarded == 1


def test_a_run_as_user_that_does_not_exist_fails_for_good():
    adapter = StandIn()
    spec = RunSpec(argv=("/bin/true",), env={}, timeout=5, run_as="no-such-user-pggit")
    adapter.prepare = lambda job, ctx: Invocation(spec)  # type: ignore[method-assign]
    ending, _ = run(adapter)
    assert isinstance(ending, Failed) and ending.failure.retryable is False
    assert "run_as user 'no-such-user-pggit' does not exist" in ending.failure.message


def test_a_bug_in_collect_fails_the_attempt_retryably_with_its_traceback_logged(caplog):
    adapter = StandIn(collect_raises=KeyError("size"))
    with caplog.at_level(logging.ERROR, logger="pggit.worker"):
        ending, _ = run(adapter)
    assert isinstance(ending, Failed) and ending.failure.retryable is True
    assert ending.failure.message == "collecting the result failed: 'size'"
    assert ending.record["exit_code"] == 0, "the run record survives the bug"
    assert adapter.discarded == 1
    assert any(r.exc_info and "collecting the result failed" in r.getMessage() for r in caplog.records)


def test_a_stop_during_the_adapters_own_work_abandons_a_cancelled_job():
    adapter = StandIn(collect_raises=Stopped(LOST_CLAIM))
    ending, _ = run(adapter, Control(stop=LOST_CLAIM))
    assert ending == Abandoned(LOST_CLAIM)
    assert adapter.discarded == 1


def test_a_lost_claim_stops_the_running_tool_and_abandons_the_job():
    adapter = StandIn(argv=("/bin/sleep", "30"))
    ending, control = run(adapter, Control(stop_on_tick=LOST_CLAIM))
    assert ending == Abandoned(LOST_CLAIM)
    assert adapter.discarded == 1
    assert control.commands == [("/bin/sleep", "30")], "it did start"


def test_a_shutdown_during_the_run_hands_the_job_back():
    adapter = StandIn(argv=("/bin/sleep", "30"))
    ending, _ = run(adapter, Control(stop_on_tick=SHUTDOWN))
    assert ending == HandedBack(SHUTDOWN)
    assert adapter.discarded == 1


def test_a_failed_verification_cut_short_by_a_cancel_says_nothing_about_the_backup():
    adapter = StandIn(outcome=Outcome.failure("verification failed: pg_restore killed", retryable=False))
    ending, _ = run(adapter, Control(stop=LOST_CLAIM))
    assert ending == Abandoned(LOST_CLAIM)


def test_a_timeout_is_a_retryable_failure_and_discards():
    adapter = StandIn(argv=("/bin/sleep", "30"), timeout=0.3)
    ending, _ = run(adapter)
    assert isinstance(ending, Failed) and ending.failure.retryable is True
    assert ending.failure.message.startswith("timed out after 0.3 s")
    assert ending.record["timed_out"] is True and adapter.discarded == 1


def test_a_clean_up_that_fails_is_logged_and_leaves_the_ending_alone(caplog):
    adapter = StandIn(outcome=Outcome.failure("pg_dump exit 1"), discard_raises=OSError("read-only file system"))
    with caplog.at_level(logging.ERROR, logger="pggit.worker"):
        ending, _ = run(adapter)
    assert isinstance(ending, Failed) and ending.failure.message == "pg_dump exit 1"
    assert adapter.discarded == 1
    assert any("cleaning up after the job failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("tool", ["nosuchtool"])
def test_a_tool_this_version_does_not_know_is_an_invalid_job(tool):
    ending = execute(claimed(tool), CONFIG, "test/1", Control())
    assert isinstance(ending, Failed) and ending.failure.retryable is False
    assert ending.failure.message.startswith(f"invalid job: no adapter for tool {tool!r}")
