#!/usr/bin/env bash
# Start Debian's docker-registry (distribution 2.8) on 127.0.0.1:${BYOC_REGISTRY_PORT:-5000} for the
# push/pull tests, unless a registry already answers there. Idempotent. Prints the host:port.
set -euo pipefail

PORT=${BYOC_REGISTRY_PORT:-5000}
ADDR=127.0.0.1:$PORT
STATE=${BYOC_REGISTRY_DIR:-/tmp/byoc-registry-$PORT}

answers() { python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://$ADDR/v2/" 2>/dev/null; }

if answers; then
  echo "$ADDR"
  exit 0
fi
command -v docker-registry >/dev/null || { echo "registry: docker-registry not installed (apt-get install -y docker-registry)" >&2; exit 3; }

mkdir -p "$STATE/data"
cat >"$STATE/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/data
  delete:
    enabled: true
http:
  addr: $ADDR
YAML
setsid nohup docker-registry serve "$STATE/config.yml" >"$STATE/registry.log" 2>&1 </dev/null &
echo $! >"$STATE/registry.pid"

for _ in $(seq 1 50); do
  if answers; then
    echo "$ADDR"
    exit 0
  fi
  sleep 0.2
done
echo "registry: did not answer on $ADDR; log:" >&2
tail -n 20 "$STATE/registry.log" >&2
exit 3
