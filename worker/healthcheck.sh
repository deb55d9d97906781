#!/bin/sh
# Healthy when this container's own Celery node answers a ping over the broker.
exec celery --app taskbeam.worker inspect ping --destination "worker@$(hostname)" --timeout 5 >/dev/null
