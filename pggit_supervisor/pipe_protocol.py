"""The lines a worker sends its supervisor through their pipe, and the supervisor's parser.

A worker writes whole lines of space-separated words, non-blocking, dropping one when the pipe
is full. The lines are:

    alive                      a heartbeat
    connected                  it reached its queue database (after each (re)connection): the
                               supervisor tells systemd READY once one worker can work
    busy JOB_ID TOOL_PGID      working on JOB_ID; TOOL_PGID is the tool's process group (0: none yet)
    idle ok|failed|stopped     the job ended; ok and failed are counted in the service status
    rescued N                  N jobs whose lease had expired (or a dead predecessor's) went back to the queue

Any bytes from a worker prove it is alive; only the lines above change what the supervisor
knows. A line that does not parse is reported and ignored: the supervisor never trusts, nor
dies of, what a worker wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE_BYTES = 4096  # far more than any line above; a longer one is dropped, not buffered


@dataclass(frozen=True)
class Alive:
    def line(self) -> bytes:
        return b"alive\n"


@dataclass(frozen=True)
class Connected:
    def line(self) -> bytes:
        return b"connected\n"


@dataclass(frozen=True)
class Busy:
    job_id: str
    tool_pgid: int | None  # None until the tool has started

    def line(self) -> bytes:
        return f"busy {self.job_id} {self.tool_pgid or 0}\n".encode()


IDLE_OUTCOMES = ("ok", "failed", "stopped")


@dataclass(frozen=True)
class Idle:
    outcome: str  # one of IDLE_OUTCOMES

    def line(self) -> bytes:
        return f"idle {self.outcome}\n".encode()


@dataclass(frozen=True)
class BadLine:
    """A line that is not one of the above, kept (shortened) for the log."""

    text: str
    why: str


@dataclass(frozen=True)
class Rescued:
    count: int  # jobs this worker returned to the queue: leases expired, or its dead predecessor's

    def line(self) -> bytes:
        return f"rescued {self.count}\n".encode()


Message = Alive | Connected | Busy | Idle | Rescued | BadLine


def parse_line(raw: bytes) -> Message | None:
    """One line without its newline; None for an empty line (nothing to say)."""
    words = raw.decode(errors="replace").split()
    if not words:
        return None
    verb, args = words[0], words[1:]
    if verb == "alive" and not args:
        return Alive()
    if verb == "connected" and not args:
        return Connected()
    if verb == "busy" and len(args) == 2:
        job_id, pgid = args
        if not pgid.isascii() or not pgid.isdigit():
            return _bad(raw, "the tool's process group is not a number")
        return Busy(job_id, int(pgid) or None)
    if verb == "idle" and len(args) == 1:
        if args[0] not in IDLE_OUTCOMES:
            return _bad(raw, "the outcome is not one of " + ", ".join(IDLE_OUTCOMES))
        return Idle(args[0])
    if verb == "rescued" and len(args) == 1:
        if not args[0].isascii() or not args[0].isdigit() or len(args[0]) > 6:
            return _bad(raw, "the count is not a number")
        return Rescued(int(args[0]))
    return _bad(raw, "expected 'alive', 'connected', 'busy JOB_ID TOOL_PGID', 'idle ok|failed|stopped' or 'rescued N'")


def _bad(raw: bytes, why: str) -> BadLine:
    return BadLine(raw[:200].decode(errors="replace"), why)


class LineReader:
    """Splits what one worker's pipe gives, read by read, into messages: a read may hold several
    lines, or end inside one (kept until the rest arrives). A line longer than MAX_LINE_BYTES is
    dropped whole (reported once), so a worker cannot make the supervisor's memory grow."""

    def __init__(self) -> None:
        self._partial = b""
        self._discarding = False

    def feed(self, data: bytes) -> list[Message]:
        *lines, tail = (self._partial + data).split(b"\n")
        messages: list[Message] = []
        for line in lines:
            if self._discarding:  # the end of an over-long line
                self._discarding = False
                continue
            if len(line) > MAX_LINE_BYTES:
                messages.append(_bad(line, f"longer than {MAX_LINE_BYTES} bytes"))
            elif (message := parse_line(line)) is not None:
                messages.append(message)
        if len(tail) > MAX_LINE_BYTES:
            if not self._discarding:
                messages.append(_bad(tail, f"longer than {MAX_LINE_BYTES} bytes"))
            self._discarding = True
            tail = b""
        self._partial = tail
        return messages
