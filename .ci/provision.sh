#!/usr/bin/env bash
# Provision a Debian 12 host for Taskbeam: Docker engine, Compose v2 and, when no
# container registry answers, local stand-ins for the base images.
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

# A redis-server binary for the unit tests that run the store's Lua against real
# Redis (each starts its own on a loopback port); Debian's own service is stopped.
install_redis_server() {
  if command -v redis-server >/dev/null; then return; fi
  log "installing redis-server"
  apt_install redis-server
  service redis-server stop >/dev/null 2>&1 || true
}

# promtool for the alert rules' unit tests (tests/unit/test_monitoring.py): Debian's
# prometheus package; the server it also installs is not left running here.
install_promtool() {
  if command -v promtool >/dev/null; then return; fi
  log "installing prometheus (promtool)"
  apt_install prometheus
  service prometheus stop >/dev/null 2>&1 || true
}

# Debian's Chromium for the browser tests (driven by Playwright, which must not
# download a browser of its own).
install_browser() {
  if [ -x /usr/bin/chromium ]; then return; fi
  log "installing chromium"
  apt_install chromium
}

# kubectl renders the Kubernetes overlays in tests/unit/test_kubernetes.py: any one
# on the host, else Debian's (1.20; its kustomize reads the overlays as written).
install_kubectl() {
  if command -v kubectl >/dev/null; then return; fi
  log "installing kubectl (kubernetes-client)"
  apt_install kubernetes-client
}

# The HTTPS tests (tests/integration/test_identity.py): certutil (libnss3-tools) trusts
# the local CA in the browser's NSS db; curl checks TLS versions and headers.
install_tls_tools() {
  if command -v certutil >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; then return; fi
  log "installing libnss3-tools and curl"
  apt_install libnss3-tools curl
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

# taskbeam-standin/debian:SUITE, a minimal debootstrapped Debian (built once).
debian_base() {
  local suite=$1
  docker image inspect "taskbeam-standin/debian:$suite" >/dev/null 2>&1 && return
  log "debootstrap a minimal Debian $suite base"
  local root=$state/rootfs-$suite
  rm -rf "$root"
  debootstrap --variant=minbase "$suite" "$root" "$(debian_mirror)" >"$state/debootstrap-$suite.log" 2>&1
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar --numeric-owner -C "$root" -c . |
    docker import --change 'CMD ["bash"]' - "taskbeam-standin/debian:$suite" >/dev/null
  rm -rf "$root"
}

# A build context of its own per caller ($1), so two builds never share a directory.
standin_context() {
  ctx=$state/standin-ctx-$1
  rm -rf "$ctx"; mkdir -p "$ctx/ca"
  cp "$here"/standins/*.Dockerfile "$here"/standins/*.sh "$ctx/"
  # Outbound TLS here may be re-signed by a local CA; only the stand-in trusts it.
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
}

# The newest Python Debian ships (trixie's python3) for .ci/unit-trixie.sh: the python
# stand-in Dockerfile on a trixie base, plus the redis-server the unit tests start.
build_python_trixie() {
  local tag=taskbeam-standin/python-unit:trixie
  docker image inspect "$tag" >/dev/null 2>&1 && return
  debian_base trixie
  standin_context trixie
  sed 's/^FROM taskbeam-standin\/debian:bookworm$/FROM taskbeam-standin\/debian:trixie/' \
    "$ctx/python.Dockerfile" >"$ctx/python-unit.Dockerfile"
  grep -q '^FROM taskbeam-standin/debian:trixie$' "$ctx/python-unit.Dockerfile" ||
    { log "python.Dockerfile no longer starts FROM the bookworm base"; exit 1; }
  cat >>"$ctx/python-unit.Dockerfile" <<'DOCKERFILE'
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/*
DOCKERFILE
  log "building stand-in $tag"
  DOCKER_BUILDKIT=0 docker build -q --label org.taskbeam.standin=1 \
    -f "$ctx/python-unit.Dockerfile" -t "$tag" "$ctx" >/dev/null
}

# Stand-ins are built only when the image is missing (each on its own, so a host
# provisioned before one was added builds just that one); a host that can pull the
# official images never needs them.
STANDINS="python:taskbeam-standin/python:3.12-slim redis:taskbeam-standin/redis:7
  nginx:taskbeam-standin/nginx:1.27 postgres:taskbeam-standin/postgres:15
  prometheus:taskbeam-standin/prometheus:2"
build_standins() {
  local item name tag
  for item in $STANDINS; do
    name=${item%%:*} tag=${item#*:}
    docker image inspect "$tag" >/dev/null 2>&1 && continue
    debian_base bookworm
    [ "${ctx:-}" = "$state/standin-ctx-bookworm" ] || standin_context bookworm
    log "building stand-in $tag"
    DOCKER_BUILDKIT=0 docker build -q --label org.taskbeam.standin=1 \
      -f "$ctx/$name.Dockerfile" -t "$tag" "$ctx" >/dev/null
  done
}

# The engine-in-a-container image the multi-node Swarm test runs its nodes on
# (tests/swarm/run.sh); needed with or without a registry.
SWARM_NODE_IMAGE=taskbeam-standin/swarm-node:bookworm
build_swarm_node() {
  docker image inspect "$SWARM_NODE_IMAGE" >/dev/null 2>&1 && return
  debian_base bookworm
  [ "${ctx:-}" = "$state/standin-ctx-bookworm" ] || standin_context bookworm
  log "building $SWARM_NODE_IMAGE"
  DOCKER_BUILDKIT=0 docker build -q --label org.taskbeam.standin=1 \
    -f "$ctx/swarm-node.Dockerfile" -t "$SWARM_NODE_IMAGE" "$ctx" >/dev/null
}

if [ "${1:-}" = python-trixie ]; then  # only the trixie python stand-in (engine running)
  build_python_trixie
  exit 0
fi

install_engine
install_redis_server
install_promtool
install_browser
install_kubectl
install_tls_tools
install_compose_v2
start_engine
if [ "${TASKBEAM_STANDINS:-auto}" = always ] || ! timeout 20 docker pull -q redis:7-alpine >/dev/null 2>&1; then
  build_standins
  cat >"$state/images.env" <<ENV
PYTHON_IMAGE=taskbeam-standin/python:3.12-slim
REDIS_IMAGE=taskbeam-standin/redis:7
NGINX_IMAGE=taskbeam-standin/nginx:1.27
POSTGRES_IMAGE=taskbeam-standin/postgres:15
PROMETHEUS_IMAGE=taskbeam-standin/prometheus:2
ENV
else
  : >"$state/images.env"
fi
build_swarm_node
log "ready: $(docker compose version)"
