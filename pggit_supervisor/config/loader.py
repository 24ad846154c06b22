"""Where settings come from: the YAML file, the PGGIT_* variables, the listener's DSN argument.

The file is read strictly (duplicate keys are errors, not last-one-wins); the environment is
laid over it, each variable remembered as the origin of its key so a bad value is reported
against the variable that set it. Checking is validate.py's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from .kinds import Integer, Number, Setting
from .model import Config, ConfigError
from .report import Report, show
from .settings import CONFIG_PATH_VARIABLE, DEFAULT_CONFIG_PATH, ROOT, environment_variables
from .validate import validate

ENVIRONMENT = "<environment>"  # Config.source when no file was read


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> str:
    """The command line wins, then PGGIT_CONFIG, then the packaged location."""
    return cli_path or environ.get(CONFIG_PATH_VARIABLE) or DEFAULT_CONFIG_PATH


def load_config(
    path: str, environ: Mapping[str, str] | None = None, *, dsn: str | None = None, check_paths: bool = True
) -> Config:
    """Read `path`, let `environ` (default os.environ) and `dsn` override it, check it all.

    check_paths=False skips the checks that look at this machine (executables, users), for
    validating a file meant for another host, and for tests.
    """
    raw, file_problems = read_mapping(path)
    merged, origins = merge_overrides(raw, os.environ if environ is None else environ, dsn)
    report = Report(path, origins)
    report.problems.extend(file_problems)
    return validate(merged, report, check_paths=check_paths)


def listener_config(dsn: str, environ: Mapping[str, str], *, check_paths: bool = True) -> Config:
    """Settings for `pggit-backup-listener DSN`: PGGIT_CONFIG's file if set, else defaults
    plus the environment, with every built-in tool installed here (never custom)."""
    path = environ.get(CONFIG_PATH_VARIABLE, "")
    if path:
        return load_config(path, environ, dsn=dsn, check_paths=check_paths)
    merged, origins = merge_overrides({}, environ, dsn)
    return validate(merged, Report(ENVIRONMENT, origins), check_paths=check_paths)


def merge_overrides(
    raw: Mapping[Any, Any], environ: Mapping[str, str], dsn: str | None
) -> tuple[dict[Any, Any], dict[str, str]]:
    """Overlay the environment and the DSN argument, remembering who set what."""
    merged = dict(raw)
    origins: dict[str, str] = {}
    for variable, key in environment_variables().items():
        text = environ.get(variable, "")
        if text == "":  # `PGGIT_WORKERS= cmd` means unset, as in most shells' habits
            continue
        merged[key] = _parse_env(key, text)
        origins[key] = f"environment: {variable}"
    if dsn is not None:
        merged["dsn"] = dsn
        origins["dsn"] = "command line: dsn"
    return merged, origins


def _parse_env(key: str, text: str) -> Any:
    """Numbers for numeric keys; anything unparsable stays text, so the check quotes it."""
    setting = ROOT.get(key)
    assert isinstance(setting, Setting)
    try:
        if isinstance(setting.kind, Integer):
            return int(text)
        if isinstance(setting.kind, Number):
            return float(text)
    except ValueError:
        pass
    return text


# libyaml's parser where PyYAML was built with it: the pure-Python one took 1.8 s of a 3 s
# `status --check` with 10k retention targets (bench/growth.py, py-spy); same constructor, so the
# same values and the same duplicate-key report.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):
    """SafeLoader that records duplicate keys, where PyYAML would silently keep the last."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    self.duplicates.append((key_node.value, key_node.start_mark.line + 1))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_FALL_BACK = object()  # the document is not one the events below build: the loader's way


