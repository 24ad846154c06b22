"""pgBackRest's parameters: what pggit.backup_pgbackrest validates, and the record a spec becomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .common import NAME_PATTERN, Choice, IntRange, Parameter, param_text

TYPE = Choice(("full", "incr", "diff"))
REPO = IntRange(1, 256)
PARAMETERS: Mapping[str, Parameter] = MappingProxyType({"type": TYPE, "repo": REPO})


@dataclass(frozen=True)
class BackRestParams:
    """A pgBackRest job's parameters as pggit.backup_pgbackrest validated them, checked again
    here (the spec is a row another login may have written): the adapter's only re-check."""

    stanza: str
    type: str
    repo: int | None

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> BackRestParams:
        stanza = param_text(params, "stanza", NAME_PATTERN, "a pgBackRest stanza name: 1-63 letters, digits, _ . -")
        return cls(stanza, TYPE.parse(params, "type"), REPO.parse(params, "repo"))
