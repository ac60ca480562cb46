#!/usr/bin/env bash
# Classic launcher over `dhserve serve` (split layout: web tier + one render worker per GPU).
#   ./start_gpu_server.sh                 Gunicorn, Flask's threaded server if it cannot start
#   ./start_gpu_server.sh --production    Gunicorn only: fail loudly rather than fall back
#   ./start_gpu_server.sh --diagnose      what would run, GPUs, profile; starts nothing
#   ./start_gpu_server.sh --help
# Further arguments go to `dhserve serve` (e.g. --layout all-in-one, --profile 24gb).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"   # works from any directory
case "${1:-}" in
  -h|--help)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exec "$python" -m dhserve.cli serve --help ;;
  --diagnose) shift; exec "$python" -m dhserve.cli serve --diagnose "$@" ;;
  --production) shift; exec "$python" -m dhserve.cli serve --mode gunicorn "$@" ;;
  *) exec "$python" -m dhserve.cli serve "$@" ;;
esac
