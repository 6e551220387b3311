#!/usr/bin/env bash
# GPU throughput benchmark (see benchmarks/gpu.py), from a checkout without installing it.
# Python: $PYTHON, else the checkout's .venv, else python3 on the PATH. Flags pass through.
#
# A machine without network whose Python has torch (with CUDA) and transformers but lacks some
# of the package's other dependencies: download their wheels on a machine with network, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       -d wheels datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 pyarrow==26.0.1
# and run with WHEELS=wheels: they are installed (no index, no dependencies) into a private
# folder that comes first on the import path; if the package then fails to import, the run goes
# on without them (the machine's own packages), and says so.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
src="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$src"
if [ -n "${WHEELS:-}" ]; then
    site="${TMPDIR:-/tmp}/s2l-gpu-site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$WHEELS"/*.whl >&2
    if PYTHONPATH="$site:$src" "$py" -c "import datasets, smalltolarge.losses" >&2; then
        export PYTHONPATH="$site:$src"
        echo "gpu.sh: using the wheels of $WHEELS ($site)" >&2
    else
        echo "gpu.sh: the package does not import with the wheels of $WHEELS; going on without them" >&2
    fi
fi
exec "$py" "$root/benchmarks/gpu.py" "$@"
