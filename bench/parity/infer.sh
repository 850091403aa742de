#!/usr/bin/env bash
# Parity run for INFER on SHARED teachers and real images: the authors' generation
# (zhangxin-xd/UFC ufc_generation/ufc_cifar.py, patched by official_infer_setup.sh) and
# `ddbench distill method=infer` at the same budget and settings (infer_parity.py SETTINGS), both
# with ddbench's cached default teachers (exported for their script) over the same real images
# (a 0-iteration ddbench run of the seed). Their compensators are imported over those images with
# static labels from the same teachers (infer_parity.import_set); both sets are scored under
# `infer`. Writes OUT/infer_<dataset>_ipc<K>.json (parity.py).
# Usage: bench/parity/infer.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]
#        (defaults: fashion_mnist, IPC 10, 1000 iterations, seeds 0)
# PARITY_INFER_TEACHERS='[{"model": ...}, ...]' other teachers on both sides (smoke tests);
# PARITY_EVAL_SEEDS, PARITY_EVAL_EPOCHS as for parity.py.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: infer.sh OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]"
OFF=${1:?$USAGE}
OUT=${2:?$USAGE}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_infer_setup.sh" "$OFF"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/parity.py" infer "$OFF" "$OUT" \
  "${3:-fashion_mnist}" "${4:-10}" "${5:-1000}" "${6:-0}"
