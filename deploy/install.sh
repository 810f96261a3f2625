#!/bin/sh
# Install edge-agent as a systemd service on Raspberry Pi OS / Debian (run as root).
#
#   sudo deploy/install.sh [options]
#
# What it does (each step is safe to repeat; running it again upgrades):
#   - creates the system user and group edge-agent (useradd --system)
#   - picks the interpreter: the system python3 when pip finds wheels for every device
#     dependency (the TFLite runtime above all) for this machine and that Python; otherwise a
#     managed CPython 3.12 that uv installs under /opt/edge-agent/python (the system Python is
#     never touched). It says what it chose and why; --python overrides.
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
#   --python PROG             build the venv with PROG, no questions asked (default: python3 if
#                             the device dependencies have wheels for it, else a managed 3.12)
#   --managed-python          always use the managed CPython 3.12 (uv), even if python3 would do
#   --uv PROG                 the uv to install it with (default: uv on PATH, else uv from PyPI
#                             into /opt/edge-agent/tools/uv)
#   --explain-python          print the interpreter choice for this machine and exit
#   --as MACHINE,PYTHON,GLIBC with --explain-python: decide for another machine instead, e.g.
#                             --as aarch64,3.13,2.41 (Raspberry Pi OS 13); may be repeated
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
python=""
managed=""
uv=""
explain=""
as_list=""
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
    --managed-python) managed=1 ;;
    --uv) need_arg "$@"; uv=$2; shift ;;
    --explain-python) explain=1 ;;
    --as) need_arg "$@"; explain=1; as_list="$as_list $2"; shift ;;
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

# ----------------------------------------------------------------------------- interpreter
#
# Nothing is compiled on a device: every device dependency must install from a wheel. pip itself
# decides, with this machine's tags (Python version, architecture, glibc) and its usual index
# settings, whether they all resolve for the system Python; if not, uv provisions a managed
# CPython 3.12 (the version every runtime wheel exists for) for the service alone.

MANAGED_PYTHON=3.12
tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT

# py_version PY: prints "3.13"
py_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

# device_requirements PY [MACHINE PYTHON]: the project's dependencies (pyproject.toml of the
# source tree, or the wheel's metadata) into $tmpdir/requirements.txt. PY (>= 3.11: tomllib)
# reads them. With MACHINE and PYTHON their markers are evaluated for that machine (pip would
# evaluate them for this one, even with --platform).
device_requirements() {
    req_py=$1
    shift
    "$req_py" - "$target" "$@" >"$tmpdir/requirements.txt" <<'PY'
import sys
import zipfile
from pathlib import Path

t = Path(sys.argv[1])
if t.is_dir():
    import tomllib

    deps = tomllib.loads((t / "pyproject.toml").read_text())["project"]["dependencies"]
else:
    with zipfile.ZipFile(t) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    deps = [
        line.split(":", 1)[1].strip()
        for line in lines
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
if len(sys.argv) > 2:
    from pip._vendor.packaging.requirements import Requirement  # pip's own copy: always there

    env = {"platform_machine": sys.argv[2], "python_version": sys.argv[3], "sys_platform": "linux"}
    reqs = [Requirement(d) for d in deps]
    deps = [str(r).split(";")[0] for r in reqs if r.marker is None or r.marker.evaluate(env)]
print("\n".join(deps))
PY
}

# probe PY [PIP-OPTIONS...]: 0 when PY's pip finds a wheel for every device dependency (a dry
# run: nothing is installed). Sets probe_runtime (the ai-edge-litert version pip picked) or
# probe_error (pip's last line), and probe_missing=1 when pip said no wheel matches.
probe() {
    probe_py=$1
    shift
    probe_runtime=""
    probe_error=""
    probe_missing=""
    if probe_out=$("$probe_py" -m pip install --dry-run --disable-pip-version-check \
        --ignore-installed --only-binary=:all: --target "$tmpdir/target" "$@" \
        -r "$tmpdir/requirements.txt" 2>&1); then
        probe_runtime=$(printf '%s\n' "$probe_out" |
            sed -n 's/^Would install .*ai[-_]edge[-_]litert-\([^ ]*\).*/\1/p')
        return 0
    fi
    probe_error=$(printf '%s\n' "$probe_out" | grep -v '^WARNING' | grep . | tail -n 1)
    case $probe_out in
    # pip also says "no matching distribution" when it never reached the index: that is no
    # answer, not a missing wheel.
    *"NewConnectionError"* | *"Failed to establish"* | *"Temporary failure in name resolution"* | \
        *"Could not fetch URL"* | *"ProxyError"* | *"SSLError"*)
        probe_error="pip could not reach the package index ($probe_error)" ;;
    *"No matching distribution"* | *"Could not find a version"*) probe_missing=1 ;;
    esac
    return 1
}

