#!/bin/sh
# schemathesis against a real `serve`, inside a network namespace of its own with only
# loopback up: every request schemathesis makes, and every URL it submits for import, stays
# on this machine (a generated `http://example.com/...` fails to resolve at once).
#
# Usage, as root:  unshare --net --fork tests/contract/schemathesis.sh BIN WORKDIR [ARGS...]
# ARGS go to `schemathesis run`. Exit status: schemathesis's.
set -eu
BIN=$1
WORK=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
ip link set lo up
export MP4TOMP3_ADMIN_EMAIL=admin@example.com
export MP4TOMP3_ADMIN_PASSWORD=contract-password
# Generous login limits: the generated cases call the login routes hundreds of times.
"$BIN" serve --data-dir "$WORK/data" --http 127.0.0.1:8080 \
    --login-per-minute 100000 --lockout-after 100000 2>"$WORK/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 200); do
    curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break
    sleep 0.1
done
TOKEN=$(curl -sf -X POST -u "$MP4TOMP3_ADMIN_EMAIL:$MP4TOMP3_ADMIN_PASSWORD" http://127.0.0.1:8080/login)
export TOKEN
cd "$WORK"
# hooks.py: how to send tus bodies (application/offset+octet-stream).
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=hooks
schemathesis --config-file "$HERE/schemathesis.toml" --no-color run http://127.0.0.1:8080/openapi.json "$@"
