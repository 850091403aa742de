#!/usr/bin/env bash
# Parity run for DM + FYI: FYI's fork of the authors' code (cvlab-yonsei/FYI, DC_DSA_DM/main_DM.py
# with the flags of its scripts/dm.sh: --init real --lr_img 1, the DSA strategy) against
# `ddbench distill method=dm method.fyi=true`, same budget and data; both sets scored by
# `ddbench evaluate` under one protocol; writes OUT/fyi_dm_<dataset>_ipc<K>.json (parity.py).
# Usage: bench/parity/fyi.sh OFFICIAL_FYI_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]
#   defaults: fashion_mnist, IPC 1, 20 iterations, distillation seeds 0,1
# OFFICIAL_FYI_CHECKOUT: a work tree of cvlab-yonsei/FYI with its commit in COMMIT (see
# bench/parity/README.md); official_dc_setup.sh patches its DC_DSA_DM/ (idempotent) first.
# PARITY_FYI_METHOD=fyi_dsa runs DSA + FYI (main.py --method DSA) instead (default 50 iterations).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: fyi.sh OFFICIAL_FYI_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]"
OFF=${1:?$USAGE}
OUT=${2:?$USAGE}
METHOD=${PARITY_FYI_METHOD:-fyi_dm}
case $METHOD in fyi_dm) ITERS=20 ;; fyi_dsa) ITERS=50 ;; *) echo "PARITY_FYI_METHOD: fyi_dm or fyi_dsa" >&2; exit 2 ;; esac
[ -f "$OFF/DC_DSA_DM/main_DM.py" ] || { echo "$OFF: no DC_DSA_DM/main_DM.py (not a checkout of cvlab-yonsei/FYI)" >&2; exit 2; }
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_dc_setup.sh" "$OFF/DC_DSA_DM"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/parity.py" "$METHOD" "$OFF" "$OUT" \
  "${3:-fashion_mnist}" "${4:-1}" "${5:-$ITERS}" "${6:-0,1}"