# platform_args MACHINE GLIBC: pip's --platform options for a manylinux machine of that glibc.
platform_args() {
    printf -- '--implementation cp --platform manylinux2014_%s' "$1"
    g=17
    while [ "$g" -le "${2#*.}" ]; do
        printf ' --platform manylinux_2_%s_%s' "$g" "$1"
        g=$((g + 1))
    done
}

this_machine() {
    uname -m
}

this_glibc() {
    getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}'
}

# explain MACHINE PYTHON GLIBC [here]: print the choice for such a machine, probing with the
# probe venv's pip: with "here", for this machine with its own tags; else with pip's --platform.
explain() {
    m=$1 v=$2 g=$3 choice=""
    if [ "${4:-}" = here ]; then
        device_requirements "$probe_python" || die "cannot read the dependencies of $target"
        probe "$probe_python"
    else
        device_requirements "$probe_python" "$m" "$v" || die "cannot read the dependencies"
        # shellcheck disable=SC2046 # word splitting of platform_args is intended
        probe "$probe_python" $(platform_args "$m" "$g") --python-version "$v"
    fi && choice=system why="pip finds a wheel for every device dependency"
    if [ -z "$probe_runtime" ] && [ -z "$probe_missing" ] && [ -n "$probe_error" ]; then
        die "pip could not check the wheels: $probe_error"
    elif [ -n "$probe_missing" ]; then
        why="Python $v: $probe_error"
        device_requirements "$probe_python" "$m" "$MANAGED_PYTHON" || die "cannot read the dependencies"
        # shellcheck disable=SC2046
        if probe "$probe_python" $(platform_args "$m" "$g") --python-version "$MANAGED_PYTHON"; then
            choice=managed
            why="$why; CPython $MANAGED_PYTHON has them"
        else
            choice=none
            why="$why; CPython $MANAGED_PYTHON: $probe_error"
        fi
    fi
    echo "choice=$choice machine=$m python=$v glibc=$g runtime=${probe_runtime:--}"
    echo "    $why"
}

# probe_venv: a throwaway venv (system python3) whose pip does the probing for --explain-python.
probe_venv() {
    command -v python3 >/dev/null 2>&1 || die "python3 not found (apt-get install python3)"
    python3 -m venv "$tmpdir/probe" >/dev/null 2>&1 ||
        die "python3 cannot make venvs: apt-get install python3-venv"
    probe_python=$tmpdir/probe/bin/python
}

# managed_python: provision CPython 3.12 with uv under $PREFIX/python; prints its path.
managed_python() {
    if [ -n "$uv" ]; then
        command -v "$uv" >/dev/null 2>&1 || die "--uv $uv not found"
    elif command -v uv >/dev/null 2>&1; then
        uv=uv
    else
        tools=$D$PREFIX/tools/uv
        if [ ! -x "$tools/bin/uv" ]; then
            say "installing uv from PyPI into $PREFIX/tools/uv" >&2
            command -v python3 >/dev/null 2>&1 || die "no python3 to install uv with: give --uv"
            { python3 -m venv "$tools" &&
                "$tools/bin/python" -m pip install -q --disable-pip-version-check uv; } >&2 ||
                die "could not install uv into $PREFIX/tools/uv (pip output above)"
        fi
        uv=$tools/bin/uv
    fi
    export UV_PYTHON_INSTALL_DIR="$D$PREFIX/python" UV_PYTHON_PREFERENCE=only-managed
    "$uv" python install "$MANAGED_PYTHON" >&2 ||
        die "uv could not install CPython $MANAGED_PYTHON (it downloads it: the device needs" \
            "internet, or a mirror in UV_PYTHON_INSTALL_MIRROR); or give --python"
    "$uv" python find "$MANAGED_PYTHON" || die "uv installed CPython $MANAGED_PYTHON but cannot find it"
}

