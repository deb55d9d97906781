#!/bin/sh
# Fills the per-address limits into the Nginx config template, then runs Nginx.
# Nginx reads no environment itself; this keeps the limits settings in .env.
#   start.sh          render to /tmp/nginx.conf, check it, run Nginx in the foreground
#   start.sh render   print the rendered config (for tests) and exit
set -o errexit -o nounset
template=${NGINX_TEMPLATE:-/etc/nginx/nginx.conf.template}

# Defaults as in .env.example; each must be a positive integer.
: "${CREATES_PER_MINUTE_PER_IP:=120}" "${CREATE_BURST_PER_IP:=30}"
: "${EVENT_READS_PER_SECOND_PER_IP:=20}" "${EVENT_READS_BURST_PER_IP:=100}"
: "${WS_CONNECTIONS_PER_IP:=200}"
# The web replicas' DNS name: `web` (Compose), `tasks.web` (Swarm: one address per
# replica; the service's virtual IP would pin every connection to IPVS's choice).
: "${WEB_UPSTREAM:=web}"
case "$WEB_UPSTREAM" in
  *[!A-Za-z0-9.-]*|.*|-*) echo "taskbeam-nginx: WEB_UPSTREAM must be a host name, got '$WEB_UPSTREAM'" >&2
                          exit 2 ;;
esac
for name in CREATES_PER_MINUTE_PER_IP CREATE_BURST_PER_IP EVENT_READS_PER_SECOND_PER_IP \
            EVENT_READS_BURST_PER_IP WS_CONNECTIONS_PER_IP; do
  eval "value=\$$name"
  case "$value" in
    ''|*[!0-9]*|0*) echo "taskbeam-nginx: $name must be a positive integer, got '$value'" >&2
                    exit 2 ;;
  esac
done

render() {
  sed -e "s/\${CREATES_PER_MINUTE_PER_IP}/$CREATES_PER_MINUTE_PER_IP/g" \
      -e "s/\${CREATE_BURST_PER_IP}/$CREATE_BURST_PER_IP/g" \
      -e "s/\${EVENT_READS_PER_SECOND_PER_IP}/$EVENT_READS_PER_SECOND_PER_IP/g" \
      -e "s/\${EVENT_READS_BURST_PER_IP}/$EVENT_READS_BURST_PER_IP/g" \
      -e "s/\${WS_CONNECTIONS_PER_IP}/$WS_CONNECTIONS_PER_IP/g" \
      -e "s/\${WEB_UPSTREAM}/$WEB_UPSTREAM/g" \
      "$template"
}

if [ "${1:-}" = render ]; then
  render
  exit 0
fi
render > /tmp/nginx.conf
exec nginx -c /tmp/nginx.conf -g "daemon off;"
