#!/usr/bin/env bash
# One parity run: the authors' code and `ddbench distill method=METHOD` at the same budget on the
# same data, both sets scored by `ddbench evaluate` under one protocol; writes
# OUT/<method>_<dataset>_ipc<K>.json (parity.py). dm.sh, dc.sh and dsa.sh call this.
# Usage: bench/parity/run.sh METHOD OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]
#   defaults: fashion_mnist, IPC 1, ITERATIONS (DM 20, DC/DSA 50), distillation seeds 0,1
# OFFICIAL_CHECKOUT: a work tree of VICO-UoE/DatasetCondensation with its commit in COMMIT
# (see bench/parity/README.md); official_dc_setup.sh patches it (idempotent) first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: run.sh dm|dc|dsa OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]"
METHOD=${1:?$USAGE}
OFF=${2:?$USAGE}
OUT=${3:?$USAGE}
case $METHOD in dm) ITERS=20 ;; dc | dsa) ITERS=50 ;; *) echo "$USAGE" >&2; exit 2 ;; esac
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_dc_setup.sh" "$OFF"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/parity.py" "$METHOD" "$OFF" "$OUT" \
  "${4:-fashion_mnist}" "${5:-1}" "${6:-$ITERS}" "${7:-0,1}"
