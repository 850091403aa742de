#!/usr/bin/env bash
# Parity run for DataDAM: the authors' main_DataDAM.py (DataDistillation/DataDAM, patched by
# official_datadam_setup.sh) and `ddbench distill method=datadam method.power=1` (the released
# code's p) at the same budget on the same data; both sets scored by `ddbench evaluate` under
# the protocol DataDAM declares (datadam: their evaluate_synset recipe); writes
# OUT/datadam_<dataset>_ipc<K>.json (parity.py).
# Usage: bench/parity/datadam.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]
#   defaults: fashion_mnist, IPC 1, 20 iterations, distillation seeds 0,1
# OFFICIAL_CHECKOUT: a work tree of DataDistillation/DataDAM with its commit in COMMIT.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: datadam.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]"
OFF=${1:?$USAGE}
OUT=${2:?$USAGE}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_datadam_setup.sh" "$OFF"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/parity.py" datadam "$OFF" "$OUT" \
  "${3:-fashion_mnist}" "${4:-1}" "${5:-20}" "${6:-0,1}"
