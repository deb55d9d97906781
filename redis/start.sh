#!/bin/sh
# Redis with one ACL user per role, made at start from the environment (each
# password NAME or, as Docker secrets come, a file NAME_FILE), then the
# server (extra arguments, e.g. redis/ha.yml's replication and TLS, are passed on):
#   default  REDIS_PASSWORD         operators, health checks, replication: everything
#   web      REDIS_WEB_PASSWORD     the deployment's keys (TASKBEAM_NAMESPACE:*) only
#   worker   REDIS_WORKER_PASSWORD  Celery's consumer (kombu names some keys unprefixed)
#   flower   REDIS_FLOWER_PASSWORD  as the worker: Flower is a Celery consumer too
#            (only if set: the Swarm stack runs no Flower)
#   sentinel REDIS_SENTINEL_PASSWORD (redis/ha.yml only) what a Sentinel sends a data
#            node: the command list of Redis's Sentinel docs
# None of them may run admin or dangerous commands (ACL, CONFIG, FLUSHALL, KEYS,
# DEBUG, SHUTDOWN, MONITOR, REPLICAOF, ...), INFO excepted. Only the passwords'
# SHA-256 appears on the command line (ps), as ACL's #<hash> form.
set -o errexit -o nounset
ns=${TASKBEAM_NAMESPACE:-taskbeam}
case "$ns" in
  ''|*[!A-Za-z0-9_.-]*) echo "taskbeam-redis: TASKBEAM_NAMESPACE must be letters, digits, _ . -" >&2
                        exit 2 ;;
esac
hash() {  # the SHA-256 of the variable named $1 (or of the file $1_FILE names, as
          # Docker secrets come), which must be set and not empty
  eval "value=\${$1:-} file=\${$1_FILE:-}"
  if [ -n "$file" ]; then
    [ -z "$value" ] || { echo "taskbeam-redis: set $1 or $1_FILE, not both" >&2; exit 2; }
    value=$(cat "$file") || exit 2
  fi
  [ -n "$value" ] || { echo "taskbeam-redis: set $1 in .env (make env writes one)" >&2; exit 2; }
  printf '%s' "$value" | sha256sum | cut -d' ' -f1
}
web=$(hash REDIS_WEB_PASSWORD)
worker=$(hash REDIS_WORKER_PASSWORD)
admin=$(hash REDIS_PASSWORD)
role="resetchannels &* nocommands +@all -@admin -@dangerous +info"
flower=""
if [ -n "${REDIS_FLOWER_PASSWORD:-}${REDIS_FLOWER_PASSWORD_FILE:-}" ]; then
  flower="--user flower on #$(hash REDIS_FLOWER_PASSWORD) ~* $role"
fi
sentinel=""
if [ -n "${REDIS_SENTINEL_PASSWORD:-}${REDIS_SENTINEL_PASSWORD_FILE:-}" ]; then
  sentinel="--user sentinel on #$(hash REDIS_SENTINEL_PASSWORD) resetchannels &* nocommands
    +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info
    +client|setname +client|kill +script|kill"
fi
set -o noglob  # $role, $flower, $sentinel: one argument per rule, none a file pattern
# shellcheck disable=SC2086
exec redis-server "${REDIS_CONF:-/usr/local/etc/redis/redis.conf}" \
  --user default on "#$admin" "~*" "&*" +@all \
  --user web on "#$web" "~$ns:*" $role \
  --user worker on "#$worker" "~*" $role \
  $flower \
  $sentinel \
  --maxmemory "${REDIS_MAXMEMORY:-512mb}" "$@"
