"""pggit-supervisor 0.1.0 as released, read from git: its numbered schema files and its own
installer, for tests that start from a 0.1.0 database (a copy of today's files could not show
drift)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from helpers import ROOT

BASELINE = "9f8134b6de8f0402b0ccf6a79434cb165c6e2d76"  # tag v0.1.0 (a clone may lack the tag)
_NUMBERED = re.compile(r"^\d{3}_[a-z0-9_]+\.sql$")


def git(*args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True)
    if done.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} failed: {done.stderr.decode().strip()}\n"
            f"this test needs a git checkout holding 0.1.0 ({BASELINE}); "
            "in a shallow clone run: git fetch --unshallow"
        )
    return done.stdout


def released_files() -> dict[str, bytes]:
    """0.1.0's numbered schema files (000_bootstrap included), name -> bytes."""
    names = git("ls-tree", "--name-only", f"{BASELINE}:schema").decode().split()
    return {name: git("show", f"{BASELINE}:schema/{name}") for name in names if _NUMBERED.match(name)}


def installer_of_0_1_0() -> ModuleType:
    """0.1.0's own pggit_supervisor/schema.py, loaded from git under a name of its own."""
    source = git("show", f"{BASELINE}:pggit_supervisor/schema.py").decode()
    spec = importlib.util.spec_from_loader("pggit_schema_0_1_0", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    exec(compile(source, f"{BASELINE}:pggit_supervisor/schema.py", "exec"), module.__dict__)
    return module


def install_0_1_0(dsn: str, directory: Path) -> list:
    """Installs 0.1.0 into `dsn` as 0.1.0 did: its files (written into `directory`), its installer."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in released_files().items():
        (directory / name).write_bytes(content)
    return installer_of_0_1_0().install(dsn, directory=directory, log=lambda *_: None)
