#!/usr/bin/env bash
# `make swarm-up`: deploy deploy/swarm/stack.yml to the swarm this engine manages.
#   1. images: built from this checkout (docker compose build); with IMAGE_REPO set
#      (e.g. registry.example.com/) tagged and pushed there, so every node can pull them
#   2. secrets: taskbeam_secret_key and taskbeam_redis_{,web_,worker_}password from
#      .env, once (a Docker secret cannot change; to rotate, create new names and
#      point SECRET_KEY_SECRET / REDIS_PASSWORD_SECRET / ... at them)
#   3. node labels: this node gets taskbeam.redis and taskbeam.edge unless some node has them
#   4. docker stack deploy, with the settings of .env (stack deploy reads no .env itself)
# ENV_FILE names another settings file; SWARM_BUILD=0 skips step 1 (the images are on
# every node already: tests/swarm/run.sh loads them by docker save | docker load).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/../.."
stack=${STACK:-taskbeam}

[ "$(docker info -f '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] || {
  echo "Not a Swarm manager: run \`docker swarm init\` here (and join the other servers) first." >&2
  exit 2
}
env_file=${ENV_FILE:-.env}
[ -f "$env_file" ] || { echo "No $env_file: run \`make env\` first." >&2; exit 2; }
set -a
. "$env_file"
set +a

tag=${IMAGE_TAG:-latest}
if [ "${SWARM_BUILD:-1}" != 0 ]; then
  docker compose --env-file "$env_file" build web nginx
  for image in taskbeam-app taskbeam-nginx; do
    [ -z "${IMAGE_REPO:-}" ] || { docker tag "$image:$tag" "$IMAGE_REPO$image:$tag" &&
                                  docker push "$IMAGE_REPO$image:$tag"; }
  done
fi
# Without a registry the images are each node's own: no digest to look up.
resolve=never
if [ -n "${IMAGE_REPO:-}" ]; then
  resolve=always
elif [ "$(docker node ls -q | wc -l)" != 1 ]; then
  echo "Warning: IMAGE_REPO is empty; the other nodes need the images loaded by hand." >&2
fi

secret() {  # name value
  docker secret inspect "$1" >/dev/null 2>&1 || printf '%s' "$2" | docker secret create "$1" - >/dev/null
}
secret "${SECRET_KEY_SECRET:-taskbeam_secret_key}" "$SECRET_KEY"
secret "${REDIS_PASSWORD_SECRET:-taskbeam_redis_password}" "$REDIS_PASSWORD"
secret "${REDIS_WEB_PASSWORD_SECRET:-taskbeam_redis_web_password}" \
  "${REDIS_WEB_PASSWORD:?set REDIS_WEB_PASSWORD in $env_file (make env writes one)}"
secret "${REDIS_WORKER_PASSWORD_SECRET:-taskbeam_redis_worker_password}" \
  "${REDIS_WORKER_PASSWORD:?set REDIS_WORKER_PASSWORD in $env_file (make env writes one)}"

self=$(docker info -f '{{.Swarm.NodeID}}')
for label in taskbeam.redis taskbeam.edge; do
  if ! docker node ls -q | xargs docker node inspect -f '{{index .Spec.Labels "'"$label"'"}}' | grep -q true; then
    docker node update --label-add "$label=true" "$self" >/dev/null
    echo "Labelled this node $label=true"
  fi
done

docker stack deploy --with-registry-auth --resolve-image "$resolve" \
  -c deploy/swarm/stack.yml "$stack"
echo "Deployed stack $stack; Nginx listens on port ${HTTP_PORT:-8080} of the taskbeam.edge nodes."
