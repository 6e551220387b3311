#!/usr/bin/env bash
# GPU throughput benchmark (see benchmarks/gpu.py), from a checkout without installing it.
# Python: $PYTHON, else the checkout's .venv, else `python` on the PATH. Flags pass through.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python; fi
fi
PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" exec "$py" "$root/benchmarks/gpu.py" "$@"
