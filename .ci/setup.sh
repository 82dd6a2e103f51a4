#!/usr/bin/env bash
# Everything the tests (or, with `demo`, the demo) need on a fresh Debian/Ubuntu machine, as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES="nginx wrk docker.io debootstrap docker-registry unzip procps ca-certificates python3-venv"
if ! dpkg -s $PACKAGES >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES >/dev/null
fi

# Debian's interpreter, not one under /root: the tests also run serve as an unprivileged user.
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/pip install -q --disable-pip-version-check"
if [ "${1:-}" = "demo" ]; then  # just what `byoc demo` needs
    $PIP -e ".[sklearn,cli]" numpy==1.26.4
    exit 0
fi
# torch: the exact pin takes the CPU wheel on local disk; anything looser downloads a multi-GB CUDA build.
$PIP numpy==1.26.4 torch==2.13.0
$PIP -e ".[sklearn,xgboost,torch,tensorflow,onnx,cli,dev]" numpy==1.26.4
# Only xgboost < 2 can *write* the legacy binary format; the test for reading it makes one with this copy.
[ -d .venv/xgboost-legacy/xgboost ] || $PIP --no-deps --target .venv/xgboost-legacy xgboost==1.7.6
# The image tests: a Docker engine (loopback only), the debootstrap base image, a local registry.
bash .ci/docker-engine.sh
bash .ci/base-image.sh
bash .ci/registry.sh
