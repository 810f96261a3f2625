#!/bin/sh
# Install edge-agent as a systemd service on Raspberry Pi OS / Debian (run as root).
#
#   sudo deploy/install.sh [options]
#
# What it does (each step is safe to repeat; running it again upgrades):
#   - creates the system user and group edge-agent (useradd --system)
#   - builds a fresh venv in /opt/edge-agent/releases/<time> from this source tree (or --wheel),
#     checks it imports, then points /opt/edge-agent/venv at it; the previous release is kept
#     for rollback, older ones are removed
#   - writes /etc/edge-agent/config.toml only if it does not exist (never touches yours)
#   - makes /etc/edge-agent/credentials/ (0700 root) with the MQTT password file, empty
#     unless --mqtt-password-file is given; systemd hands it to the agent (LoadCredential=)
#   - installs the unit to /etc/systemd/system/edge-agent.service and a device-access drop-in
#     example next to it, then daemon-reload, enable, and start (or restart on upgrade)
#
# Options:
#   --destdir DIR             install under DIR (a scratch root; also $DESTDIR). No user is
#                             created and nothing is started; the unit is enabled with
#                             `systemctl --root` unless --no-systemctl.
#   --source DIR              project source tree to install (default: the one holding this script)
#   --wheel FILE              install this wheel instead of the source tree
#   --python PROG             interpreter to build the venv with (default: python3)
#   --no-venv                 skip the venv (also SKIP_VENV=1): install only the files. For tests
#                             and for images whose venv is built elsewhere.
#   --no-systemctl            never run systemctl (also SKIP_SYSTEMCTL=1)
#   --no-start                enable the service but do not start or restart it
#   --device-id ID            agent.device_id for a new config.toml (default: the short host name)
#   --mqtt-host HOST          mqtt.host for a new config.toml (default: localhost)
#   --mqtt-password-file F    install F as the MQTT password credential (replaces the current one)
#   --ca-file F               install F as /etc/edge-agent/tls/edge-ca.crt (the broker's CA)
#   --unit-dir DIR            where the unit goes (default: /etc/systemd/system)
#
# pip honours its usual environment (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, ...), e.g. for
# an offline install from a directory of wheels. deploy/README.md is the operator's guide.
set -eu
umask 022 # modes below are set explicitly; new parent directories get 0755

NAME=edge-agent
SERVICE=edge-agent.service
PREFIX=/opt/edge-agent
ETC=/etc/edge-agent
STATE=/var/lib/edge-agent

here=$(cd "$(dirname "$0")" && pwd)

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

say() {
    echo "install.sh: $*"
}

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit "${1:-0}"
}

destdir=${DESTDIR:-}
source_dir=$(dirname "$here")
wheel=""
python=python3
skip_venv=${SKIP_VENV:-}
skip_systemctl=${SKIP_SYSTEMCTL:-}
no_start=""
device_id=""
mqtt_host=localhost
password_file=""
ca_file=""
unit_dir=/etc/systemd/system

need_arg() {
    [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
}

while [ $# -gt 0 ]; do
    case $1 in
    --destdir) need_arg "$@"; destdir=$2; shift ;;
    --source) need_arg "$@"; source_dir=$2; shift ;;
    --wheel) need_arg "$@"; wheel=$2; shift ;;
    --python) need_arg "$@"; python=$2; shift ;;
    --no-venv) skip_venv=1 ;;
    --no-systemctl) skip_systemctl=1 ;;
    --no-start) no_start=1 ;;
    --device-id) need_arg "$@"; device_id=$2; shift ;;
    --mqtt-host) need_arg "$@"; mqtt_host=$2; shift ;;
    --mqtt-password-file) need_arg "$@"; password_file=$2; shift ;;
    --ca-file) need_arg "$@"; ca_file=$2; shift ;;
    --unit-dir) need_arg "$@"; unit_dir=$2; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install.sh: unknown option: $1" >&2; usage 2 >&2 ;;
    esac
    shift
done

# "0", "no", "false" and "" all mean "do not skip".
case $skip_venv in 0 | no | false) skip_venv="" ;; esac
case $skip_systemctl in 0 | no | false) skip_systemctl="" ;; esac

destdir=${destdir%/}
if [ -n "$destdir" ]; then
    mkdir -p "$destdir"
    destdir=$(cd "$destdir" && pwd)
    [ "$destdir" != / ] || destdir=""
fi
D=$destdir

# ----------------------------------------------------------------------------- checks

