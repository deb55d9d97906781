#!/bin/sh
# `make certs`: a local certificate authority and a certificate for localhost and
# 127.0.0.1 that it signed, for Nginx's HTTPS (nginx/tls.yml) on this machine.
# Trust DIR/ca.pem in the browser (or curl --cacert); never use these in production.
#   tests/make_certs.sh DIR     writes DIR/ca.pem, DIR/ca-key.pem, DIR/cert.pem, DIR/key.pem
set -o errexit -o nounset
dir=${1:-certs}
mkdir -p "$dir"
cd "$dir"
if [ -f cert.pem ] && [ -f key.pem ] && [ -f ca.pem ]; then
  echo "$dir: certificates exist (delete the folder to make new ones)"
  exit 0
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=Taskbeam local CA" -keyout ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout key.pem -out cert.csr 2>/dev/null
cat > cert.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EXT
openssl x509 -req -in cert.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 397 \
  -extfile cert.ext -out cert.pem 2>/dev/null
rm -f cert.csr cert.ext ca.srl
# Nginx runs as an unprivileged user in its container: the localhost key must be
# readable by it (a local, throwaway key); the CA key stays private.
chmod 644 key.pem cert.pem ca.pem
chmod 600 ca-key.pem
echo "$dir: wrote ca.pem (trust this one), cert.pem and key.pem (for Nginx)"
