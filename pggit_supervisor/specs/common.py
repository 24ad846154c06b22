"""The vocabulary of a job's parameters and the helpers that parse them, below the config and
the adapters alike: the config's check of a schedule's args and the adapters' re-check of a
job's spec run the same code (the spec is a row another login may have written). Every refusal
is errors.invalid: the same spec can never work. tests/sql/test_vocabulary.py checks the SQL
against these declarations."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

from ..errors import invalid


def param_choice(params: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    value = params.get(key, default)
    if not isinstance(value, str) or value not in allowed:
        raise invalid(f"parameter {key}: {value!r} is not allowed (allowed: {', '.join(allowed)})")
    return value


def param_int(params: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    """An optional integer parameter in [low, high]; a JSON integer only, as the SQL stores it."""
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"parameter {key}: {value!r} is not allowed (allowed: an integer from {low} to {high})")
    return value


def param_bool(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise invalid(f"parameter {key}: {value!r} is not allowed (allowed: true, false)")
    return value


# a required parameter is never None: the overloads let the type checker know
@overload
def param_text(
    params: Mapping[str, Any], key: str, pattern: re.Pattern[str], allowed: str, required: Literal[True] = True
) -> str: ...
@overload
def param_text(
    params: Mapping[str, Any], key: str, pattern: re.Pattern[str], allowed: str, required: bool
) -> str | None: ...
def param_text(
    params: Mapping[str, Any], key: str, pattern: re.Pattern[str], allowed: str, required: bool = True
) -> str | None:
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise invalid(f"parameter {key}: {value!r} is not allowed (allowed: {allowed})")
    return value


def param_dir(params: Mapping[str, Any], key: str = "output_dir") -> str:
    """An absolute directory as pggit._require_dir leaves it: normalised, no '..', no control
    characters. Whether it is allowed is the config's business (allowed_output_dir)."""
    value = params.get(key)
    allowed = "an absolute directory path without '..' or control characters"
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or len(value) > 4096
        or ".." in value.split("/")
        or any(ord(char) < 32 or ord(char) == 127 for char in value)
    ):
        raise invalid(f"parameter {key}: {value!r} is not allowed (allowed: {allowed})")
    return os.path.normpath(value)


# -- the vocabulary of a job's parameters: each adapter declares its values once, its parse
# uses the declaration, and tests/sql/test_vocabulary.py checks the SQL against it -----------------

# a pgBackRest stanza or a Barman server: the tool's own argument (as pggit._require_name)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Choice:
    """A string parameter with a fixed set of values; `default` is what a spec without it means."""

    values: tuple[str, ...]
    default: str | None = None

    def parse(self, params: Mapping[str, Any], key: str) -> str:
        return param_choice(params, key, self.values, self.default)


@dataclass(frozen=True)
class IntRange:
    """An optional integer parameter from `low` to `high`."""

    low: int
    high: int

    def parse(self, params: Mapping[str, Any], key: str) -> int | None:
        return param_int(params, key, self.low, self.high)


Parameter = Choice | IntRange
