"""Barman's parameters: what pggit.backup_barman validates, and the record a spec becomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import invalid
from .common import NAME_PATTERN, Choice, Parameter, param_bool, param_text

RESERVED_SERVERS = ("all", "barman")  # `barman backup all` backs up every server
# the values pggit.backup_barman validates (p_options."reuse-backup", stored as reuse_backup);
# it also takes Barman's other name for link and stores link
REUSE_BACKUP = Choice(("off", "copy", "link"))
REUSE_BACKUP_ALIASES: Mapping[str, str] = MappingProxyType({"incremental": "link"})
PARAMETERS: Mapping[str, Parameter] = MappingProxyType({"reuse_backup": REUSE_BACKUP})


@dataclass(frozen=True)
class BarmanParams:
    """A Barman job's parameters as pggit.backup_barman validated them, checked again here (the
    spec is a row another login may have written): the adapter's only re-check."""

    server: str
    wait: bool
    reuse_backup: str | None

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> BarmanParams:
        server = param_text(params, "server", NAME_PATTERN, "a Barman server name: 1-63 letters, digits, _ . -")
        if server.lower() in RESERVED_SERVERS:
            raise invalid(
                f"parameter server: {server!r} is reserved by Barman "
                f"(allowed: the name of one server section, not {' or '.join(RESERVED_SERVERS)})"
            )
        reuse = params.get("reuse_backup")
        if reuse is not None:
            reuse = REUSE_BACKUP.parse(params, "reuse_backup")
        return cls(server, param_bool(params, "wait", True), reuse)
