"""pg_basebackup's parameters: what pggit.backup_pg_basebackup validates, and the record a spec becomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import invalid
from .common import Choice, IntRange, Parameter, param_dir

# the values pggit.backup_pg_basebackup validates (p_options.format, .compression, .checkpoint;
# .compression_level has a range per compression method)
FORMAT = Choice(("plain", "tar"), "plain")
COMPRESSION = Choice(("none", "gzip", "lz4", "zstd"), "none")
# the levels pg_basebackup 15 accepts per method (as pggit.backup_pg_basebackup checks them)
COMPRESSION_LEVELS: Mapping[str, IntRange] = MappingProxyType(
    {"gzip": IntRange(1, 9), "lz4": IntRange(1, 12), "zstd": IntRange(1, 22)}
)
CHECKPOINT = Choice(("fast", "spread"), "fast")
PARAMETERS: Mapping[str, Parameter] = MappingProxyType(
    {"format": FORMAT, "compression": COMPRESSION, "checkpoint": CHECKPOINT}
)


@dataclass(frozen=True)
class BaseBackupParams:
    """A pg_basebackup job's parameters as pggit.backup_pg_basebackup validated them, checked
    again here (the spec is a row another login may have written): the adapter's only re-check."""

    output_dir: str
    format: str
    compression: str
    compression_level: int | None
    checkpoint: str

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> BaseBackupParams:
        fmt = FORMAT.parse(params, "format")
        compression = COMPRESSION.parse(params, "compression")
        if compression != "none" and fmt != "tar":
            raise invalid(
                f"parameter compression: {compression!r} needs the tar format (allowed with format plain: none)"
            )
        level = COMPRESSION_LEVELS.get(compression, COMPRESSION_LEVELS["zstd"]).parse(params, "compression_level")
        if level is not None and compression == "none":
            raise invalid(
                "parameter compression_level: needs a compression method "
                "(allowed: gzip, lz4 or zstd with the tar format)"
            )
        checkpoint = CHECKPOINT.parse(params, "checkpoint")
        return cls(param_dir(params), fmt, compression, level, checkpoint)
