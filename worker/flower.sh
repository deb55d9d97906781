#!/bin/sh
# Flower (the `monitoring` profile): Celery's web console, behind Nginx at /flower/,
# with basic auth from .env. Refuses to start without a real password.
set -o errexit -o nounset
case "${FLOWER_PASSWORD:-}" in
  ""|change-me) echo "taskbeam: set FLOWER_PASSWORD in .env (make env writes one)" >&2; exit 2 ;;
esac
exec celery --app taskbeam.worker flower --port=5555 --url_prefix=flower \
  --basic_auth="${FLOWER_USER:-admin}:${FLOWER_PASSWORD}"
