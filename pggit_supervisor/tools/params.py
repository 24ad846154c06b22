"""What an adapter needs to read a job: its timeout, its spec's params, and (re-exported from
specs.common, where the config's check of a schedule uses them too) the parameter vocabulary
and parse helpers. Each tool's values and record are declared once, in specs/<tool>.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import ToolConfig
from ..errors import invalid
from ..queue import ClaimedJob
from ..specs.common import (
    NAME_PATTERN,
    Choice,
    IntRange,
    Parameter,
    param_bool,
    param_choice,
    param_dir,
    param_int,
    param_text,
)

__all__ = [
    "NAME_PATTERN",
    "Choice",
    "IntRange",
    "Parameter",
    "job_timeout",
    "param_bool",
    "param_choice",
    "param_dir",
    "param_int",
    "param_text",
    "spec_params",
]

_MAX_TIMEOUT_SECONDS = 604800  # as pggit._common_options allows


def job_timeout(job: ClaimedJob, tool: ToolConfig) -> float:
    """The job's own timeout_seconds, never above the tool's configured maximum. A spec is a
    row another login may have written: a value the SQL would have refused is refused for good."""
    requested = job.spec.get("timeout_seconds") if isinstance(job.spec, Mapping) else None
    if requested is None:
        return float(tool.timeout)
    if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= _MAX_TIMEOUT_SECONDS:
        raise invalid(
            f"timeout_seconds {requested!r} is not allowed (allowed: an integer from 1 to {_MAX_TIMEOUT_SECONDS})"
        )
    return float(min(requested, tool.timeout))


# -- a job's parameters, re-checked: the spec is a row, and rows can be written by hand --------


def spec_params(job: ClaimedJob) -> Mapping[str, Any]:
    """The spec's params object; refused for good if the spec or its params are not JSON objects."""
    params = job.spec.get("params", {}) if isinstance(job.spec, Mapping) else None
    if not isinstance(params, Mapping):
        raise invalid(f"the job's spec.params must be a JSON object, got {type(params).__name__}")
    return params
