#!/usr/bin/env bash
# Create (or reuse) the local base image byoc-base:bookworm: Debian bookworm minbase with
# python3, venv, pip, nginx and the host's CA bundle. No image can be pulled on CI machines,
# so the Dockerfiles are built with --build-arg BASE_IMAGE=byoc-base:bookworm there.
# Idempotent: an existing image is reused; set BYOC_BASE_REBUILD=1 to force a rebuild.
set -euo pipefail

IMAGE=${BYOC_BASE_IMAGE:-byoc-base:bookworm}
CA_BUNDLE=${BYOC_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if [ "${BYOC_BASE_REBUILD:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base-image: reusing $IMAGE"
  exit 0
fi

# The first Debian mirror apt is configured with (deb822 or one-line format).
mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
if [ -z "$mirror" ]; then
  mirror=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' | grep -v security | head -n1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d /tmp/byoc-base-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "base-image: debootstrap bookworm from $mirror (about a minute)"
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,nginx,ca-certificates \
  bookworm "$rootfs" "$mirror" >/tmp/byoc-base-debootstrap.log 2>&1 \
  || { tail -n 30 /tmp/byoc-base-debootstrap.log >&2; exit 3; }

# Package downloads inside builds go through a TLS proxy whose CA only the host bundle has.
cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
# Keep the image small: apt lists, caches and docs are not needed at run time.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

echo "base-image: importing as $IMAGE"
tar -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
docker image inspect "$IMAGE" --format 'base-image: {{.RepoTags}} {{.Size}} bytes'
