#!/bin/sh
# One image, four roles:
#   api         the HTTP API and web pages (migrations run at start-up)
#   worker      a job worker: local executor (runs jobs itself), or with
#               TASKALIGN_EXECUTOR=ray a Ray worker node joining $TASKALIGN_RAY_HEAD
#   ray-head    a Ray head; with TASKALIGN_EXECUTOR=ray it also runs the dispatcher that
#               claims jobs from the database and submits them through Ray's job API
#   health      the container health check for whichever role runs
set -eu
role=${1:-api}
[ $# -gt 0 ] && shift
executor=${TASKALIGN_EXECUTOR:-local}
case "$role" in
  api)
    exec taskalign serve --host 0.0.0.0 --port "${TASKALIGN_PORT:-8000}" "$@" ;;
  worker)
    if [ "$executor" = ray ]; then
      exec ray start --address="${TASKALIGN_RAY_HEAD:-ray-head}:6379" \
        --num-cpus="${TASKALIGN_RAY_CPUS:-1}" --disable-usage-stats --block
    fi
    exec taskalign worker "$@" ;;
  ray-head)
    if [ "$executor" = ray ]; then
      # No CPUs on the head: Ray places every job on a worker node.
      ray start --head --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265 \
        --num-cpus=0 --disable-usage-stats
      exec taskalign worker --executor ray --ray-address http://127.0.0.1:8265 "$@"
    fi
    exec ray start --head --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265 \
      --num-cpus=0 --disable-usage-stats --block ;;
  health)
    exec python3 - <<'PY'
import pathlib, sys, urllib.request
def cmdline(path):
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended while we looked
        return ""
procs = " ".join(cmdline(p) for p in pathlib.Path("/proc").glob("[0-9]*/cmdline"))
if "taskalign serve" in procs:
    port = __import__("os").environ.get("TASKALIGN_PORT", "8000")
    sys.exit(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4).status != 200)
sys.exit(0 if ("raylet" in procs or "taskalign worker" in procs) else 1)
PY
    ;;
  *)
    exec "$role" "$@" ;;
esac
