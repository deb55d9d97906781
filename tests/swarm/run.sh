#!/usr/bin/env bash
# The multi-node Swarm test (`make swarm-test`, and a pass of tests/run.sh): a swarm of
# two Docker engines, each running in a container on this host's engine (the host's
# own engine never joins a swarm), deploys deploy/swarm/stack.yml and runs
# tests/integration/test_swarm.py against it through Nginx. The deploy is
# `make swarm-up`'s own (deploy/swarm/up.sh, with the host's client talking to the
# manager's engine through its socket). Everything it creates
# (node containers, their volumes, the network, the shared export directory) is
# removed at the end, also when a step fails.
#   node1: manager, labelled taskbeam.redis and taskbeam.edge (Redis, Nginx), web, worker
#   node2: worker node: web, worker
# The node image is built by .ci/provision.sh (.ci/standins/swarm-node.Dockerfile).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)

venv=${TASKBEAM_TEST_VENV:-.venv}
prefix=${TEST_PROJECT:-taskbeam-test}-swarm
port=${TEST_SWARM_HTTP_PORT:-$(( ${TEST_HTTP_PORT:-18080} + 1 ))}
tag=${TEST_IMAGE_TAG:-test}
node_image=${SWARM_NODE_IMAGE:-taskbeam-standin/swarm-node:bookworm}
# Base images: the environment's, else the user's .env (a mirror or offline stand-ins).
for name in PYTHON_IMAGE REDIS_IMAGE NGINX_IMAGE; do
  if [ -z "${!name:-}" ] && [ -f .env ]; then
    value=$(sed -n "s/^$name=//p" .env | tail -n1)
    [ -z "$value" ] || export "$name=$value"
  fi
done
redis_image=${REDIS_IMAGE:-redis:7-alpine}
stack=taskbeam
nodes=(node1 node2)
work=$(mktemp -d)
# The exports "shared storage": one host directory bound into both nodes at the path
# the stack's exports volume binds (stands for an NFS mount on real servers).
# TEST_SWARM_SHARED_EXPORTS=0 gives each node a directory of its own (to see it fail).
exports=$work/exports

log() { printf '[swarm] %s\n' "$*" >&2; }
on() { local node=$1; shift; docker exec -i "$prefix-$node" "$@"; }

cleanup() {
  local status=$?
  if [ "$status" != 0 ]; then
    mkdir -p tests/artifacts
    { for s in redis web worker nginx; do
        echo "=== $s"; on node1 docker service ps --no-trunc "${stack}_$s"
        on node1 docker service logs --timestamps --tail 300 "${stack}_$s"
      done; } > tests/artifacts/swarm.log 2>&1 || true
    log "swarm logs saved to tests/artifacts/swarm.log"
  fi
  if [ "${TEST_SWARM_KEEP:-0}" = 1 ]; then  # to look around; remove by hand afterwards
    log "took $(( $(date +%s) - started ))s; kept: containers $prefix-node1/2, volumes $prefix-node1/2-docker, network $prefix, $work"
    exit "$status"
  fi
  for node in "${nodes[@]}"; do
    docker rm -f -v "$prefix-$node" >/dev/null 2>&1 || true
    docker volume rm "$prefix-$node-docker" >/dev/null 2>&1 || true
  done
  docker network rm "$prefix" >/dev/null 2>&1 || true
  rm -rf "$work"
  log "took $(( $(date +%s) - started ))s"
  exit "$status"
}
trap cleanup EXIT INT TERM

docker image inspect "$node_image" >/dev/null 2>&1 \
  || { log "no $node_image: run bash .ci/provision.sh"; exit 2; }

# The images the stack runs, built as tests/run.sh builds them (which passes
# TEST_SWARM_BUILD=0: it has just built them).
if [ "${TEST_SWARM_BUILD:-1}" != 0 ]; then
  log "building taskbeam-app:$tag and taskbeam-nginx:$tag"
  docker build -q --label org.taskbeam.project=taskbeam \
    --build-arg PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.12-slim}" --build-arg PIP_EXTRAS=postgres \
    -t "taskbeam-app:$tag" . >/dev/null
  docker build -q --label org.taskbeam.project=taskbeam -f nginx/Dockerfile \
    --build-arg NGINX_IMAGE="${NGINX_IMAGE:-nginx:1.27-alpine}" -t "taskbeam-nginx:$tag" . >/dev/null
fi

