#!/bin/sh
# `make certs`: a local certificate authority and, signed by it, a certificate for
# localhost and 127.0.0.1 for Nginx's HTTPS (nginx/tls.yml), and one for Redis over
# TLS (redis/ha-tls.yml): the data nodes' and Sentinels' names and fixed addresses
# on REDIS_HA_NET (clients reach the primary at the address the Sentinels name).
# Trust DIR/ca.pem in the browser (or curl --cacert); never use these in production.
#   tests/make_certs.sh DIR     writes DIR/ca.pem, DIR/ca-key.pem, DIR/cert.pem, DIR/key.pem,
#                               DIR/redis.pem, DIR/redis-key.pem
set -o errexit -o nounset
dir=${1:-certs}
mkdir -p "$dir"
cd "$dir"
if [ -f cert.pem ] && [ -f key.pem ] && [ -f ca.pem ] && [ -f redis.pem ]; then
  echo "$dir: certificates exist (delete the folder to make new ones)"
  exit 0
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=Taskbeam local CA" -keyout ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
sign() {  # NAME SUBJECT_ALT_NAMES EXTENDED_KEY_USAGE: NAME.pem and its key, signed by the CA
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$1" -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=$3" "subjectAltName=$2" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 397 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext" ca.srl
}
sign localhost DNS:localhost,IP:127.0.0.1 serverAuth
mv localhost.pem cert.pem && mv localhost-key.pem key.pem
# Redis nodes are servers and, to each other (replication) and to the Sentinels, clients.
net=${REDIS_HA_NET:-10.218.18}
sign redis "DNS:localhost,IP:127.0.0.1,DNS:redis,DNS:redis-2,DNS:redis-3,\
DNS:sentinel-1,DNS:sentinel-2,DNS:sentinel-3,IP:$net.11,IP:$net.12,IP:$net.13,\
IP:$net.21,IP:$net.22,IP:$net.23" serverAuth,clientAuth
# Nginx and Redis run as unprivileged users in their containers: their keys must be
# readable by them (local, throwaway keys); the CA key stays private.
chmod 644 key.pem cert.pem ca.pem redis.pem redis-key.pem
chmod 600 ca-key.pem
echo "$dir: wrote ca.pem (trust this one), cert.pem and key.pem (Nginx), redis.pem and redis-key.pem (Redis)"
