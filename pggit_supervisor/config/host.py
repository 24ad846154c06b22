"""The checks that look at this machine: executables and users a setting names.

Kept apart from the loader so `check-config` can validate a file meant for another host
(check_paths=False skips these), and so the checks a kind asks for (kinds.Name.host,
kinds.Path.executable) have one home.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable


def executable_problem(path: str) -> str | None:
    """Why `path` cannot be run, or None when it can."""
    if not os.path.exists(path):
        return f"{path} does not exist"
    if not os.path.isfile(path):
        return f"{path} is not a file"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable"
    return None


def user_problem(name: str) -> str | None:
    """Why `name` cannot be a tool's run_as user, or None when it exists."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return f"user {name!r} does not exist"
    return None


# What to allow instead, for each check's message.
USER_ALLOWED = "an existing user, or no run_as to run as the service's own user"


def installed(paths: Iterable[tuple[str, str]]) -> list[str]:
    """The names whose executable (name, path) is installed here."""
    return [name for name, path in paths if executable_problem(path) is None]
