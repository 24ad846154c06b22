"""The settings are declared once (pggit_supervisor/config/settings.py): the loader, the PGGIT_*
overrides, the documented example, the man page and the README follow that declaration."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pggit_supervisor.config import ConfigError, kinds, load_config, settings
from pggit_supervisor.config.kinds import Choice, Integer, Name, Number, Setting, show_default
from pggit_supervisor.config.reference import man_section
from pggit_supervisor.config.settings import allowed_of, walk

ROOT_DIR = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT_DIR / "conf" / "supervisor.yaml"
MAN_PAGE = ROOT_DIR / "packaging" / "man" / "pggit-supervisor.1"
LISTENER_MAN_PAGE = ROOT_DIR / "packaging" / "man" / "pggit-backup-listener.1"
SHIPPED = ROOT_DIR / "packaging" / "debian" / "supervisor.yaml"
DSN = "postgresql://pggit_backup@localhost:5432/mydb"
# a key line, possibly commented out (`# kill_grace: 30`), possibly a list entry (`- path: ...`)
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<dash>- )?(?P<key>[a-z_]+):(?: |$)")
SETTINGS = dict(walk())
SECTIONS = {"retry", "tools", "notifications", *(f"tools.{name}" for name in settings.tool_names())}


def documented_keys(text: str) -> dict[str, str]:
    """Dotted key path -> its documentation (the comment lines right above it and its inline
    comment, joined), for every key of the example, commented-out keys included."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        uncommented = line
        if stripped.startswith("#"):
            uncommented = line[: len(line) - len(stripped)] + stripped[1:].removeprefix(" ")
        match = KEY_LINE.match(uncommented)
        if match is None:
            if stripped.startswith("#"):
                block.append(stripped.lstrip("# "))
            elif not stripped:
                block = []
            continue
        indent = len(match["indent"])
        if match["dash"]:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, "[]"))
            indent += 2
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = ".".join(name for _, name in stack).replace(".[]", "[]")
        inline = uncommented.split(" # ", 1)[1] if " # " in uncommented else ""
        found[path] = " ".join(" ".join([*block, inline]).split())
        block = []
    return found


def test_declaration_carries_nested_sections_and_list_entries() -> None:
    assert "retry.max_delay" in SETTINGS and "tools.pgbackrest.config" in SETTINGS
    assert {"tools.custom.allowed_commands[].path", "tools.custom.allowed_commands[].pass_credentials"} <= set(SETTINGS)
    assert "tools.custom.path" not in SETTINGS  # custom runs only its allowed commands
    assert all(isinstance(setting, Setting) and setting.doc for setting in SETTINGS.values())


@pytest.mark.parametrize("path", sorted(SETTINGS))
def test_every_declared_setting_is_in_the_example_with_its_doc_line_and_default(path: str) -> None:
    setting = SETTINGS[path]
    documented = documented_keys(EXAMPLE.read_text())

    assert path in documented, f"{EXAMPLE} does not document {path}"
    doc = documented[path].lower()
    assert setting.doc.lower() in doc, f"{path}: the comment lacks the declared doc line {setting.doc!r}"
    default = "required" if setting.default is kinds.REQUIRED else f"default {show_default(setting.default)}"
    assert default.lower() in doc, f"{path}: the comment lacks {default!r}"
    if setting.env:
        assert f"environment {setting.env}".lower() in doc


def test_the_example_holds_no_key_that_is_not_declared() -> None:
    assert set(documented_keys(EXAMPLE.read_text())) - SECTIONS == set(SETTINGS)


def test_man_page_settings_section_is_the_rendered_declaration() -> None:
    page = MAN_PAGE.read_text()
    start = page.index(".SH SETTINGS\n")
    section = page[start : page.index("\n.SH ", start) + 1]

    assert section == man_section(), "run: python -m pggit_supervisor.config.reference packaging/man/pggit-supervisor.1"
    for path in SETTINGS:
        assert f".B {path.replace('-', chr(92) + '-')}\n" in section


def declared_variables() -> set[str]:
    return {setting.env for setting in SETTINGS.values() if setting.env} | {settings.CONFIG_PATH_VARIABLE}


def variables_in(text: str) -> set[str]:
    return set(re.findall(r"PGGIT_[A-Z_]+", text.replace("\\fB", "").replace("\\fR", "")))


