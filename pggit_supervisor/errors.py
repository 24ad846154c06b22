"""The package's errors: one root, and one error for a job that carries whether a retry can help.

Why one tree: the CLI and the worker catch `PggitError` to print one line and go on, and
everything else (a bug) keeps its traceback. Why `retryable` is a field and not a subclass: the
policy (retry or fail for good) belongs to the place that knows it, which is the one raising;
a catcher reads the field instead of guessing from a type (`OSError` used to mean "retry",
`InvalidJob` "fail for good"). Database errors come from psycopg2 and are `psycopg2.Error`.
"""

from __future__ import annotations

from dataclasses import dataclass


class PggitError(Exception):
    """Root of every error pggit-supervisor raises on purpose; the message says what to fix."""


class JobError(PggitError):
    """A job cannot finish as asked. `message` goes to the job row; `retryable` says whether
    trying again later can help (a tool that failed, a full disk) or not (parameters that can
    never be valid, a path outside the allowed directories, a tool not on this host)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable

    def failure(self) -> Failure:
        return Failure(self.message, self.retryable)


class Stopped(PggitError):
    """The worker's tick asked to stop (job cancelled, claim lost, service stopping) during long
    work of the adapter's own (hashing, reading an archive, counting rows); the reason is the
    tick's."""


@dataclass(frozen=True)
class Failure:
    """A failure as a value: what went wrong, and whether a retry can help."""

    message: str
    retryable: bool


def invalid(message: str) -> JobError:
    """The job's parameters or its target can never work here: fail for good, do not retry."""
    return JobError(message, retryable=False)


def transient(message: str) -> JobError:
    """Something that may be fine later (a tool failed, a file vanished, a server was down)."""
    return JobError(message, retryable=True)


def one_line(exc: BaseException) -> str:
    """An error's message as one line (a job row, a log line): its whitespace folded."""
    return " ".join(str(exc).split())