[ -n "$D" ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0), or give --destdir"
[ -f "$here/$SERVICE" ] || die "$here/$SERVICE is missing: run the script from the source tree"

if [ -z "$skip_venv" ]; then
    if [ -n "$wheel" ]; then
        [ -f "$wheel" ] || die "wheel $wheel does not exist"
        wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
        target=$wheel
    else
        [ -f "$source_dir/pyproject.toml" ] || die "$source_dir is not the edge-agent source tree"
        target=$(cd "$source_dir" && pwd)
    fi
    command -v "$python" >/dev/null 2>&1 || die "$python not found (apt-get install python3)"
    "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null ||
        die "$python is older than 3.11 (Raspberry Pi OS / Debian 12 'bookworm' has 3.11)"
    "$python" -c 'import venv, ensurepip' 2>/dev/null ||
        die "$python cannot make venvs: apt-get install python3-venv"
fi
[ -z "$password_file" ] || [ -f "$password_file" ] || die "password file $password_file not found"
[ -z "$ca_file" ] || [ -f "$ca_file" ] || die "CA file $ca_file not found"

if [ -z "$device_id" ]; then
    device_id=$(uname -n | cut -d. -f1 | tr -c 'A-Za-z0-9_.\n-' '-')
fi
case $device_id in
*[!A-Za-z0-9_.-]* | "") die "device id '$device_id' must be letters, digits, '_', '.', '-'" ;;
esac
[ "${#device_id}" -le 64 ] || die "device id '$device_id' is longer than 64 characters"
case $mqtt_host in
*[\"\\]* | "") die "MQTT host '$mqtt_host' is not a host name" ;;
esac

# ----------------------------------------------------------------------------- user

if [ -n "$D" ]; then
    say "DESTDIR install: not creating the system user $NAME (useradd --system on the target)"
elif getent passwd "$NAME" >/dev/null 2>&1; then
    say "user $NAME exists"
else
    useradd --system --user-group --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "edge-agent service" "$NAME"
    say "created system user $NAME"
fi

# chown_root_group FILE: root:edge-agent on a real install; left as is under DESTDIR.
chown_root_group() {
    [ -n "$D" ] || chown "root:$NAME" "$1"
}

# ----------------------------------------------------------------------------- directories

# ensure_dir MODE DIR: create with MODE; an existing directory keeps the mode it has.
ensure_dir() {
    [ -d "$2" ] || install -d -m "$1" "$2"
}

ensure_dir 0755 "$D$PREFIX"
ensure_dir 0755 "$D$PREFIX/releases"
ensure_dir 0755 "$D$ETC"
ensure_dir 0755 "$D$ETC/tls"
install -d -m 0700 "$D$ETC/credentials" # always 0700: secrets

# ----------------------------------------------------------------------------- venv

if [ -n "$skip_venv" ]; then
    say "skipping the venv (--no-venv): $PREFIX/venv is not created"
else
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    release=$D$PREFIX/releases/$stamp
    [ ! -e "$release" ] || release=$release-$$
    link=$D$PREFIX/venv
    if [ -d "$link" ] && [ ! -L "$link" ]; then
        die "$link is a directory, not the release symlink install.sh manages: move it away"
    fi
    say "building $release from $target"
    if ! "$python" -m venv "$release"; then
        rm -rf "$release"
        die "could not create the venv $release"
    fi
    if ! "$release/bin/python" -m pip install --disable-pip-version-check "$target" ||
        ! "$release/bin/python" -c 'import agent' ||
        [ ! -x "$release/bin/edge-agent" ]; then
        rm -rf "$release"
        die "installing edge-agent into the venv failed; $PREFIX/venv is unchanged"
    fi
    new=$(basename "$release")
    previous=$(readlink "$link" 2>/dev/null || true)
    previous=${previous#releases/}
    # Swap atomically: the running agent keeps its files until the restart below.
    ln -sfn "releases/$new" "$link.new"
    mv -Tf "$link.new" "$link"
    say "$PREFIX/venv -> releases/$new"
    # Keep the new release and the one it replaces (for rollback); remove the rest.
    for old in "$D$PREFIX"/releases/*; do
        case $(basename "$old") in "$new" | "$previous") continue ;; esac
        [ -e "$old" ] || continue
        rm -rf "$old"
        say "removed old release $(basename "$old")"
    done
fi

install -m 0644 "$here/README.md" "$D$PREFIX/README.md"
install -m 0755 "$here/uninstall.sh" "$D$PREFIX/uninstall.sh"

# ----------------------------------------------------------------------------- config

config=$D$ETC/config.toml
if [ -e "$config" ]; then
    say "keeping the existing $ETC/config.toml"
else
    tmp=$config.tmp.$$
    cat >"$tmp" <<EOF
# edge-agent configuration, written once by install.sh: upgrades never overwrite it.
# Check it with:  $PREFIX/venv/bin/edge-agent check-config --config $ETC/config.toml
# Secrets never go here: see [mqtt] password_file.

[agent]
device_id = "$device_id"
# Under systemd \$STATE_DIRECTORY (/var/lib/edge-agent) wins; this is for manual runs.
state_dir = "$STATE"
log_format = "text"  # "json": one JSON object per line, for log shippers

[model]
path = "builtin:demo"

# The demo sensor. A sensor script instead (device access: see
# /etc/systemd/system/edge-agent.service.d/sensors.conf.example):
# [[sources]]
# type = "command"
# name = "imu"
# channels = 3
# argv = ["/usr/local/bin/read-imu", "--bus", "1"]
[[sources]]
type = "synthetic"
name = "demo"

[mqtt]
host = "$mqtt_host"
port = 8883
# On the fleet broker (deploy/mosquitto) the user name must be the device_id.
username = "$device_id"
# A relative name is looked up in \$CREDENTIALS_DIRECTORY, which systemd fills from
# $ETC/credentials/mqtt-password (LoadCredential= in the unit).
password_file = "mqtt-password"

[mqtt.tls]
enabled = true
ca_file = "$ETC/tls/edge-ca.crt"
EOF
    chmod 0640 "$tmp"
    chown_root_group "$tmp"
    mv "$tmp" "$config"
    say "wrote $ETC/config.toml (device_id $device_id, broker $mqtt_host:8883)"
fi

# ----------------------------------------------------------------------------- credentials

cred=$D$ETC/credentials/mqtt-password
if [ -n "$password_file" ]; then
    install -m 0600 "$password_file" "$cred"
    say "installed the MQTT password as $ETC/credentials/mqtt-password"
elif [ ! -e "$cred" ]; then
    # LoadCredential= fails the start when its file is missing: an empty one keeps the
    # service startable until the operator puts the real password there.
    (umask 077 && : >"$cred")
    say "created an empty $ETC/credentials/mqtt-password: put the device's MQTT password in it"
fi
if [ -n "$ca_file" ]; then
    install -m 0644 "$ca_file" "$D$ETC/tls/edge-ca.crt"
    say "installed the broker CA as $ETC/tls/edge-ca.crt"
fi

# ----------------------------------------------------------------------------- unit

ensure_dir 0755 "$D$unit_dir"
ensure_dir 0755 "$D/etc/systemd/system/$SERVICE.d"
install -m 0644 "$here/$SERVICE" "$D$unit_dir/$SERVICE"
install -m 0644 "$here/$SERVICE.d/sensors.conf.example" \
    "$D/etc/systemd/system/$SERVICE.d/sensors.conf.example"
say "installed $unit_dir/$SERVICE"

if [ -n "$skip_systemctl" ]; then
    say "not running systemctl (--no-systemctl); to start: systemctl daemon-reload &&" \
        "systemctl enable --now $SERVICE"
elif [ -n "$D" ]; then
    systemctl --root="$D" enable "$SERVICE"
    say "enabled $SERVICE in $D (starts on the target's next boot)"
elif [ ! -d /run/systemd/system ]; then
    # A chroot or container image build: enabling works offline, starting does not.
    systemctl enable "$SERVICE"
    say "systemd is not running here: enabled $SERVICE, it starts on the next boot"
else
    systemctl daemon-reload
    systemctl enable "$SERVICE"
    if [ -n "$no_start" ]; then
        say "enabled $SERVICE (not started: --no-start)"
    elif systemctl is-active --quiet "$SERVICE"; then
        systemctl restart "$SERVICE"
        say "restarted $SERVICE on the new release"
    elif systemctl start "$SERVICE"; then
        say "started $SERVICE"
    else
        say "$SERVICE did not start: see journalctl -u $NAME -e"
    fi
fi

say "done. Next: put the broker CA in $ETC/tls/edge-ca.crt, the password in" \
    "$ETC/credentials/mqtt-password, check $ETC/config.toml, then systemctl restart $NAME;" \
    "logs: journalctl -u $NAME -f"
