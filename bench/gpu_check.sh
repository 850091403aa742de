#!/usr/bin/env bash
# Check every CUDA path of ddbench on this machine, one line per path (bench/gpu_check.py says
# which paths and with what tolerance; docs/gpu.md how to run it on an offline GPU node).
#
#   bash bench/gpu_check.sh [--only PATH,...] [--json FILE]
#
# Before that it makes ddbench importable, doing only what is missing:
#  * hydra-core and omegaconf: installed from the wheels in .whl/ (bench/gpu_wheels.sh fetches
#    them where an index is reachable) into $GPU_CHECK_SITE (default /tmp/ddbench_gpu_site),
#    offline (--no-index --no-deps);
#  * ddbench itself, without `pip install`: pyproject.toml maps `ddbench.methods` to methods/ and
#    `ddbench.conf` to conf/, so the repository root on PYTHONPATH is not enough. The tree is
#    staged as that mapping lays it out (ddbench/, ddbench/methods/, ddbench/conf/) under
#    $GPU_CHECK_PKG (default /tmp/ddbench_gpu_pkg): no build backend needed, never stale.
# Where the imports already work (an installed checkout) nothing is installed or copied.
# PYTHON (default python3) is the interpreter. The exit code is gpu_check.py's: 0 when no path
# failed (also on a machine without CUDA, where every path is skipped).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/ddbench_gpu_site}
PKG=${GPU_CHECK_PKG:-/tmp/ddbench_gpu_pkg}

# probed from / so that the checkout's own ddbench/ (no methods/ inside) is not what is found
imports() { (cd / && "$PY" -c "import $1") >/dev/null 2>&1; }
# ddbench's subpackages are found, not imported (that would import torch: seconds)
packages() {
    local code="import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, sys.argv[1:])))"
    (cd / && "$PY" -c "$code" "$@") >/dev/null 2>&1
}

if ! imports "hydra.utils, omegaconf"; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: installing $(cd .whl && echo *.whl) into $SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" .whl/*.whl || echo "gpu_check.sh: pip install from .whl/ failed" >&2
    else
        echo "gpu_check.sh: hydra-core/omegaconf missing and no wheels in .whl/" \
            "(run bench/gpu_wheels.sh where an index is reachable)" >&2
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! packages ddbench.methods ddbench.conf; then
    rm -rf "$PKG" && mkdir -p "$PKG"
    cp -r ddbench "$PKG/ddbench" && cp -r methods "$PKG/ddbench/methods" \
        && cp -r conf "$PKG/ddbench/conf"
    echo "gpu_check.sh: ddbench staged from $PWD into $PKG"
    export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" bench/gpu_check.py "$@"
