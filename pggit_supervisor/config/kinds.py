"""The kinds a setting can be (bounds, allowed names and values: data, not code paths), the
Setting and Section records a declaration is made of, and how a default is shown. The table
itself is settings.py; how a value is checked is validate.py; what the machine must provide is
host.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeAlias


class Required:
    """The default of a setting that has none: leaving it out is an error."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = Required()


@dataclass(frozen=True)
class Derived:
    """A default the loader works out when the key is left out (the host name, the top-level
    kill_grace, the tools installed here); `doc` says which, for the docs."""

    doc: str
    inherits: str = ""  # a top-level key whose value it takes


@dataclass(frozen=True)
class Integer:
    low: int
    high: int
    unit: str = " seconds"


@dataclass(frozen=True)
class Number:
    """A float; integers are accepted, NaN and infinities are not."""

    low: float
    high: float


@dataclass(frozen=True)
class Choice:
    """One of `values`, in any case; stored upper-cased."""

    values: tuple[str, ...]
    what: str


@dataclass(frozen=True)
class Name:
    """A string matching `pattern`, none of `refused`; `host` names the check host.py makes."""

    pattern: re.Pattern[str]
    must: str  # "must <must>, got ..."
    refused: tuple[str, ...] = ()
    allowed: str = ""  # defaults to the anchored pattern
    host: str | None = None

    def allowed_text(self) -> str:
        return self.allowed or f"^{self.pattern.pattern}$"


@dataclass(frozen=True)
class Dsn:
    allowed: str = "a postgresql:// URI or a libpq key=value string"


@dataclass(frozen=True)
class Boolean:
    pass


@dataclass(frozen=True)
class Path:
    """An absolute path without `..`; `executable` has host.py check it is an executable file,
    `not_root` refuses "/" (a directory allow-list containing / allows everything)."""

    allowed: str
    executable: bool = False
    not_root: bool = False


@dataclass(frozen=True)
class Cron:
    """A 5-field cron expression or a macro (@daily, @hourly, ...), as croniter reads it."""

    allowed: str = "5 cron fields (minute hour day month weekday) or @yearly, @monthly, @weekly, @daily, @hourly"


@dataclass(frozen=True)
class Zone:
    """An IANA time zone name (Europe/Paris, UTC), as zoneinfo knows it."""

    allowed: str = "an IANA time zone name such as UTC or Europe/Paris"


@dataclass(frozen=True)
class Duration:
    """Seconds, or a number with a unit: 90s, 30m, 6h, 2d, 1w; stored as seconds."""

    low: int
    high: int

    @property
    def allowed(self) -> str:
        return f"seconds or a number with s, m, h, d or w, from {self.low}s to {self.high}s"


@dataclass(frozen=True)
class Secret:
    """A key of `low`-`high` printable ASCII characters without spaces; a problem never shows
    the value (it would land in a log)."""

    low: int
    high: int

    @property
    def allowed(self) -> str:
        return f"{self.low}-{self.high} printable ASCII characters without spaces"


@dataclass(frozen=True)
class Free:
    """A mapping whose keys a rule checks (a schedule's args, a retention target)."""

    allowed: str


@dataclass(frozen=True)
class ListOf:
    """A non-empty list; each item is `item`, or a mapping of `entry`'s keys when `entry` is
    set (the mapping's `entry.main` key holds what a plain item would be; with no `item`, every
    entry must be a mapping)."""

    item: Kind | None
    must: str  # "must <must>, got ..."
    allowed: str
    entry: Section | None = None


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Kind
    doc: str  # one line, shown in the man page and in the documented example
    default: Any = REQUIRED
    env: str | None = None
    null_is_default: bool = False  # `key:` with no value means the default, not an error

    def default_text(self) -> str:
        """The default as the docs write it."""
        return show_default(self.default)


@dataclass(frozen=True)
class Section:
    """A mapping with fixed keys; empty or left out, every key takes its default. `many` makes
    it a mapping of named entries (tools: {pg_dump: ..., barman: ...}), each its own Section."""

    name: str
    doc: str
    settings: tuple[Setting | Section, ...] = ()
    main: str = ""  # ListOf entries: the key that carries the plain item
    many: tuple[Section, ...] = ()
    what: str = ""  # `many`: what one entry is, for messages ("tool")
    default: Any = None  # `many`: Derived when the loader fills it in

    def keys(self) -> tuple[str, ...]:
        """The names a mapping may hold, as messages list them: sorted, the `main` key first."""
        names = sorted(item.name for item in (self.many or self.settings))
        return tuple(sorted(names, key=lambda name: name != self.main))

    def get(self, name: str) -> Setting | Section:
        for item in self.many or self.settings:
            if item.name == name:
                return item
        raise KeyError(name)


Kind: TypeAlias = (
    Integer | Number | Choice | Name | Dsn | Boolean | Path | Cron | Zone | Duration | Secret | Free | ListOf | Section
)


def show_default(default: Any) -> str:
    if isinstance(default, Required):
        return "none (required)"
    if isinstance(default, Derived):
        return default.doc
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, tuple):
        return f"[{', '.join(map(str, default))}]"
    return str(default)
