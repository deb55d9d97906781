#!/usr/bin/env bash
# Provision a Debian 12 host for Taskbeam: Docker engine, Compose v2 and, when no
# container registry answers, local stand-ins for the three base images.
# Idempotent; safe to run again. Writes the dockerd PID to $DOCKERD_PIDFILE when it
# starts one, so the caller can stop only the engine it started.
set -o errexit -o nounset -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
state=${PROVISION_STATE:-/var/cache/taskbeam-provision}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-$state/dockerd.pid}
mkdir -p "$state"

log() { printf '[provision] %s\n' "$*" >&2; }

# The Debian mirror this host already uses; the same mirror serves trixie and debootstrap.
debian_mirror() {
  local uri
  uri=$(grep -h -m1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -h -m1 -E '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1 || true)
  [ -n "$uri" ] || { log "no Debian mirror found in /etc/apt"; exit 1; }
  printf '%s\n' "$uri"
}

apt_updated=0
apt_install() {
  [ "$apt_updated" = 1 ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install_engine() {
  if command -v dockerd >/dev/null && command -v debootstrap >/dev/null; then return; fi
  log "installing docker.io and debootstrap"
  apt_install docker.io debootstrap
}

# Debian's Chromium for the browser tests (driven by Playwright, which must not
# download a browser of its own).
install_browser() {
  if [ -x /usr/bin/chromium ]; then return; fi
  log "installing chromium"
  apt_install chromium
}

# Debian 12 ships only Compose v1; trixie's docker-compose (v2) is a static Go plugin.
# Fetched with a private apt state so nothing is added to /etc/apt.
install_compose_v2() {
  if docker compose version >/dev/null 2>&1; then return; fi
  log "installing Compose v2 from Debian trixie"
  local dir=$state/trixie-apt
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
  printf 'deb %s trixie main\n' "$(debian_mirror)" >"$dir/sources.list"
  local opts=(-o Dir::Etc::sourcelist="$dir/sources.list" -o Dir::Etc::sourceparts=-
              -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache"
              -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq
  (cd "$dir" && apt-get "${opts[@]}" download docker-compose)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$dir"/docker-compose_*.deb >/dev/null
}

start_engine() {
  if docker info >/dev/null 2>&1; then return; fi
  log "starting dockerd"
  nohup dockerd >"$state/dockerd.log" 2>&1 &
  echo $! >"$DOCKERD_PIDFILE"
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return
    sleep 1
  done
  log "dockerd did not come up; see $state/dockerd.log"; exit 1
}

# Stand-ins are built only when the image is missing; a host that can pull the
# official images never needs them.
build_standins() {
  local missing=0
  for img in taskbeam-standin/python:3.12-slim taskbeam-standin/redis:7 taskbeam-standin/nginx:1.27; do
    docker image inspect "$img" >/dev/null 2>&1 || missing=1
  done
  [ "$missing" = 1 ] || return 0
  if ! docker image inspect taskbeam-standin/debian:bookworm >/dev/null 2>&1; then
    log "debootstrap a minimal Debian base"
    local root=$state/rootfs
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >"$state/debootstrap.log" 2>&1
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar --numeric-owner -C "$root" -c . |
      docker import --change 'CMD ["bash"]' - taskbeam-standin/debian:bookworm >/dev/null
    rm -rf "$root"
  fi
  local ctx=$state/standin-ctx
  rm -rf "$ctx"; mkdir -p "$ctx/ca"
  cp "$here"/standins/*.Dockerfile "$ctx/"
  # Outbound TLS here may be re-signed by a local CA; only the stand-in trusts it.
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  for name in python redis nginx; do
    local tag
    case $name in
      python) tag=taskbeam-standin/python:3.12-slim ;;
      redis)  tag=taskbeam-standin/redis:7 ;;
      nginx)  tag=taskbeam-standin/nginx:1.27 ;;
    esac
    log "building stand-in $tag"
    DOCKER_BUILDKIT=0 docker build -q --label org.taskbeam.standin=1 \
      -f "$ctx/$name.Dockerfile" -t "$tag" "$ctx" >/dev/null
  done
}

install_engine
install_browser
install_compose_v2
start_engine
if [ "${TASKBEAM_STANDINS:-auto}" = always ] || ! timeout 20 docker pull -q redis:7-alpine >/dev/null 2>&1; then
  build_standins
  cat >"$state/images.env" <<ENV
PYTHON_IMAGE=taskbeam-standin/python:3.12-slim
REDIS_IMAGE=taskbeam-standin/redis:7
NGINX_IMAGE=taskbeam-standin/nginx:1.27
ENV
else
  : >"$state/images.env"
fi
log "ready: $(docker compose version)"
