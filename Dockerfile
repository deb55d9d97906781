# One image, two roles: `web` (Gunicorn + gevent) and `worker` (Celery), chosen
# by the compose `command`. PYTHON_IMAGE can point at a mirror or a local stand-in.
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}
# Optional extras from pyproject.toml, e.g. PIP_EXTRAS=postgres for PostgreSQL exports.
ARG PIP_EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app
# Dependencies first, from the pinned list in pyproject.toml, so code edits
# rebuild in seconds.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY taskbeam ./taskbeam
RUN pip install --no-deps . \
 && if [ -n "$PIP_EXTRAS" ]; then pip install ".[$PIP_EXTRAS]"; fi \
 && groupadd --system --gid 10001 taskbeam \
 && useradd --system --uid 10001 --gid taskbeam --home-dir /app --shell /usr/sbin/nologin taskbeam \
 && mkdir -p /data/exports /data/demo \
 && chown taskbeam:taskbeam /data/exports /data/demo
# The team's own job kinds (JOBS_MODULES=jobs): /app is on the import path.
COPY jobs ./jobs
COPY web/start.sh web/healthcheck.sh web/gunicorn.conf.py ./web/
COPY worker/start.sh worker/healthcheck.sh worker/flower.sh ./worker/

USER taskbeam
