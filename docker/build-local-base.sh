#!/usr/bin/env bash
# Build the base images from Debian packages, for networks that reach Debian's mirror and
# the Python package index but not Docker Hub:
#   local/debian-python:bookworm   Debian 12 minbase with python3, venv, pip, CA certificates
#   local/postgres:15              PostgreSQL 15 from Debian's package (docker/postgres.Dockerfile)
# Needs root (debootstrap) and a running Docker engine. Usage:
#   docker/build-local-base.sh [MIRROR]      (default http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
MIRROR=${1:-http://deb.debian.org/debian}
BASE=${BASE_IMAGE:-local/debian-python:bookworm}
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  ROOTFS=$(mktemp -d)
  trap 'rm -rf "$ROOTFS"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR"
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE"
fi
docker build --network host --build-arg "BASE_IMAGE=$BASE" \
  -f docker/postgres.Dockerfile -t local/postgres:15 .
