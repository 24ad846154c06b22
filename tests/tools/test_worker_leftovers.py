"""The worker's after-job sweep asks waitpid first: no child left means no scan of /proc (psutil
children() reads every process on the host, a few ms of CPU per job; issue 12's throughput
figure). Run in a fresh interpreter, whose only children are the ones it starts here."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT

PROBE = """
import subprocess, sys
from pggit_supervisor.worker import _reap_children
print(_reap_children())                      # no child at all
exited = subprocess.Popen(["/bin/true"]); exited.wait()
print(_reap_children())                      # nothing left to reap
sleeper = subprocess.Popen(["/bin/sleep", "30"])
print(_reap_children())                      # a live child is left
sleeper.kill(); sleeper.wait()
print(_reap_children())
"""


def test_reap_children_says_whether_a_live_child_is_left():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False", "True", "False"]
