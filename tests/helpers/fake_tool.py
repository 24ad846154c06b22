#!/usr/bin/env python3
"""A stand-in for pg_dump and friends, so the runner's tests control exactly what the tool does.

Standard library only: the tests also run it as other users with the system python3.
"""

import argparse
import json
import os
import signal
import sys
import time

_CHUNK = 8192


def line_stream(total: int, prefix: bytes) -> bytes:
    """The first `total` bytes of numbered lines, so a test can tell where any slice came from."""
    out = bytearray()
    n = 0
    while len(out) < total:
        out += b"%s%08d\n" % (prefix, n)
        n += 1
    return bytes(out[:total])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _record_pid(path: str | None, role: str) -> None:
    # One O_APPEND write per line: the three processes never interleave a line.
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, f"{role} {os.getpid()}\n".encode())
        os.close(fd)


def _record_run(path: str | None, event: str) -> None:
    """One O_APPEND line per start and per exit of a run ("start PID TIME" / "exit PID CODE TIME"),
    so the chaos soak can tell how often, when and with what end each job's tool ran; a run
    killed by a signal has no exit line."""
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, f"{event} {os.getpid()} {time.time():.6f}\n".encode())
        os.close(fd)


def _sleep_forever() -> None:
    while True:
        time.sleep(3600)


def _spawn_children(args: argparse.Namespace) -> None:
    if os.fork() != 0:
        return
    # The child: optionally a grandchild that leaves the process group, then sleep.
    if args.spawn_grandchild_setsid and os.fork() == 0:
        os.setsid()
        _record_pid(args.write_pids, "grandchild")
        _sleep_forever()
    _record_pid(args.write_pids, "child")
    _sleep_forever()


def _spawn_orphan(args: argparse.Namespace) -> None:
    # Double fork: the grandchild stays in the tool's process group but no longer hangs below
    # the tool, so only the group signal can reach it.
    child = os.fork()
    if child != 0:
        os.waitpid(child, 0)
        return
    if os.fork() == 0:
        _record_pid(args.write_pids, "orphan")
        _sleep_forever()
    os._exit(0)


def _write_outputs(stdout_bytes: int, stderr_bytes: int) -> None:
    out = line_stream(stdout_bytes, b"o")
    err = line_stream(stderr_bytes, b"e")
    pos = 0
    while pos < max(len(out), len(err)):
        _write_all(1, out[pos : pos + _CHUNK])
        _write_all(2, err[pos : pos + _CHUNK])
        pos += _CHUNK


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--stdout-bytes", type=int, default=0)
    parser.add_argument("--stderr-bytes", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--spawn-child", action="store_true")
    parser.add_argument("--spawn-grandchild-setsid", action="store_true")
    parser.add_argument("--spawn-orphan", action="store_true")
    parser.add_argument("--write-pids")
    parser.add_argument("--write-runs")
    parser.add_argument("--print-env", action="store_true")
    parser.add_argument("--print-ids", action="store_true")
    parser.add_argument("--read-stdin", action="store_true")
    parser.add_argument("--print-argv", action="store_true")
    parser.add_argument("--alloc-mb", type=int, default=0)
    parser.add_argument("--kill-self", type=int, default=0)
    args, _ = parser.parse_known_args()

    if args.print_argv:
        print(json.dumps(sys.argv[1:]), flush=True)
        return args.exit
    if args.ignore_term:
        # Inherited by the children forked below, so the whole tree needs SIGKILL.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _record_pid(args.write_pids, "tool")
    _record_run(args.write_runs, "start")
    if args.spawn_child or args.spawn_grandchild_setsid:
        _spawn_children(args)
    if args.spawn_orphan:
        _spawn_orphan(args)
    if args.print_env:
        print(json.dumps(dict(os.environ)), flush=True)
    if args.print_ids:
        print(
            json.dumps(
                {
                    "uid": os.getuid(),
                    "euid": os.geteuid(),
                    "gid": os.getgid(),
                    "egid": os.getegid(),
                    "groups": sorted(os.getgroups()),
                }
            ),
            flush=True,
        )
    if args.read_stdin:
        data = sys.stdin.buffer.read()
        print(json.dumps({"stdin_bytes": len(data)}), flush=True)
    if args.alloc_mb:
        ballast = b"\x01" * (args.alloc_mb << 20)  # filled, so every page is resident
        del ballast
    _write_outputs(args.stdout_bytes, args.stderr_bytes)
    if args.sleep:
        time.sleep(args.sleep)
    if args.kill_self:
        os.kill(os.getpid(), args.kill_self)
    _record_run(args.write_runs, f"exit {args.exit}")
    return args.exit


if __name__ == "__main__":
    sys.exit(main())
