#!/usr/bin/env bash
# `make swarm-up`: deploy deploy/swarm/stack.yml to the swarm this engine manages.
#   1. images: built from this checkout (docker compose build); with IMAGE_REPO set
#      (e.g. registry.example.com/) tagged and pushed there, so every node can pull them
#   2. secrets: taskbeam_secret_key and taskbeam_redis_password from .env, once
#      (a Docker secret cannot change; to rotate, create new names and point
#      SECRET_KEY_SECRET / REDIS_PASSWORD_SECRET at them)
#   3. node labels: this node gets taskbeam.redis and taskbeam.edge unless some node has them
#   4. docker stack deploy, with the settings of .env (stack deploy reads no .env itself)
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/../.."
stack=${STACK:-taskbeam}

[ "$(docker info -f '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] || {
  echo "Not a Swarm manager: run \`docker swarm init\` here (and join the other servers) first." >&2
  exit 2
}
set -a
. ./.env
set +a

tag=${IMAGE_TAG:-latest}
docker compose build web nginx
if [ -n "${IMAGE_REPO:-}" ]; then
  for image in taskbeam-app taskbeam-nginx; do
    docker tag "$image:$tag" "$IMAGE_REPO$image:$tag"
    docker push "$IMAGE_REPO$image:$tag"
  done
elif [ "$(docker node ls -q | wc -l)" -gt 1 ]; then
  echo "Warning: IMAGE_REPO is empty; nodes other than this one need the images loaded by hand." >&2
fi

secret() {  # name value
  docker secret inspect "$1" >/dev/null 2>&1 || printf '%s' "$2" | docker secret create "$1" - >/dev/null
}
secret "${SECRET_KEY_SECRET:-taskbeam_secret_key}" "$SECRET_KEY"
secret "${REDIS_PASSWORD_SECRET:-taskbeam_redis_password}" "$REDIS_PASSWORD"

self=$(docker info -f '{{.Swarm.NodeID}}')
for label in taskbeam.redis taskbeam.edge; do
  if ! docker node ls -q | xargs docker node inspect -f '{{index .Spec.Labels "'"$label"'"}}' | grep -q true; then
    docker node update --label-add "$label=true" "$self" >/dev/null
    echo "Labelled this node $label=true"
  fi
done

docker stack deploy --with-registry-auth -c deploy/swarm/stack.yml "$stack"
echo "Deployed stack $stack; Nginx listens on port ${HTTP_PORT:-8080} of the taskbeam.edge nodes."
