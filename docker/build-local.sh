#!/usr/bin/env bash
# Build the TaskAlign image on a network without Docker Hub (and, optionally, without
# download.pytorch.org): the base images from Debian packages (build-local-base.sh), the
# host's CA bundle for pip, and torch from a local wheel folder served during the build.
#   docker/build-local.sh [TAG]       (default taskalign:local)
# Environment: WHEELS (default /opt/wheels, a folder holding the torch CPU wheel; empty
# to take torch from download.pytorch.org), CA_BUNDLE (default the host's).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-taskalign:local}
WHEELS=${WHEELS-/opt/wheels}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
docker/build-local-base.sh
[ -f "$CA_BUNDLE" ] && cp "$CA_BUNDLE" docker/certs/ca-certificates.crt
args=(--network host --build-arg BASE_IMAGE=local/debian-python:bookworm)
if [ -n "$WHEELS" ]; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WHEELS" >/dev/null 2>&1 &
  SERVER=$!
  trap 'kill $SERVER' EXIT
  # torch (the +cpu build, asked for by name) from the wheel folder; its dependencies
  # from the package index.
  args+=(--build-arg "TORCH_PIP_ARGS=--find-links http://127.0.0.1:$PORT/"
         --build-arg "TORCH_VERSION=2.13.0+cpu")
fi
docker build "${args[@]}" -f docker/Dockerfile -t "$TAG" .
docker image ls "$TAG"
