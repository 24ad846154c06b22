"""One running tool's plumbing: its two output pipes read without blocking into bounded
buffers, its exit noticed through a pidfd (or by polling), its tree killed while still reading,
and its reaping with wait4 for the peak memory. `runner.run_tool` drives one of these; nothing
here decides policy (timeouts, ticks, who the tool runs as)."""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from .proctree import KillReport, kill_tree

_READ_SIZE = 65536
# How long output is still read after the tool exited: a descendant may hold the pipes open
# forever, and the job must not wait for it.
_DRAIN_AFTER_EXIT_SECONDS = 1.0
# Without a pidfd the exit is noticed by polling this often.
_EXIT_POLL_SECONDS = 0.05
_FINAL_READS = 64


@dataclass(frozen=True)
class CapturedOutput:
    """A bounded capture of one stream: the first and last bytes, and how many were in between."""

    head: bytes = b""
    tail: bytes = b""
    dropped: int = 0

    @property
    def total_bytes(self) -> int:
        """How many bytes the tool wrote to this stream."""
        return len(self.head) + self.dropped + len(self.tail)

    def text(self) -> str:
        """The capture as text; invalid UTF-8 is replaced, a gap is marked with its size."""
        if not self.dropped:
            return (self.head + self.tail).decode("utf-8", errors="replace")
        return (
            self.head.decode("utf-8", errors="replace")
            + f"\n...[{self.dropped} bytes dropped]...\n"
            + self.tail.decode("utf-8", errors="replace")
        )


class BoundedBuffer:
    """Keeps the first and last `limit` bytes of a stream and counts the bytes in between."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = 0

    def feed(self, data: bytes) -> None:
        room = self._limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail += data
        excess = len(self._tail) - self._limit
        if excess > 0:
            del self._tail[:excess]
            self._dropped += excess

    def freeze(self) -> CapturedOutput:
        return CapturedOutput(bytes(self._head), bytes(self._tail), self._dropped)


class ToolSession:
    """One running tool: its pipes, its exit notification, its reaping."""

    def __init__(self, proc: subprocess.Popen[bytes], output_limit: int) -> None:
        self.proc = proc
        self.stdout = BoundedBuffer(output_limit)
        self.stderr = BoundedBuffer(output_limit)
        self._selector = selectors.DefaultSelector()
        self._pipes = 0
        for stream, buffer in ((proc.stdout, self.stdout), (proc.stderr, self.stderr)):
            assert stream is not None  # both were opened with subprocess.PIPE
            os.set_blocking(stream.fileno(), False)
            self._selector.register(stream.fileno(), selectors.EVENT_READ, buffer)
            self._pipes += 1
        self._pidfd = open_pidfd(proc.pid)
        if self._pidfd is not None:
            self._selector.register(self._pidfd, selectors.EVENT_READ, None)
        self._exited = False

    def watch(
        self, deadline: float, on_tick: Callable[[], str | None] | None, tick_interval: float
    ) -> tuple[bool, str | None]:
        """Read output until the tool exits (-> False, None), times out or is told to stop."""
        next_tick = time.monotonic() + tick_interval if on_tick else float("inf")
        drain_until = float("inf")
        while True:
            now = time.monotonic()
            if self._exited:
                if now >= drain_until or not self._pipes:
                    return False, None
                wake = drain_until
            else:
                if now >= deadline:
                    return True, None
                if on_tick is not None and now >= next_tick:
                    reason = on_tick()
                    if reason is not None:
                        return False, reason
                    now = time.monotonic()
                    next_tick = now + tick_interval
                wake = min(deadline, next_tick)
            self.pump(wake - now)
            if not self._exited and self._has_exited():
                self._exited = True
                drain_until = time.monotonic() + _DRAIN_AFTER_EXIT_SECONDS

    def pump(self, timeout: float) -> bool:
        """Wait up to `timeout` s for output or the tool's exit, reading what arrives.

        Returns whether anything arrived.
        """
        timeout = max(0.0, timeout)
        if self._pidfd is None and not self._exited:
            timeout = min(timeout, _EXIT_POLL_SECONDS)
        if not self._selector.get_map():
            time.sleep(timeout)
            return False
        events = self._selector.select(timeout)
        for key, _ in events:
            if key.data is None:
                # The pidfd stays readable once the tool exited; stop watching it.
                self._selector.unregister(key.fd)
                continue
            try:
                data = os.read(key.fd, _READ_SIZE)
            except BlockingIOError:
                continue
            if data:
                key.data.feed(data)
            else:
                self._selector.unregister(key.fd)
                self._pipes -= 1
        return bool(events)

    def kill(self, grace: float) -> KillReport:
        """Kill the tool's tree, still reading output meanwhile; the tool stays unreaped."""
        report = kill_tree(self.proc.pid, self.proc.pid, grace, pause=self.pump)
        # What the tree wrote before dying is still in the pipes; bounded in case a survivor
        # keeps writing.
        for _ in range(_FINAL_READS):
            if not self.pump(0):
                break
        return report

    def reap(self) -> int | None:
        """Reap the exited tool with wait4 for its rusage; returns its peak RSS in bytes.

        Popen never waits for this pid: its returncode is set here, so Popen.poll()/wait()
        do not try to reap a pid that may already belong to another process.
        """
        if not self._has_exited():
            return None  # it survived SIGKILL (uninterruptible sleep); never block the worker
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        except ChildProcessError:
            return None  # reaped elsewhere (SIGCHLD ignored?): status and rusage are lost
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return usage.ru_maxrss * 1024  # KiB on Linux

    def close(self) -> None:
        self._selector.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def _has_exited(self) -> bool:
        if self.proc.returncode is not None:
            return True
        try:
            # WNOWAIT: look without reaping, so the pid (and the tool's pgid) cannot be reused
            # while the tree is still being killed.
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None


def open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # old kernel or seccomp: fall back to polling
