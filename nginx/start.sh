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
# Nginx's resolver reads no /etc/resolv.conf: its first server (Docker's 127.0.0.11,
# or the cluster DNS under Kubernetes), unless set.
: "${NGINX_RESOLVER:=$(awk '$1 == "nameserver" {print $2; exit}' /etc/resolv.conf)}"
case "$NGINX_RESOLVER" in
  ''|*[!A-Za-z0-9.:-]*) echo "taskbeam-nginx: NGINX_RESOLVER must be an address, got '$NGINX_RESOLVER'" >&2
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

# AUTH_MODE=header: the auth proxy's header name and the addresses it is believed from.
: "${AUTH_PROXY_HEADER:=X-Auth-Request-User}" "${AUTH_PROXY_ADDRESSES:=}" "${TLS:=0}"
: "${HTTPS_PORT:=8443}"
case "$AUTH_PROXY_HEADER" in
  ''|*[!A-Za-z0-9-]*) echo "taskbeam-nginx: AUTH_PROXY_HEADER must be a header name" >&2; exit 2 ;;
esac
auth_proxy_var=$(printf '%s' "$AUTH_PROXY_HEADER" | tr 'A-Z-' 'a-z_')
auth_proxy_geo=""
for address in $(printf '%s' "$AUTH_PROXY_ADDRESSES" | tr ',' ' '); do
  case "$address" in
    *[!0-9A-Fa-f.:/]*) echo "taskbeam-nginx: AUTH_PROXY_ADDRESSES: '$address' is not an address or CIDR" >&2
                       exit 2 ;;
  esac
  auth_proxy_geo="$auth_proxy_geo $address 1;"
done
# Proxies in front of Nginx (an Ingress) whose X-Forwarded-For names the client.
: "${TRUSTED_PROXY_CIDRS:=}"
real_ip_from=""
trusted_proxy_geo=""
for address in $(printf '%s' "$TRUSTED_PROXY_CIDRS" | tr ',' ' '); do
  case "$address" in
    *[!0-9A-Fa-f.:/]*) echo "taskbeam-nginx: TRUSTED_PROXY_CIDRS: '$address' is not an address or CIDR" >&2
                       exit 2 ;;
  esac
  real_ip_from="$real_ip_from set_real_ip_from $address;"
  trusted_proxy_geo="$trusted_proxy_geo $address 1;"
done
[ -n "$real_ip_from" ] && real_ip_from="$real_ip_from real_ip_header X-Forwarded-For; real_ip_recursive on;"
case "$TLS" in
  0|1) ;;
  *) echo "taskbeam-nginx: TLS must be 0 or 1, got '$TLS'" >&2; exit 2 ;;
esac
case "$HTTPS_PORT" in
  ''|*[!0-9]*|0*) echo "taskbeam-nginx: HTTPS_PORT must be a port number, got '$HTTPS_PORT'" >&2
                  exit 2 ;;
esac
# The redirect names the published HTTPS port (none for 443).
https_port_suffix=":$HTTPS_PORT"
[ "$HTTPS_PORT" = 443 ] && https_port_suffix=""
conf_dir=$(dirname "$template")

# TLS=1: the app's server moves to 8443 with nginx/tls.conf; 8080 only redirects.
tls() {
  if [ "$TLS" = 1 ]; then
    sed -e "s|^        listen 8080;.*|        listen 8443 ssl; include /etc/nginx/tls.conf;|" \
        -e "/# @tls-redirect@/r $conf_dir/tls-redirect.conf" \
      | sed -e "s|\${HTTPS_PORT_SUFFIX}|$https_port_suffix|g"
  else
    cat
  fi
}

render() {
  sed -e "s/\${CREATES_PER_MINUTE_PER_IP}/$CREATES_PER_MINUTE_PER_IP/g" \
      -e "s/\${CREATE_BURST_PER_IP}/$CREATE_BURST_PER_IP/g" \
      -e "s/\${EVENT_READS_PER_SECOND_PER_IP}/$EVENT_READS_PER_SECOND_PER_IP/g" \
      -e "s/\${EVENT_READS_BURST_PER_IP}/$EVENT_READS_BURST_PER_IP/g" \
      -e "s/\${WS_CONNECTIONS_PER_IP}/$WS_CONNECTIONS_PER_IP/g" \
      -e "s/\${WEB_UPSTREAM}/$WEB_UPSTREAM/g" \
      -e "s/\${NGINX_RESOLVER}/$NGINX_RESOLVER/g" \
      -e "s|\${AUTH_PROXY_GEO}|$auth_proxy_geo|g" \
      -e "s|\${AUTH_PROXY_VAR}|$auth_proxy_var|g" \
      -e "s|\${REAL_IP_FROM}|$real_ip_from|g" \
      -e "s|\${TRUSTED_PROXY_GEO}|$trusted_proxy_geo|g" \
      "$template" | tls
}

if [ "${1:-}" = render ]; then
  render
  exit 0
fi
if [ "$TLS" = 1 ] && [ ! -r /etc/nginx/certs/cert.pem ] || [ "$TLS" = 1 ] && [ ! -r /etc/nginx/certs/key.pem ]; then
  echo "taskbeam-nginx: TLS=1 needs cert.pem and key.pem (readable) in the mounted certs folder; run make certs" >&2
  exit 2
fi
render > /tmp/nginx.conf
exec nginx -c /tmp/nginx.conf -g "daemon off;"
