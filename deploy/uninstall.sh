#!/bin/sh
# Remove edge-agent installed by install.sh (run as root).
#
#   sudo /opt/edge-agent/uninstall.sh [options]
#
# Stops and disables the service, removes the unit, /opt/edge-agent (every venv release) and
# the edge-agent system user. Keeps the operator's files unless --purge:
#   /etc/edge-agent            config.toml, credentials/, tls/
#   /var/lib/edge-agent        the unsent spool, OTA state, model versions
#   /etc/systemd/system/edge-agent.service.d/*.conf   local drop-ins (sensors.conf, ...)
#
# Options:
#   --purge          remove those too
#   --destdir DIR    uninstall from a scratch root (also $DESTDIR); the user is left alone
#   --no-systemctl   never run systemctl (also SKIP_SYSTEMCTL=1)
#   --unit-dir DIR   where install.sh put the unit, if not /etc/systemd/system
set -eu

NAME=edge-agent
SERVICE=edge-agent.service
PREFIX=/opt/edge-agent
ETC=/etc/edge-agent
STATE=/var/lib/edge-agent

die() {
    echo "uninstall.sh: error: $*" >&2
    exit 1
}

say() {
    echo "uninstall.sh: $*"
}

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit "${1:-0}"
}

destdir=${DESTDIR:-}
skip_systemctl=${SKIP_SYSTEMCTL:-}
purge=""
unit_dir=/etc/systemd/system

while [ $# -gt 0 ]; do
    case $1 in
    --purge) purge=1 ;;
    --destdir) [ $# -ge 2 ] && [ -n "$2" ] || die "--destdir needs a value"; destdir=$2; shift ;;
    --no-systemctl) skip_systemctl=1 ;;
    --unit-dir) [ $# -ge 2 ] && [ -n "$2" ] || die "--unit-dir needs a value"; unit_dir=$2; shift ;;
    -h | --help) usage 0 ;;
    *) echo "uninstall.sh: unknown option: $1" >&2; usage 2 >&2 ;;
    esac
    shift
done
case $skip_systemctl in 0 | no | false) skip_systemctl="" ;; esac

destdir=${destdir%/}
if [ -n "$destdir" ]; then
    [ -d "$destdir" ] || die "$destdir does not exist"
    destdir=$(cd "$destdir" && pwd)
    [ "$destdir" != / ] || destdir=""
fi
D=$destdir
[ -n "$D" ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0), or give --destdir"

# ----------------------------------------------------------------------------- service

unit_files=""
for dir in "$unit_dir" /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
    [ -f "$D$dir/$SERVICE" ] && unit_files="$unit_files $D$dir/$SERVICE"
done

if [ -n "$skip_systemctl" ]; then
    say "not running systemctl (--no-systemctl)"
elif [ -n "$D" ]; then
    [ -z "$unit_files" ] || systemctl --root="$D" disable "$SERVICE"
elif [ -d /run/systemd/system ]; then
    # Stopping lets the agent flush what it can; unsent messages stay in the spool.
    [ -z "$unit_files" ] || systemctl disable --now "$SERVICE" || say "could not stop $SERVICE"
else
    [ -z "$unit_files" ] || systemctl disable "$SERVICE" || true
fi
# Whatever systemctl did, no enablement link may point at a unit that is about to go.
rm -f "$D/etc/systemd/system/multi-user.target.wants/$SERVICE"

for f in $unit_files; do
    rm -f "$f"
    say "removed ${f#"$D"}"
done

dropins=$D/etc/systemd/system/$SERVICE.d
if [ -d "$dropins" ]; then
    rm -f "$dropins/sensors.conf.example"
    if [ -n "$purge" ]; then
        rm -rf "$dropins"
    elif ! rmdir "$dropins" 2>/dev/null; then
        say "kept local drop-ins in ${dropins#"$D"}/ (--purge removes them)"
    fi
fi

if [ -z "$skip_systemctl" ] && [ -z "$D" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl reset-failed "$SERVICE" 2>/dev/null || true
fi

# ----------------------------------------------------------------------------- files and user

if [ -e "$D$PREFIX" ]; then
    rm -rf "$D$PREFIX"
    say "removed $PREFIX"
fi

if [ -n "$D" ]; then
    say "DESTDIR uninstall: leaving system users alone"
elif getent passwd "$NAME" >/dev/null 2>&1; then
    if userdel "$NAME"; then
        say "removed system user $NAME"
    else
        say "could not remove user $NAME (still running processes?): userdel $NAME"
    fi
fi

if [ -n "$purge" ]; then
    rm -rf "$D$ETC" "$D$STATE"
    say "purged $ETC and $STATE"
else
    for kept in "$ETC" "$STATE"; do
        [ ! -e "$D$kept" ] || say "kept $kept (--purge removes it)"
    done
fi
say "done"
