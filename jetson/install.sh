#!/usr/bin/env bash
# Install edge-agent as a systemd service on a Jetson (JetPack 6.x; 5.1 works
# where Python >= 3.10 is available) or any Debian/Ubuntu machine.
#
#   sudo jetson/install.sh               # install or upgrade, enable and (re)start
#   jetson/install.sh --dry-run          # print every step, change nothing
#
# Idempotent: run it again to upgrade. It never overwrites an existing
# /etc/edge-agent/config.toml or edge-agent.env. See jetson/README.md.
set -euo pipefail

SERVICE_USER=edge-agent
PREFIX=/opt/edge-agent
CONFIG_DIR=/etc/edge-agent
STATE_DIR=/var/lib/edge-agent
WATCH_DIR=/srv/edge-agent/incoming
UNIT_PATH=/etc/systemd/system/edge-agent.service
SYSCTL_PATH=/etc/sysctl.d/60-edge-agent-inotify.conf
INOTIFY_WATCHES=524288
INOTIFY_INSTANCES=512
PYTHON=python3
EXTRAS=jetson
WHEELHOUSE=""
START=1
DRY_RUN=0
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<EOF
Usage: $0 [options]
  --dry-run          print what would be done; change nothing (no root needed)
  --source DIR       project to install (default: $SOURCE)
  --prefix DIR       install prefix; the venv goes to DIR/venv (default: $PREFIX)
  --watch DIR        watch folder for exports and the C-STORE receiver (default: $WATCH_DIR)
  --python EXE       Python >= 3.10 to build the venv from (default: $PYTHON)
  --wheelhouse DIR   install offline from wheels in DIR (pip --no-index --find-links)
  --extras LIST      pip extras (default: $EXTRAS; use "" off a Jetson)
  --no-start         install and enable, but do not (re)start the service
  -h, --help         this help
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --source) SOURCE="$(cd "${2:?--source needs a folder}" && pwd)"; shift ;;
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift ;;
        --watch) WATCH_DIR="${2:?--watch needs a folder}"; shift ;;
        --python) PYTHON="${2:?--python needs an executable}"; shift ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a folder}"; shift ;;
        --extras) EXTRAS="${2?--extras needs a value}"; shift ;;
        --no-start) START=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1'; see --help." >&2; exit 2 ;;
    esac
    shift
done

VENV="$PREFIX/venv"
WATCH_ROOT="$(dirname "$WATCH_DIR")"

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# Every change goes through run (or write_file): printed in --dry-run, done otherwise.
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

# write_file PATH MODE OWNER:GROUP < content
write_file() {
    local path=$1 mode=$2 owner=$3 tmp
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+ write %s (mode %s, %s):\n' "$path" "$mode" "$owner"
        sed 's/^/|   /'
        return
    fi
    tmp="$(mktemp "$(dirname "$path")/.edge-agent.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
}

