"""The config loader builds a plain document straight from libyaml's events (loader._from_events,
for 10k retention targets in `status --check`). It must give what PyYAML's safe loader gives,
value for value and type for type, and hand every other document to that loader (which then
answers or refuses as before): anchors, aliases, tags, merge keys, keys that are not scalars,
duplicate keys, several documents, syntax errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pggit_supervisor.config import ConfigError, loader

PLAIN = [
    "a: 1\nb: [1, 2.5, true, null, '3', 2020-01-01, 2020-01-01 10:00:00+02:00, 0o17, 0x1f, 1_000, ~, yes, No]\n",
    "",
    "# only a comment\n",
    "- 1\n- 2\n",
    "a: [1, {b: 2, c: [3, {d: 4}]}]\nz: ''\n",
    "a:\n  - b: 1\n    c: 2\n  - d\n",
    "a: 1:30\nb: .inf\nc: -.5\nd: .nan_is_text\n",
    'a: "1"\nb: 1\nc: "true"\nd: true\n',
    "{a: b}",
    "[]",
    "x",
    "a: {}\nb: []\nc:\n",
    "multi: |\n  one\n  two\nfolded: >\n  a\n  b\n",
    "retention:\n" + "".join(f"  - target: {{tool: pgbackrest, stanza: s{i}}}\n    keep_last: 4\n" for i in range(50)),
]

OTHERS = [
    "a: &x 1\nb: *x\n",
    "a: &x [1]\nb: *x\n",
    "a: 1\na: 2\n",
    "1: one\n'1': two\n",
    "? [1]\n: 2\n",
    "? {a: 1}\n: 2\n",
    "a: !!str 1\n",
    "x: !foo 1\n",
    "<<: {a: 1}\nb: 2\n",
    "a: 1\n---\nb: 2\n",
    "key with spaces: value: x\n",
    "a: [\n",
    "a: !!binary aGVsbG8=\n",
]


def _safe(text: str):
    strict = loader._StrictLoader(text)
    try:
        return strict.get_single_data()
    finally:
        strict.dispose()


@pytest.mark.parametrize("text", PLAIN)
def test_a_plain_document_is_what_the_safe_loader_gives(text: str) -> None:
    built = loader._from_events(text)
    assert built is not loader._FALL_BACK
    expected = _safe(text)
    assert built == expected and repr(built) == repr(expected)  # repr: 1 and True, 1.0 and 1 differ


@pytest.mark.parametrize("text", OTHERS)
def test_anything_else_goes_to_the_safe_loader(text: str) -> None:
    assert loader._from_events(text) is loader._FALL_BACK


def test_the_file_reader_reports_as_before_through_either_way(tmp_path: Path) -> None:
    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text("workers: 2\nworkers: 3\n")
    _, problems = loader.read_mapping(str(duplicate))
    assert problems == [f"{duplicate}: (file): duplicate key 'workers' at line 2 (allowed: each key once per mapping)"]
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError) as refused:
        loader.read_mapping(str(scalar))
    assert "top level must be a mapping, got 'just text'" in str(refused.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [\n")
    with pytest.raises(ConfigError) as syntax:
        loader.read_mapping(str(broken))
    assert "YAML syntax error at line 2" in str(syntax.value)
    plain = tmp_path / "plain.yaml"
    plain.write_text("workers: 2\ntools: {pg_dump: {}}\n")
    assert loader.read_mapping(str(plain)) == ({"workers": 2, "tools": {"pg_dump": {}}}, [])
    assert yaml.safe_load(plain.read_text()) == {"workers": 2, "tools": {"pg_dump": {}}}
