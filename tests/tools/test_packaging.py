"""The Debian packaging agrees with the code: one version, the unit's promises. (Building,
installing and purging the package is done by .ci/run; see packaging/test_installed.py.)"""

import configparser
import re
from pathlib import Path

from pggit_supervisor import __version__

DEBIAN = Path(__file__).resolve().parents[2] / "packaging" / "debian"


def test_debian_changelog_and_the_python_package_have_one_version():
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert re.match(r"^pggit-supervisor \(([^)]+)\) ", first).group(1) == __version__


def _service(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEBIAN / name)
    return parser


def test_unit_stops_gently_and_outlasts_the_shutdown_timeout():
    unit = _service("pggit-supervisor.service")
    service = unit["Service"]
    assert (service["Type"], service["NotifyAccess"], service["KillMode"]) == ("notify", "main", "mixed")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    shipped = (DEBIAN / "supervisor.yaml").read_text()
    shutdown = int(re.search(r"^shutdown_timeout: (\d+)", shipped, re.M).group(1))
    assert int(service["TimeoutStopSec"]) > shutdown + 60, "systemd must not kill backups still finishing"
    assert "PrivateTmp" not in service, "pgBackRest's locks in /tmp must be shared with archive_command"
    assert "Requires" not in unit["Unit"] and "postgresql.service" in unit["Unit"]["After"]


def test_template_unit_runs_one_config_per_instance():
    service = _service("pggit-supervisor@.service")["Service"]
    assert service["ExecStart"] == "/usr/bin/pggit-supervisor run -c /etc/pggit/%i.yaml"


def test_shipped_config_uses_no_superuser_login_and_the_packages_drill_user():
    shipped = (DEBIAN / "supervisor.yaml").read_text()
    dsn = re.search(r"^dsn: (\S+)", shipped, re.M).group(1)
    assert dsn.startswith("postgresql://pggit_backup@"), "the queue login is not postgres"
    assert re.search(r"^drill_user: pggit-drill$", shipped, re.M)
    example = (DEBIAN.parent.parent / "conf" / "supervisor.yaml").read_text()
    assert re.search(r"^dsn: postgresql://pggit_backup@", example, re.M)


def test_package_creates_the_drill_user_as_an_unprivileged_system_user():
    lines = [
        line.split()
        for line in (DEBIAN / "pggit-supervisor.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    users = [line for line in lines if line[0] == "u"]
    assert [line[1] for line in users] == ["pggit-drill"]
    assert users[0][-2:] == ["/nonexistent", "/usr/sbin/nologin"], "no home, no login shell"
    assert not [line for line in lines if line[0] == "m"], "the drill user joins no group (not pggit, not postgres)"


def test_units_allow_drills_a_user_and_a_network_namespace_and_no_other():
    for name in ("pggit-supervisor.service", "pggit-supervisor@.service"):
        service = _service(name)["Service"]
        # sandbox.UNSHARE_ARGV needs exactly these; a unit that forbids them fails every drill
        assert sorted(service["RestrictNamespaces"].split()) == ["net", "user"], name
