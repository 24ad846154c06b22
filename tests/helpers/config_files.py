"""A supervisor config written to a test's directory, and the problems the loader finds in one,
for the tests of the config's sections (each adds its own defaults around these)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pggit_supervisor.config import ConfigError, load_config


def write_config(tmp_path: Path, data: Any, name: str = "supervisor.yaml") -> str:
    """`data` as YAML (a string is written as it is) to tmp_path/name; returns the path."""
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(path)


def problems_in(path: str) -> list[str]:
    """The problem lines loading `path` raises (it must be invalid), without the file's name."""
    with pytest.raises(ConfigError) as raised:
        load_config(path, {}, check_paths=False)
    return [problem.removeprefix(f"{path}: ") for problem in raised.value.problems]