# ----------------------------------------------------------------------------- checks

if [ -z "$skip_venv" ] || [ -n "$explain" ]; then
    if [ -n "$wheel" ]; then
        [ -f "$wheel" ] || die "wheel $wheel does not exist"
        wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
        target=$wheel
    else
        [ -f "$source_dir/pyproject.toml" ] || die "$source_dir is not the edge-agent source tree"
        target=$(cd "$source_dir" && pwd)
    fi
fi

if [ -n "$explain" ]; then
    for spec in $as_list; do
        case $spec in
        *,*.*,2.*) ;;
        *) die "--as $spec: give MACHINE,PYTHON,GLIBC, e.g. aarch64,3.13,2.41" ;;
        esac
    done
    probe_venv
    if [ -z "$as_list" ]; then
        m=$(this_machine)
        explain "$m" "$(py_version python3)" "$(this_glibc)" here
    fi
    for spec in $as_list; do
        IFS=, read -r m v g <<EOF
$spec
EOF
        [ -n "$m" ] && [ -n "$v" ] && [ -n "$g" ] || die "--as $spec: give MACHINE,PYTHON,GLIBC"
        explain "$m" "$v" "$g"
    done
    exit 0
fi

[ -n "$D" ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0), or give --destdir"
[ -f "$here/$SERVICE" ] || die "$here/$SERVICE is missing: run the script from the source tree"

if [ -z "$skip_venv" ] && [ -n "$python" ]; then
    command -v "$python" >/dev/null 2>&1 || die "$python not found"
    "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null ||
        die "$python is older than 3.11"
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
    make_venv() { # make_venv PY: the release venv, made by PY
        if ! "$1" -m venv "$release"; then
            rm -rf "$release"
            die "could not create the venv $release with $1"
        fi
    }
    machine=$(this_machine)
    if [ -n "$python" ]; then
        say "Python: $python ($(py_version "$python")), as --python says"
        make_venv "$python"
    else
        why=""
        sysver=$(py_version python3 || true)
        if [ -n "$managed" ]; then
            why="--managed-python"
        elif [ -z "$sysver" ]; then
            why="no python3 here"
        elif ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
            why="python3 is $sysver, older than 3.11"
        else
            python3 -c 'import venv, ensurepip' 2>/dev/null ||
                die "python3 cannot make venvs: apt-get install python3-venv"
            make_venv python3
            device_requirements "$release/bin/python" || die "cannot read the dependencies of $target"
            if probe "$release/bin/python"; then
                say "Python: the system python3 $sysver on $machine: pip finds a wheel for every" \
                    "device dependency (ai-edge-litert ${probe_runtime:-?}): using it"
            elif [ -n "$probe_missing" ]; then
                why="pip finds no wheels for the system python3 $sysver on $machine ($probe_error)"
                rm -rf "$release"
            else
                rm -rf "$release"
                die "pip could not check the device dependencies: $probe_error"
            fi
        fi
        if [ -n "$why" ]; then
            say "Python: $why: using a managed CPython $MANAGED_PYTHON (uv) in $PREFIX/python," \
                "for this service only; the system Python is not touched"
            mpy=$(managed_python)
            say "Python: $mpy ($(py_version "$mpy"))"
            make_venv "$mpy"
        fi
    fi
    say "building $release from $target"
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
