#!/usr/bin/env bash
# Parity run for DM (main_DM.py --init real --lr_img 1): the authors' code and
# `ddbench distill method=dm` at the same budget on the same data, both sets scored by
# `ddbench evaluate` under one protocol; writes OUT/dm_<dataset>_ipc<K>.json (parity.py).
# Usage: bench/parity/dm.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]
#   defaults: fashion_mnist, IPC 1, 20 iterations, distillation seeds 0,1
# OFFICIAL_CHECKOUT: a work tree of VICO-UoE/DatasetCondensation with its commit in COMMIT
# (see bench/parity/README.md); official_dc_setup.sh patches it (idempotent) first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
OFF=${1:?usage: dm.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]}
OUT=${2:?usage: dm.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_dc_setup.sh" "$OFF"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/parity.py" dm "$OFF" "$OUT" \
  "${3:-fashion_mnist}" "${4:-1}" "${5:-20}" "${6:-0,1}"
