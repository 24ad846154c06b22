"""pg_dump's parameters: what pggit.backup_pg_dump validates, and the record a spec becomes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import invalid
from .common import Choice, IntRange, Parameter, param_dir, param_text

FORMATS = {"custom": ".dump", "directory": "", "tar": ".tar", "plain": ".sql"}
DUMP_FORMATS = tuple(FORMATS)
# the values pggit.backup_pg_dump validates (p_format, p_options.compression_level, .jobs)
FORMAT = Choice(DUMP_FORMATS)
COMPRESSION_LEVEL = IntRange(0, 9)
JOBS = IntRange(1, 64)
PARAMETERS: Mapping[str, Parameter] = MappingProxyType(
    {"format": FORMAT, "compression_level": COMPRESSION_LEVEL, "jobs": JOBS}
)
SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # as pggit.backup_pg_dump's p_schema


@dataclass(frozen=True)
class DumpParams:
    """A pg_dump job's parameters as pggit.backup_pg_dump validated them, checked again here
    (the spec is a row another login may have written): the adapter's only re-check."""

    format: str
    output_dir: str
    schema: str | None
    compression_level: int | None
    jobs: int | None

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> DumpParams:
        fmt = FORMAT.parse(params, "format")
        level = COMPRESSION_LEVEL.parse(params, "compression_level")
        if level is not None and fmt == "tar":
            raise invalid(
                "parameter compression_level: pg_dump cannot compress the tar format "
                "(allowed: custom, directory or plain format)"
            )
        jobs = JOBS.parse(params, "jobs")
        if jobs is not None and fmt in ("tar", "plain"):
            raise invalid(f"parameter jobs: not possible with the {fmt} format (allowed: directory, custom)")
        schema = param_text(
            params, "schema", SCHEMA_NAME, "the exact name of a schema (letters, digits, _)", required=False
        )
        return cls(fmt, param_dir(params), schema, level, jobs)