# Two engines in containers (flags: --privileged is refused here; SYS_PTRACE lets the
# inner engine exec into containers that run as another user: health checks).
docker network create "$prefix" >/dev/null
mkdir -p "$exports/node1" "$exports/node2"
chown 10001:10001 "$exports" "$exports/node1" "$exports/node2"
for node in "${nodes[@]}"; do
  shared=$exports
  [ "${TEST_SWARM_SHARED_EXPORTS:-1}" != 0 ] || shared=$exports/$node
  publish=()
  [ "$node" = node1 ] && publish=(-p "127.0.0.1:$port:8080")
  mkdir -p "$work/$node-run"
  docker run -d --name "$prefix-$node" --hostname "$node" --network "$prefix" \
    --label "org.taskbeam.swarm-test=$prefix" "${publish[@]}" \
    --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add SYS_PTRACE \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw -v "$prefix-$node-docker:/var/lib/docker" \
    -v "$shared:/srv/taskbeam/exports" -v "$work/$node-run:/run/taskbeam-node" \
    "$node_image" dockerd -H unix:///var/run/docker.sock -H unix:///run/taskbeam-node/docker.sock \
    >/dev/null
done
for node in "${nodes[@]}"; do
  for _ in $(seq 1 60); do on "$node" docker info >/dev/null 2>&1 && break; sleep 1; done
  on "$node" docker info >/dev/null
done

log "swarm: init on node1, join node2"
addr=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$prefix\").IPAddress}}" "$prefix-node1")
on node1 docker swarm init --advertise-addr "$addr" >/dev/null
token=$(on node1 docker swarm join-token -q worker)
on node2 docker swarm join --token "$token" "$addr:2377" >/dev/null

# No registry: each node gets the images by docker save | docker load.
log "loading images into both nodes"
pids=()
for node in "${nodes[@]}"; do
  docker save "taskbeam-app:$tag" "taskbeam-nginx:$tag" "$redis_image" | on "$node" docker load -q >/dev/null &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

# A settings file as `make env` writes .env (fresh secrets), plus the test settings of
# tests/run.sh that matter here (later lines win). 2 workers × 6: the ten tasks of a
# chaos run all run at once (3 × 4 under Compose).
secret() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
{ cat .env.example
  cat <<SETTINGS
SECRET_KEY=$(secret 32)
REDIS_PASSWORD=$(secret 24)
REDIS_WEB_PASSWORD=$(secret 24)
REDIS_WORKER_PASSWORD=$(secret 24)
IMAGE_TAG=$tag
REDIS_IMAGE=$redis_image
HTTP_PORT=8080
WEB_REPLICAS=2
WORKER_REPLICAS=2
WORKER_CONCURRENCY=6
DEMO_ROWS=20000
EXPORT_TTL=60
TASK_MAX_REDELIVERIES=1
TASK_TIME_LIMIT_S=60
MAX_ACTIVE_TASKS=50
RATE_LIMIT_PER_IP_PER_MINUTE=100000
CREATES_PER_MINUTE_PER_IP=600
CREATE_BURST_PER_IP=100
EVENT_READS_PER_SECOND_PER_IP=50
EVENT_READS_BURST_PER_IP=200
WS_CONNECTIONS_PER_IP=300
SETTINGS
} > "$work/swarm.env"
log "make swarm-up (deploy/swarm/up.sh) against node1"
DOCKER_HOST="unix://$work/node1-run/docker.sock" ENV_FILE="$work/swarm.env" SWARM_BUILD=0 \
  STACK=$stack deploy/swarm/up.sh >&2

# Up: every service at its replica count with healthy tasks, Nginx ready, and a
# worker on each node (the test checks both nodes run tasks).
converged() {
  local line
  line=$(on node1 docker service ls --format '{{.Replicas}}' --filter "label=com.docker.stack.namespace=$stack") || return 1
  [ "$(wc -l <<<"$line")" = 4 ] || return 1
  ! grep -v -E '^([0-9]+)/\1( |$)' <<<"$line" >/dev/null || return 1
  for node in "${nodes[@]}"; do
    [ -n "$(on "$node" docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_worker" --filter health=healthy)" ] || return 1
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ]
}
for _ in $(seq 1 120); do converged && break; sleep 2; done
converged || { log "the stack did not converge in 240 s"; exit 1; }
log "stack up after $(( $(date +%s) - started ))s"

SWARM_MANAGER="$prefix-node1" SWARM_NODES="${nodes[*]/#/$prefix-}" SWARM_STACK=$stack \
  SWARM_ENV_FILE="$work/swarm.env" TASKBEAM_URL="http://127.0.0.1:$port" \
  "$venv/bin/pytest" -q tests/integration/test_swarm.py ${PYTEST_ARGS:-} \
  || [ $? = 5 ]  # 5: PYTEST_ARGS selected none of these
