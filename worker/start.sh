#!/bin/sh
# Worker role: check the settings, then hand the process to Celery so it gets signals.
set -o errexit -o nounset
python -m taskbeam.config worker
exec celery --app taskbeam.worker worker \
  --loglevel "${WORKER_LOG_LEVEL:-INFO}" \
  --concurrency "${WORKER_CONCURRENCY:-4}" \
  --hostname "worker@%h" \
  --without-gossip
