"""The command a worker records (queue.shell_command) is one printable line that a DBA can paste
into bash and get the same argv back, even when an argument holds a line break or a terminal
escape (which pggit.record_job_command refuses raw)."""

from __future__ import annotations

import re
import subprocess

import pytest

from pggit_supervisor.queue import shell_command

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/pg_dump", "--format=custom", "plain"],
        ["pg_dump", "a b", "it's", "back\\slash", "$HOME", "*"],
        ["pg_dump", "line\nbreak", "tab\there", "\x1b[2Jcleared", "bell\x07", "csi\u009b31m", "quote'\n\\"],
        ["pg_dump", "é-ü", "日本"],
    ],
)
def test_the_rendered_command_is_one_printable_line_bash_reads_back_as_the_argv(argv):
    rendered = shell_command(argv)
    assert not CONTROL.search(rendered), rendered
    out = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + rendered], capture_output=True, check=True, env={"LC_ALL": "C.UTF-8"}
    ).stdout
    assert out.decode().split("\0")[:-1] == argv
