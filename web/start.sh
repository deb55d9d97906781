#!/bin/sh
# Web role: check the settings, then hand the process to Gunicorn so it gets signals.
set -o errexit -o nounset
python -m taskbeam.config web
exec gunicorn --config /app/web/gunicorn.conf.py 'taskbeam.web:create_app()'
