#!/bin/sh
# Worker role: check the settings, then hand the process to Celery so it gets signals.
set -o errexit -o nounset
python -m taskbeam.config worker
# The demo dataset, built once on the shared volume (the first worker builds it,
# the others wait for it). Set DEMO_DATA=0 when DATABASE_URL is your own database.
if [ "${DEMO_DATA:-1}" = 1 ]; then
  python -m taskbeam.demo_data /data/demo/orders.sqlite3
fi
exec celery --app taskbeam.worker worker \
  --loglevel "${WORKER_LOG_LEVEL:-INFO}" \
  --concurrency "${WORKER_CONCURRENCY:-4}" \
  --hostname "worker@%h" \
  --without-gossip
