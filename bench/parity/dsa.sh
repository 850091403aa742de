#!/usr/bin/env bash
# Parity run for DSA (main.py --method DSA --init real): the authors' code and
# `ddbench distill method=dsa` at the same budget on the same data, both sets scored by
# `ddbench evaluate` under one protocol; writes OUT/dsa_<dataset>_ipc<K>.json (parity.py).
# Usage: bench/parity/dsa.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]
#   defaults: fashion_mnist, IPC 1, 50 iterations, distillation seeds 0,1
# OFFICIAL_CHECKOUT: a work tree of VICO-UoE/DatasetCondensation with its commit in COMMIT
# (see bench/parity/README.md); official_dc_setup.sh patches it (idempotent) first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
OFF=${1:?usage: dsa.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]}
OUT=${2:?usage: dsa.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_dc_setup.sh" "$OFF"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/parity.py" dsa "$OFF" "$OUT" \
  "${3:-fashion_mnist}" "${4:-1}" "${5:-50}" "${6:-0,1}"
