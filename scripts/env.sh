# Shared by scripts/demo and scripts/test: make .venv with the project installed.
# Usage: . scripts/env.sh; ensure_venv "EXTRAS"; ensure_debian_packages PKG...
# Works on a fresh Debian with Python 3.11 (installs python3-venv / mosquitto via apt as root).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

_as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

_apt_updated=""
ensure_debian_packages() {
    # ensure_debian_packages CMD:PKG ... : install PKG when CMD is not found
    local missing=() spec cmd pkg
    for spec in "$@"; do
        cmd=${spec%%:*}; pkg=${spec#*:}
        if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then missing+=("$pkg"); fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo ">> installing Debian packages: ${missing[*]}"
    if [ -z "$_apt_updated" ]; then _as_root apt-get update -qq; _apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive _as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the mosquitto service on install; our tests and demo start their own.
    if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null; then
        _as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
    fi
}

pick_python() {
    local c
    for c in "${PYTHON:-}" python3.11 python3 python; do
        [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 || continue
        if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
            echo "$c"; return 0
        fi
    done
    echo "edge-agent needs Python >= 3.11" >&2; return 1
}

ensure_venv() {
    local extras=$1 py stamp
    if [ ! -x "$VENV/bin/python" ]; then
        py=$(pick_python)
        if ! "$py" -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            ensure_debian_packages "nonexistent-cmd-edge-agent:python3-venv"
            "$py" -m venv "$VENV"
        fi
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    # reinstall only when pyproject.toml or the extras changed
    stamp="$VENV/.edge-agent-installed"
    local want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) $extras"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo ">> installing edge-agent[$extras] into .venv"
        "$VENV/bin/python" -m pip install -q -e "$ROOT[$extras]"
        echo "$want" > "$stamp"
    fi
}