def _from_events(text: str) -> Any:
    """The document built straight from the parser's events, or _FALL_BACK. PyYAML's composer
    makes a Python node and two marks for every value before its constructor reads them: 0.3 s
    of `status --check` with 10k retention targets (bench/growth.py). A config is plain maps,
    lists and scalars; each scalar is resolved and constructed as the loader would. Anything
    else (an anchor, an alias, an explicit tag, a merge key, a key that is not a scalar, a
    duplicate key, more than one document, any error) falls back to the loader, which then
    gives its own answer or error exactly."""
    loader = _StrictLoader(text)
    stack: list[tuple[Any, set[str] | None]] = []  # (list or dict, keys seen for a dict)
    keys: list[Any] = []  # the pending key of each open dict, innermost last
    tags: dict[tuple[str, Any], str] = {}  # what a plain scalar resolves to: the same text, the same tag
    root: Any = _FALL_BACK
    value: Any
    try:
        while True:
            event = loader.get_event()
            kind = type(event)
            if kind is yaml.ScalarEvent:
                if event.tag is not None or event.anchor is not None:
                    return _FALL_BACK
                plain = (event.value, event.implicit)
                tag = tags.get(plain)
                if tag is None:
                    tag = tags[plain] = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                if tag == _STR:
                    value = event.value
                elif tag == _MERGE:
                    return _FALL_BACK
                else:
                    node = yaml.ScalarNode(tag, event.value, None, None, event.style)  # an error falls back
                    value = loader.construct_object(node, deep=True)
                if stack and stack[-1][1] is not None and keys[-1] is _FALL_BACK:
                    seen = stack[-1][1]
                    if event.value in seen:
                        return _FALL_BACK  # the loader reports duplicates
                    seen.add(event.value)
                    keys[-1] = value
                    continue
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if event.tag is not None or event.anchor is not None:
                    return _FALL_BACK
                if stack and stack[-1][1] is not None and keys[-1] is _FALL_BACK:
                    return _FALL_BACK  # a map or list as a key
                if kind is yaml.MappingStartEvent:
                    stack.append(({}, set()))
                    keys.append(_FALL_BACK)
                else:
                    stack.append(([], None))
                continue
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                value, seen_keys = stack.pop()
                if seen_keys is not None:
                    keys.pop()
            elif kind is yaml.StreamStartEvent or kind is yaml.DocumentEndEvent:
                continue
            elif kind is yaml.DocumentStartEvent:
                if root is not _FALL_BACK:
                    return _FALL_BACK  # a second document
                continue
            elif kind is yaml.StreamEndEvent:
                return None if root is _FALL_BACK else root
            else:
                return _FALL_BACK  # an alias
            if not stack:
                root = value
            elif stack[-1][1] is None:
                stack[-1][0].append(value)
            else:
                stack[-1][0][keys[-1]] = value
                keys[-1] = _FALL_BACK
    except (yaml.YAMLError, TypeError):
        return _FALL_BACK
    finally:
        loader.dispose()


def read_mapping(path: str) -> tuple[Mapping[Any, Any], list[str]]:
    """The file's top-level mapping plus its non-fatal problems; fatal ones raise."""
    report = Report(path, {})
    text = _read_text(path, report)
    data = _from_events(text)
    if data is not _FALL_BACK:
        if not isinstance(data, Mapping):
            got = "an empty file" if data is None else show(data)
            report.add("(file)", f"top level must be a mapping, got {got}", ", ".join(ROOT.keys()))
            report.raise_if_any()
        return data, report.problems
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = error.problem or error.context
        if error.problem and error.context and error.context_mark:  # where the construct began
            what = f"{error.problem} ({error.context} started at line {error.context_mark.line + 1})"
        report.add("(file)", f"YAML syntax error{at}: {what}", "valid YAML")
        raise ConfigError(report.problems) from None
    except yaml.YAMLError as error:
        report.add("(file)", f"YAML syntax error: {error}", "valid YAML")
        raise ConfigError(report.problems) from None
    finally:
        loader.dispose()
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else show(data)
        report.add("(file)", f"top level must be a mapping, got {got}", ", ".join(ROOT.keys()))
        report.raise_if_any()
    for key, line in loader.duplicates:
        report.add("(file)", f"duplicate key {key!r} at line {line}", "each key once per mapping")
    return data, report.problems


def _read_text(path: str, report: Report) -> str:
    """The file's text; a file that cannot be read raises, naming why."""
    unreadable = f"a readable YAML file, named on the command line or by {CONFIG_PATH_VARIABLE}"
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except FileNotFoundError:
        report.add("(file)", "does not exist", unreadable)
    except IsADirectoryError:
        report.add("(file)", "is a directory", unreadable)
    except PermissionError:
        report.add("(file)", "cannot be read: permission denied", unreadable)
    except UnicodeDecodeError as error:
        report.add("(file)", f"is not UTF-8 text (bad byte at offset {error.start})", unreadable)
    except OSError as error:
        report.add("(file)", f"cannot be read: {error.strerror}", unreadable)
    raise ConfigError(report.problems)
