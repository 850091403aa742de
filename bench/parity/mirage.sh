#!/usr/bin/env bash
# Mirage parity: the authors' NCI1 pipeline (frigategnn/Mirage) and ddbench's Mirage mine the
# same train split at the same support; the pattern sets are compared and both distilled sets
# are scored by ddbench's pinned graph protocol (GCN, GIN, GAT; seeds 0, 1, 2). Writes
# OUT/mirage_<DATASET>.json (mirage_parity.py); resumable (OUT/work/<DATASET>/).
# Usage: bench/parity/mirage.sh OFFICIAL_CHECKOUT OUT [DATASET] [mirage_parity.py options]
#   DATASET: motif (default) or bzr. OFFICIAL_CHECKOUT: a work tree of frigategnn/Mirage with
#   its commit in COMMIT; official_mirage_setup.sh patches it (idempotent) first.
#   MIRAGE_PY: the python that runs their script (needs pyfpgrowth and ogb besides torch and
#   torch_geometric; default python3). DDBENCH_PY: ddbench's python (default python3).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: mirage.sh OFFICIAL_CHECKOUT OUT [DATASET] [options]"
OFF=${1:?$USAGE}
OUT=${2:?$USAGE}
DATASET=${3:-motif}
shift $(($# < 3 ? $# : 3))
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_mirage_setup.sh" "$OFF"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/mirage_parity.py" "$OFF" "$OUT" "$DATASET" \
  --official-python "${MIRAGE_PY:-python3}" "$@"
