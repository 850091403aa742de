#!/usr/bin/env bash
# Selection parity: ddbench's herding, k-center, forgetting, GraNd and EL2N picks against
# DeepCore's (and data_diet's for EL2N) on the same features and scores; writes
# OUT/deepcore_<dataset>.json and both sides' index lists under OUT/indices (deepcore.py).
# Usage: bench/parity/deepcore.sh DEEPCORE_CHECKOUT OUT [DATA_DIET_CHECKOUT] [-- deepcore.py options]
#   e.g. options: --scoring paper (ddbench's default budgets on its ConvNet), --evaluate
#   (import both subsets where they differ and score them under the standard protocol).
# DEEPCORE_CHECKOUT: a work tree of PatrickZH/DeepCore with its commit in COMMIT; its files are
# not edited (the shims deepcore.py needs are listed in its SHIMS and in the JSON).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: deepcore.sh DEEPCORE_CHECKOUT OUT [DATA_DIET_CHECKOUT] [-- OPTIONS]"
DC=${1:?$USAGE}
OUT=${2:?$USAGE}
shift 2
DIET=()
if [[ $# -gt 0 && $1 != -- ]]; then DIET=(--data-diet "$1"); shift; fi
if [[ $# -gt 0 && $1 == -- ]]; then shift; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/deepcore.py" "$DC" "$OUT" "${DIET[@]}" "$@"
