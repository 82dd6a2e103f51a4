#!/usr/bin/env bash
# Start a Docker engine for the image tests if none answers, and wait until it does.
# Idempotent: an engine that already answers is left alone. No docker0 bridge and no
# iptables rules, so all container traffic stays on loopback (use --network host).
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/byoc-dockerd.log}
WAIT_SECONDS=${DOCKERD_WAIT_SECONDS:-60}

if docker info >/dev/null 2>&1; then
  echo "docker-engine: already running"
  exit 0
fi

command -v dockerd >/dev/null || { echo "docker-engine: dockerd not installed (apt-get install -y docker.io)" >&2; exit 3; }

echo "docker-engine: starting dockerd (log: $LOG)"
setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false >"$LOG" 2>&1 </dev/null &
echo $! >/var/run/byoc-dockerd.pid

for _ in $(seq 1 "$WAIT_SECONDS"); do
  if docker info >/dev/null 2>&1; then
    echo "docker-engine: ready ($(docker info --format '{{.ServerVersion}} {{.Driver}}'))"
    exit 0
  fi
  sleep 1
done
echo "docker-engine: dockerd did not answer within ${WAIT_SECONDS}s; last log lines:" >&2
tail -n 20 "$LOG" >&2
exit 3
