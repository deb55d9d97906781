#!/bin/sh
# Healthy while the worker's consumer keeps touching its alive file (AliveFile in
# taskbeam/housekeeping.py): it stops when the broker connection or the event loop does.
file=/tmp/taskbeam-worker-alive
[ -f "$file" ] && [ $(( $(date +%s) - $(stat -c %Y "$file") )) -lt 10 ]
