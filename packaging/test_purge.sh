#!/usr/bin/env bash
# Purges the installed package and checks that it left nothing behind but backups.
# Run by .ci/run after packaging/test_installed.py (which made one backup).
set -euo pipefail
files=$(mktemp)
dpkg -L pggit-supervisor | grep -v -E '^/(\.|etc|lib|usr|var|usr/share/doc|usr/share/man|usr/share/man/man1|lib/systemd|lib/systemd/system|usr/lib|usr/lib/python3|usr/lib/python3/dist-packages|usr/bin|usr/share|var/lib|usr/lib/sysusers.d)$' > "$files"
backups=$(find /var/lib/pggit/backups -mindepth 1 -maxdepth 1 | wc -l)
apt-get purge -y -q pggit-supervisor >/dev/null
left=()
while read -r path; do
    case "$path" in
        /var/lib/pggit|/var/lib/pggit/backups) ;;  # kept while they hold backups
        *) [ -e "$path" ] && left+=("$path") ;;
    esac
done < "$files"
[ -e /etc/pggit ] && left+=(/etc/pggit)
[ -e /var/lib/pggit/tmp ] && left+=(/var/lib/pggit/tmp)
[ -e /usr/lib/python3/dist-packages/pggit_supervisor ] && left+=(/usr/lib/python3/dist-packages/pggit_supervisor)
if [ ${#left[@]} -gt 0 ]; then
    echo "FAIL purge left: ${left[*]}"
    exit 1
fi
echo "ok   purge removed every file of the package"
# Debian removes no system user on purge (a later user given the same uid would own whatever
# files were left): the drill user stays, still without a login shell, and owns nothing here.
entry=$(getent passwd pggit-drill) || { echo "FAIL purge removed the system user pggit-drill"; exit 1; }
case "$entry" in
    */usr/sbin/nologin) ;;
    *) echo "FAIL pggit-drill has a login shell after purge: $entry"; exit 1 ;;
esac
if [ -e /var/lib/pggit/tmp ] || { [ -d /var/lib/pggit ] && [ -n "$(find /var/lib/pggit -user pggit-drill -print -quit)" ]; }; then
    echo "FAIL files of pggit-drill remain under /var/lib/pggit"; exit 1
fi
echo "ok   the system user pggit-drill stays after purge, as Debian keeps system users, and owns no file of the package"
if [ "$backups" -gt 0 ]; then
    [ "$(find /var/lib/pggit/backups -mindepth 1 -maxdepth 1 | wc -l)" -eq "$backups" ] \
        || { echo "FAIL purge deleted backups"; exit 1; }
    echo "ok   purge kept the $backups backup(s) in /var/lib/pggit/backups"
    rm -rf /var/lib/pggit   # the test's own backup: cleaned by the test, never by the package
fi
rm -f "$files"
