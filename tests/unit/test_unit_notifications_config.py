"""The notifications section of the config (settings.py declares it): what a worker delivers
with, and each mistake named by file, key and what is allowed, the secret never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.config_files import problems_in, write_config
from pggit_supervisor.config import ConfigError, Endpoint, NotificationConfig, load_config

DSN = "postgresql://pggit_backup@localhost:5432/mydb"
SECRET = "s3cret-of-twenty-chars"


def config(tmp_path: Path, notifications) -> str:
    data = {"dsn": DSN, "worker_id": "w1", "tools": {"custom": {"allowed_commands": ["/bin/true"]}}}
    return write_config(tmp_path, {**data, "notifications": notifications})


def test_left_out_nothing_is_allowed_and_nothing_signed(tmp_path):
    loaded = load_config(config(tmp_path, None), {}, check_paths=False)
    assert loaded.notifications == NotificationConfig()
    assert loaded.notifications.allowed_hosts == () and loaded.notifications.secret is None
    assert (loaded.notifications.max_attempts, loaded.notifications.timeout) == (10, 10.0)


def test_a_full_section_loads_as_written(tmp_path):
    given = {
        "allowed_hosts": ["hooks.example.com", "10.0.0.0/8", "::1"],
        "secret": SECRET,
        "endpoints": [
            {"name": "oncall", "url": "https://alerts.example.com/x?k=1"},
            {"name": "audit", "url": "http://audit.example.com/", "events": ["completed", "cancelled"]},
        ],
        "max_attempts": 4,
        "backoff_base": 5,
        "backoff_cap": 50,
        "timeout": 2.5,
    }
    loaded = load_config(config(tmp_path, given), {}, check_paths=False).notifications
    assert loaded == NotificationConfig(
        allowed_hosts=("hooks.example.com", "10.0.0.0/8", "::1"),
        secret=SECRET,
        endpoints=(
            Endpoint("oncall", "https://alerts.example.com/x?k=1", ("permanently_failed",)),
            Endpoint("audit", "http://audit.example.com/", ("completed", "cancelled")),
        ),
        max_attempts=4,
        backoff_base=5,
        backoff_cap=50,
        timeout=2.5,
    )
    assert SECRET not in repr(loaded) and "alerts.example.com" not in repr(loaded), "no secret in a repr or a log"


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        (
            {"secret": "short"},
            "notifications.secret: must be 16-256 printable ASCII characters without spaces, got 5 characters "
            "(not shown)",
        ),
        (
            {"secret": "a secret with spaces in it"},
            "notifications.secret: must be 16-256 printable ASCII characters without spaces, got 26 characters "
            "(not shown)",
        ),
        (
            {"backoff_base": 60, "backoff_cap": 30},
            "notifications.backoff_cap: must be at least backoff_base (60), got 30 (allowed: 60-604800 seconds)",
        ),
        (
            {"endpoints": [{"name": "webhook_url", "url": "http://a.example/"}]},
            "notifications.endpoints[0].name: must be 1-63 letters",
        ),
        (
            {"endpoints": [{"name": "x", "url": "ftp://a.example/"}]},
            "notifications.endpoints[0].url: must be an http:// or https:// URL",
        ),
        (
            {"endpoints": [{"name": "x", "url": "http://a.example/", "events": ["finished"]}]},
            "notifications.endpoints[0].events[0]: must be an event name, got 'finished' "
            "(allowed: completed, will_retry, permanently_failed, cancelled)",
        ),
        (
            {"endpoints": [{"name": "x", "url": "http://a/"}, {"name": "x", "url": "http://b/"}]},
            "notifications.endpoints[1].name: duplicate endpoint name 'x' (allowed: each name once)",
        ),
        ({"endpoints": [{"url": "http://a/"}]}, "notifications.endpoints[0].name: required"),
        (
            {"allowed_hosts": "hooks.example.com"},
            "notifications.allowed_hosts: must be a non-empty list of host names, addresses or networks",
        ),
        (
            {"secret": SECRET, "secret_file": "/etc/pggit/secret"},
            "notifications.secret_file: must not be set together with secret",
        ),
        ({"timeout": 0}, "notifications.timeout: must be between 0.5 and 300, got 0"),
        ({"alowed_hosts": ["a"]}, "notifications.alowed_hosts: unknown key"),
    ],
)
def test_each_mistake_is_named_with_its_key(tmp_path, given, problem):
    found = problems_in(config(tmp_path, given))
    assert len(found) == 1 and found[0].startswith(problem), found
    assert SECRET not in found[0] and "short" not in found[0]


def test_a_secret_file_gives_the_secret_and_a_bad_one_stops_the_load(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\nthe rest is ignored\n")
    loaded = load_config(config(tmp_path, {"secret_file": str(secret_file)}), {}, check_paths=True)
    assert loaded.notifications.secret == SECRET

    secret_file.write_text("tiny\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config(tmp_path, {"secret_file": str(secret_file)}), {}, check_paths=True)
    [problem] = raised.value.problems
    assert "notifications.secret_file" in problem and "first line must be 16-256" in problem and "tiny" not in problem

    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as raised:
        load_config(config(tmp_path, {"secret_file": str(missing)}), {}, check_paths=True)
    assert raised.value.problems == [
        f"{tmp_path / 'supervisor.yaml'}: notifications.secret_file: cannot read {missing}: No such file or directory"
        " (allowed: a readable file)"
    ]
