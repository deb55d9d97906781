#!/bin/sh
# Flower (the `monitoring` profile): Celery's web console, behind Nginx at /flower/,
# with basic auth from .env. Refuses to start without a real password.
set -o errexit -o nounset
case "${FLOWER_PASSWORD:-}" in
  ""|change-me) echo "taskbeam: set FLOWER_PASSWORD in .env (make env writes one)" >&2; exit 2 ;;
  *,*) echo "taskbeam: FLOWER_PASSWORD may not contain a comma (Flower splits on it)" >&2; exit 2 ;;
esac
# Flower reads its options from FLOWER_* variables too: the password goes there,
# not on the command line, which any process in the container can read (ps).
export FLOWER_BASIC_AUTH="${FLOWER_USER:-admin}:${FLOWER_PASSWORD}"
unset FLOWER_PASSWORD
exec celery --app taskbeam.worker flower --port=5555 --url_prefix=flower
