#!/bin/sh
# Installs on Debian 12 every package that `make test`, `make demo` and `make deb` need, and only
# what is missing. Needs root (apt-get). The one install step of README.md and of .ci/run.
#
#   sh packaging/install-deps.sh                 install what is missing, all groups
#   sh packaging/install-deps.sh --check [GROUP] list what is missing; exit 1 if anything is
#
# Groups: test (Python, PostgreSQL 15 server and client, git for the migration test, tar, gzip,
# sudo for an ordinary user's `make test`, python3-systemd for the journal test),
# tools (the real pgBackRest and Barman the end-to-end tests run), deb (building and checking
# the Debian package).
set -eu

test_packages="make python3 python3-venv python3-pip git postgresql-15 postgresql-client-15 tar gzip util-linux sudo python3-systemd"
tools_packages="pgbackrest barman barman-cli"
deb_packages="dpkg-dev debhelper dh-python python3-all python3-setuptools lintian"

check=no
if [ "${1:-}" = "--check" ]; then
    check=yes
    shift
fi
[ $# -gt 0 ] || set -- test tools deb

wanted=""
for group in "$@"; do
    case "$group" in
        test) wanted="$wanted $test_packages" ;;
        tools) wanted="$wanted $tools_packages" ;;
        deb) wanted="$wanted $deb_packages" ;;
        *) echo "install-deps: unknown group '$group' (allowed: test, tools, deb)" >&2; exit 2 ;;
    esac
done

missing=""
for package in $wanted; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done

if [ -z "$missing" ]; then
    [ "$check" = yes ] || echo "install-deps: nothing missing"
    exit 0
fi
if [ "$check" = yes ]; then
    echo "install-deps: missing Debian packages:$missing" >&2
    echo "install-deps: install everything with (as root): sh packaging/install-deps.sh" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing:$missing; run this script as root (e.g. sudo sh $0)" >&2
    exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086 # one word per package
apt-get install -y -q $missing
