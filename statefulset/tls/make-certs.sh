#!/bin/sh
# Makes the cluster's mutual-TLS material with openssl: a CA, and one certificate every pod
# presents and verifies (DNS name mp4tomp3-cluster: pods dial each other by IP, so this
# shared name is what they check), then writes it as the Secret the StatefulSet mounts.
#
#   statefulset/tls/make-certs.sh [OUT_DIR]          # files + OUT_DIR/secret.yaml
#   kubectl apply -f OUT_DIR/secret.yaml             # (namespace: add -n NAMESPACE)
#
# Keep OUT_DIR/ca.key offline: it signs new certificates (rotate: run again, apply, then
# `kubectl rollout restart statefulset/mp4tomp3`). With cert-manager, use
# statefulset/components/cert-manager instead.
set -eu
out=${1:-mp4tomp3-cluster-tls}
days=${DAYS:-825}
name=${SERVER_NAME:-mp4tomp3-cluster}
mkdir -p "$out"
cd "$out"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=mp4tomp3 cluster CA" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$name" -keyout tls.key -out tls.csr 2>/dev/null
cat > tls.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:$name
EXT
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile tls.ext -out tls.crt 2>/dev/null
rm -f tls.csr tls.ext ca.srl
b64() { base64 < "$1" | tr -d '\n'; }
cat > secret.yaml <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: mp4tomp3-cluster-tls
  labels:
    app.kubernetes.io/name: mp4tomp3
type: kubernetes.io/tls
data:
  ca.crt: $(b64 ca.crt)
  tls.crt: $(b64 tls.crt)
  tls.key: $(b64 tls.key)
YAML
echo "wrote $out/{ca.crt,ca.key,tls.crt,tls.key,secret.yaml}"