preflight() {
    if [[ $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
        die "run as root (sudo $0), or add --dry-run to see what it would do."
    fi
    [[ -f "$SOURCE/pyproject.toml" ]] || die "no pyproject.toml in $SOURCE; pass --source with the edge-agent project folder."
    [[ -f "$SOURCE/jetson/edge-agent.service" ]] || die "jetson/edge-agent.service is missing from $SOURCE; use a complete checkout."
    command -v systemctl >/dev/null || [[ $DRY_RUN -eq 1 ]] || die "systemctl not found; this installer needs systemd."
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.10 or newer (JetPack 6 ships 3.10)."
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "$PYTHON is older than 3.10; pass --python with a newer one."
    if [[ -r /etc/nv_tegra_release ]]; then
        say "Jetson: $(head -n1 /etc/nv_tegra_release | tr -s ' ' | cut -c1-60)"
    else
        say "not a Jetson (no /etc/nv_tegra_release): TensorRT/pycuda are optional, ONNX Runtime will run on the CPU"
    fi
}

apt_prerequisites() {
    command -v apt-get >/dev/null || return 0
    local missing=() pkg
    for pkg in python3-venv python3-dev python3-pip build-essential; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "installing build prerequisites: ${missing[*]}"
        run apt-get update
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

create_user() {
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "system user $SERVICE_USER exists"
    else
        say "creating system user $SERVICE_USER"
        run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "edge-agent service" "$SERVICE_USER"
    fi
    local group
    for group in video render; do  # GPU device nodes on Jetson
        if getent group "$group" >/dev/null; then
            run usermod -a -G "$group" "$SERVICE_USER"
        fi
    done
}

create_folders() {
    say "folders: $CONFIG_DIR, $STATE_DIR, $WATCH_DIR"
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
    run install -d -m 0755 -o root -g root "$WATCH_ROOT"
    # group-writable so an export share or a local copy job in group edge-agent can write
    run install -d -m 2770 -o "$SERVICE_USER" -g "$SERVICE_USER" "$WATCH_DIR"
    run install -d -m 0755 "$PREFIX" "$PREFIX/share"
}

install_venv() {
    # --system-site-packages: JetPack's TensorRT (python3-libnvinfer) lives in
    # the system dist-packages and must be importable from the venv.
    if [[ -x "$VENV/bin/python" ]]; then
        say "virtual environment $VENV exists; upgrading the package"
    else
        say "creating virtual environment $VENV (--system-site-packages)"
        run "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
    local spec="$SOURCE"
    [[ -n "$EXTRAS" ]] && spec="$SOURCE[$EXTRAS]"
    local pip_args=(install --upgrade)
    if [[ -n "$WHEELHOUSE" ]]; then
        pip_args+=(--no-index --find-links "$WHEELHOUSE")
    else
        run "$VENV/bin/python" -m pip install --upgrade pip
    fi
    # pycuda (the jetson extra) compiles against CUDA: nvcc must be on PATH.
    run env PATH="/usr/local/cuda/bin:$PATH" CUDA_ROOT=/usr/local/cuda \
        "$VENV/bin/python" -m pip "${pip_args[@]}" "$spec"
    if [[ $DRY_RUN -eq 0 ]]; then
        if "$VENV/bin/python" -c 'import tensorrt' 2>/dev/null; then
            say "TensorRT $("$VENV/bin/python" -c 'import tensorrt; print(tensorrt.__version__)') is visible in the venv"
        else
            say "WARNING: TensorRT is not importable from $VENV; on a Jetson install JetPack's python3-libnvinfer" \
                "(apt install nvidia-jetpack); until then inference runs on ONNX Runtime"
        fi
    fi
    run install -m 0644 "$SOURCE/jetson/README.md" "$PREFIX/share/README.md"
}

install_config() {
    run install -m 0640 -o root -g "$SERVICE_USER" "$SOURCE/jetson/config.example.toml" "$CONFIG_DIR/config.example.toml"
    if [[ -e "$CONFIG_DIR/config.toml" ]]; then
        say "keeping existing $CONFIG_DIR/config.toml (compare with config.example.toml after upgrades)"
    else
        say "writing $CONFIG_DIR/config.toml from config.example.toml: edit agent.site, agent.device and mqtt.broker"
        sed "s|^watch = \"/srv/edge-agent/incoming\"|watch = \"$WATCH_DIR\"|" "$SOURCE/jetson/config.example.toml" \
            | write_file "$CONFIG_DIR/config.toml" 0640 "root:$SERVICE_USER"
    fi
    if [[ ! -e "$CONFIG_DIR/edge-agent.env" ]]; then
        write_file "$CONFIG_DIR/edge-agent.env" 0600 root:root <<'EOF'
# Environment for edge-agent.service (read by systemd as root; mode 0600).
# Secrets go here, never into config.toml or on a command line.
# EDGE_AGENT_MQTT_PASSWORD=
# EDGE_AGENT_MQTT_USERNAME=
EOF
    fi
}

raise_inotify_limits() {
    local watches instances
    watches=$(cat /proc/sys/fs/inotify/max_user_watches 2>/dev/null || echo 0)
    instances=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
    # Never lower a limit someone already raised further.
    (( watches > INOTIFY_WATCHES )) && INOTIFY_WATCHES=$watches
    (( instances > INOTIFY_INSTANCES )) && INOTIFY_INSTANCES=$instances
    say "inotify limits: max_user_watches=$INOTIFY_WATCHES max_user_instances=$INOTIFY_INSTANCES ($SYSCTL_PATH)"
    write_file "$SYSCTL_PATH" 0644 root:root <<EOF
# edge-agent watches the scanner's export folder recursively (one watch per
# folder; a study/series tree per exam). Written by edge-agent's install.sh.
fs.inotify.max_user_watches = $INOTIFY_WATCHES
fs.inotify.max_user_instances = $INOTIFY_INSTANCES
EOF
    run sysctl -q -p "$SYSCTL_PATH"
}

install_unit() {
    say "systemd unit $UNIT_PATH"
    sed -e "s|/opt/edge-agent|$PREFIX|g" \
        -e "s|ReadWritePaths=/var/lib/edge-agent /srv/edge-agent|ReadWritePaths=$STATE_DIR $WATCH_ROOT|" \
        "$SOURCE/jetson/edge-agent.service" | write_file "$UNIT_PATH" 0644 root:root
    run systemctl daemon-reload
}

check_and_start() {
    say "checking the configuration as $SERVICE_USER"
    if [[ $DRY_RUN -eq 1 ]]; then
        run runuser -u "$SERVICE_USER" -- "$VENV/bin/edge-agent" run --config "$CONFIG_DIR/config.toml" --check
    elif ! runuser -u "$SERVICE_USER" -- "$VENV/bin/edge-agent" run --config "$CONFIG_DIR/config.toml" --check; then
        run systemctl enable edge-agent.service
        die "the configuration check failed (message above); fix $CONFIG_DIR/config.toml, then: sudo systemctl restart edge-agent"
    fi
    run systemctl enable edge-agent.service
    if [[ $START -eq 0 ]]; then
        say "enabled; start it with: sudo systemctl start edge-agent"
    elif [[ $DRY_RUN -eq 0 ]] && systemctl is-active --quiet edge-agent.service; then
        say "restarting the running service with the new version"
        run systemctl restart edge-agent.service
    else
        run systemctl start edge-agent.service
    fi
}

main() {
    [[ $DRY_RUN -eq 1 ]] && say "dry run: nothing will be changed"
    preflight
    apt_prerequisites
    create_user
    create_folders
    install_venv
    install_config
    raise_inotify_limits
    install_unit
    check_and_start
    say "done. Status: systemctl status edge-agent; logs: journalctl -u edge-agent -f;" \
        "health: curl -s http://127.0.0.1:9108/healthz; checks: $VENV/bin/edge-agent doctor"
}

main
