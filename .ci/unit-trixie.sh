#!/usr/bin/env bash
# The unit tests under the newest Python Debian ships (trixie's python3), in a
# container: users build on python:3.12-slim while the host here runs 3.11, so a
# version difference on either side of 3.12 shows up in CI.
#   bash .ci/unit-trixie.sh            (needs a running Docker engine)
# The image (trixie's python3 and redis-server) is built once by .ci/provision.sh;
# pip's downloads are kept in the volume taskbeam-pip-trixie between runs.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

image=taskbeam-standin/python-unit:trixie
docker image inspect "$image" >/dev/null 2>&1 || bash .ci/provision.sh python-trixie
docker volume create --label org.taskbeam.standin=1 taskbeam-pip-trixie >/dev/null

# The checkout is mounted read-only; pip's editable install writes metadata next to
# the sources, so the container works on a copy (without the host's venv and git).
docker run --rm --network bridge \
  -v "$PWD:/src:ro" -v taskbeam-pip-trixie:/root/.cache/pip \
  -e PYTHONDONTWRITEBYTECODE=1 -e PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$image" bash -c '
    set -o errexit -o pipefail
    mkdir /work && cd /src
    tar --exclude=./.venv --exclude=./.git --exclude=./tests/artifacts -c . | tar -C /work -x
    cd /work
    python3 --version
    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip install -q -e ".[test,tracing]"
    /tmp/venv/bin/pytest tests/unit -q -p no:cacheprovider
  '
echo "unit tests under trixie's Python: $(( $(date +%s) - started ))s"
