# Shared by scripts/install and scripts/test: Debian packages and the Docker engine.
# shellcheck shell=bash

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Free space where the build (target/) and Docker's images live: a fresh CI run used
# 2-4 GB of target/, 8 GB of images and 1 GB of agent CLIs, and "No space left on
# device" halfway through a run says less than this line.
disk_report() {
  local docker_root=/var/lib/docker build=${CARGO_TARGET_DIR:-$PWD}
  [ -d "$docker_root" ] || docker_root=/
  [ -d "$build" ] || build=$PWD
  say "disk: $(df -h --output=avail "$build" | tail -1 | tr -d ' ') free for the build, $(df -h --output=avail "$docker_root" | tail -1 | tr -d ' ') for Docker"
  local kib
  kib=$(df --output=avail "$docker_root" | tail -1)
  if [ "$kib" -lt $((12 * 1024 * 1024)) ]; then
    echo "scripts/test: less than 12 GB free for Docker's images; the end-to-end tests build about 8 GB of them and may fail with 'No space left on device'" >&2
  fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Install the Debian packages that are missing (one apt-get for all of them).
need_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Start dockerd when the socket does not answer; remember that we did, so it can be stopped.
STARTED_DOCKERD=
ensure_docker() {
  if docker_answers; then return 0; fi
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    as_root systemctl start docker && docker_answers && return 0
  fi
  say "starting dockerd"
  as_root sh -c 'nohup dockerd >/var/log/moat-dockerd.log 2>&1 & echo $! >/run/moat-dockerd.pid'
  STARTED_DOCKERD=1
  for _ in $(seq 1 60); do
    docker_answers && return 0
    sleep 0.5
  done
  echo "dockerd did not start; see /var/log/moat-dockerd.log" >&2
  return 1
}

docker_answers() {
  [ -S /var/run/docker.sock ] && curl -sf --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1
}

stop_docker_if_started() {
  if [ -n "$STARTED_DOCKERD" ] && [ -f /run/moat-dockerd.pid ]; then
    say "stopping the dockerd this script started"
    as_root sh -c 'kill "$(cat /run/moat-dockerd.pid)" 2>/dev/null; rm -f /run/moat-dockerd.pid'
  fi
}

# A Rust toolchain new enough for edition 2024.
ensure_rust() {
  if command -v cargo >/dev/null && cargo --version | awk '{split($2,v,"."); exit !(v[1]>1 || v[2]>=89)}'; then
    return 0
  fi
  say "installing Rust with rustup (cargo >= 1.89 is needed)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
}

# Install PyPI packages whose module does not import: need_python_modules MODULE:SPEC...
need_python_modules() {
  local missing=()
  for pair in "$@"; do
    python3 -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${missing[@]}"
}