def test_man_pages_and_readme_name_exactly_the_declared_environment_variables() -> None:
    for page in (MAN_PAGE, LISTENER_MAN_PAGE):
        text = page.read_text()
        environment = text[text.index(".SH ENVIRONMENT\n") :].split("\n.SH ", 2)[0]
        assert variables_in(environment) == declared_variables(), page
    readme = (ROOT_DIR / "README.md").read_text()
    running = readme[readme.index("## Running the service") :].split("\n## ", 2)[0]
    assert variables_in(running) == declared_variables()


def explicit_defaults() -> dict[str, Any]:
    """A config file that writes out every setting with a fixed default."""
    data: dict[str, Any] = {"dsn": DSN, "worker_id": "w1"}
    for path, setting in SETTINGS.items():
        if "[]" in path or isinstance(setting.default, (kinds.Required, kinds.Derived)):
            continue
        *parents, last = path.split(".")
        target = data
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = list(setting.default) if isinstance(setting.default, tuple) else setting.default
    data["tools"]["custom"]["allowed_commands"] = ["/opt/backup.sh"]
    return data


def write(tmp_path: Path, data: dict[str, Any], name: str) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_writing_every_default_explicitly_gives_the_same_config_as_leaving_it_out(tmp_path: Path) -> None:
    tools = {name: {} for name in settings.tool_names()}
    tools["custom"] = {"allowed_commands": ["/opt/backup.sh"]}
    omitted = load_config(
        write(tmp_path, {"dsn": DSN, "worker_id": "w1", "tools": tools}, "a.yaml"), {}, check_paths=False
    )

    explicit = load_config(write(tmp_path, explicit_defaults(), "b.yaml"), {}, check_paths=False)

    assert {**explicit.__dict__, "source": ""} == {**omitted.__dict__, "source": ""}
    assert len(explicit.tools) == len(settings.tool_names())


def other_value(setting: Setting) -> tuple[str, Any]:
    """A valid value for `setting` that is not its default: (as the environment writes it, as loaded)."""
    kind = setting.kind
    if isinstance(kind, Integer):
        return str(setting.default + 1), setting.default + 1
    if isinstance(kind, Number):
        return str(setting.default + 1.5), setting.default + 1.5
    if isinstance(kind, Choice):
        value = next(value for value in kind.values if value != setting.default)
        return value.lower(), value
    assert isinstance(kind, Name)
    return "from-the-environment", "from-the-environment"


@pytest.mark.parametrize("path", sorted(path for path, setting in SETTINGS.items() if setting.env))
def test_every_declared_variable_overrides_its_setting(tmp_path: Path, path: str) -> None:
    setting = SETTINGS[path]
    file = write(tmp_path, explicit_defaults(), "c.yaml")
    text, expected = other_value(setting)

    before = getattr(load_config(file, {}, check_paths=False), path)
    after = getattr(load_config(file, {str(setting.env): text}, check_paths=False), path)

    assert (before, after) != (after, after) and after == expected


# list entries (retention[].keep_last, ...) have their bounds tested with their section (test_config_retention.py)
BOUNDED = sorted(
    path for path, setting in SETTINGS.items() if isinstance(setting.kind, (Integer, Number)) and "[]" not in path
)


@pytest.mark.parametrize("path", BOUNDED)
def test_a_value_beyond_a_declared_bound_is_refused_naming_key_and_allowed_range(tmp_path: Path, path: str) -> None:
    kind = SETTINGS[path].kind
    assert isinstance(kind, (Integer, Number))
    for value in (kind.high + 1, kind.low - 1):
        data = explicit_defaults()
        *parents, last = path.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[last] = value
        file = write(tmp_path, data, "d.yaml")

        with pytest.raises(ConfigError) as raised:
            load_config(file, {}, check_paths=False)

        shown = f"{value:g}" if isinstance(kind, Number) else str(value)
        low, high = (f"{kind.low:g}", f"{kind.high:g}") if isinstance(kind, Number) else (kind.low, kind.high)
        assert raised.value.problems == [
            f"{file}: {path}: must be between {low} and {high}, got {shown} (allowed: {allowed_of(kind)})"
        ]


def test_shipped_etc_config_uses_only_declared_keys_and_loads() -> None:
    config = load_config(str(SHIPPED), {}, check_paths=False)

    assert config.source == str(SHIPPED) and set(config.tools) == {"pg_dump", "pg_basebackup"}
