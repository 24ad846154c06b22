"""The man page's SETTINGS section, rendered from the declaration so the two cannot drift.

`python -m pggit_supervisor.config.reference packaging/man/pggit-supervisor.1` rewrites the
section in place after a setting changes; a test fails while the page and the declaration differ.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from .kinds import REQUIRED, ListOf, Section, Setting, show_default
from .settings import CONFIG_PATH_VARIABLE, ROOT, allowed_of

HEADER = ".SH SETTINGS"
GENERATED = '.\\" Generated from pggit_supervisor/config/settings.py by python -m pggit_supervisor.config.reference'


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return f"\\&{text}" if text.startswith((".", "'")) else text


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _entry(path: str, body: str) -> list[str]:
    return [".TP", f".B {_roff(path)}", _roff(body)]


def _setting(path: str, setting: Setting) -> list[str]:
    body = f"{_sentence(setting.doc)} Allowed: {allowed_of(setting.kind)}. Default: {show_default(setting.default)}."
    if setting.env:
        body += f" Environment: {setting.env}."
    return _entry(path, body)


def _lines(section: Section, prefix: str) -> Iterator[str]:
    for item in section.many or section.settings:
        path = f"{prefix}{item.name}"
        if isinstance(item, Section):
            body = _sentence(item.doc)
            if item.many:
                body += f" Allowed: {allowed_of(item)}. Default: {show_default(item.default)}."
            else:
                required = [key.name for key in item.settings if isinstance(key, Setting) and key.default is REQUIRED]
                body += f" Requires {', '.join(required)}." if required else " Left out or empty, all defaults."
            yield from _entry(path, body)
            yield from _lines(item, f"{path}.")
            continue
        yield from _setting(path, item)
        if isinstance(item.kind, ListOf) and item.kind.entry is not None:
            entry = item.kind.entry
            plain = "" if item.kind.item is None else "a path, or "
            yield from _entry(f"{path}[]", f"Each entry is {plain}a mapping of {', '.join(entry.keys())}.")
            yield from _lines(entry, f"{path}[].")


def man_section() -> str:
    """The SETTINGS section, from its header up to (not including) the next section."""
    intro = (
        f"The YAML file (\\fB\\-c\\fR, else \\fB{CONFIG_PATH_VARIABLE}\\fR, else /etc/pggit/supervisor.yaml) "
        "holds these keys; only \\fBdsn\\fR is required. Unknown keys are errors, so a misspelt key "
        "stops the service instead of quietly using a default. An Environment variable, when set and "
        "not empty, overrides the file."
    )
    return "\n".join([HEADER, GENERATED, intro, *_lines(ROOT, "")]) + "\n"


def replace_section(page: str) -> str:
    """`page` with its SETTINGS section replaced by the rendered one."""
    start = page.index(HEADER + "\n")
    end = page.index("\n.SH ", start + len(HEADER)) + 1
    return page[:start] + man_section() + page[end:]


def main(argv: list[str]) -> int:
    for path in argv:
        with open(path, encoding="utf-8") as stream:
            page = stream.read()
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(replace_section(page))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
