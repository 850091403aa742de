#!/usr/bin/env bash
# Parity run for SRe2L, CDA or CV-DD on a SHARED teacher: the authors' recovery (SRe2L's
# SRe2L/*small_dataset/recover_cifar.py and CDA's CDA/recover_cda_tiny.py, VILA-Lab/SRe2L;
# CV-DD's recover/recover.py, Jiacheng8/CV-DD; patched by official_sre2l_setup.sh) and
# `ddbench distill method=METHOD` at the same budget and settings (parity.py RECOVERY_SETTINGS,
# RECOVERY_DDBENCH), both recovering from the same ddbench teacher(s), trained once by ddbench's
# teacher cache and exported for their scripts (SRe2L/CDA: SRe2L's default teacher; CV-DD: the
# two members of bench/reproduce_sre2l.sh). CV-DD starts both sides from the same real images.
# Their exact final tensors are imported with `ddbench import mtt`; both sets are scored under
# `sre2l` (the shared teacher relabels every crop; the run stops unless both results name it).
# Writes OUT/<method>_<dataset>_ipc<K>.json (parity.py).
# Usage: bench/parity/sre2l.sh sre2l|cda|cvdd OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS]
#        [SEEDS]   (defaults: fashion_mnist, IPC 10, 1000 iterations, seeds 0,1)
# OFFICIAL_CHECKOUT: a work tree of VILA-Lab/SRe2L (sre2l, cda) or Jiacheng8/CV-DD (cvdd) with
# its commit in COMMIT. PARITY_SRE2L_SETTINGS="lr_img=...,r_bn=..." overrides the settings given
# to both sides; PARITY_EVAL_SEEDS, PARITY_EVAL_EPOCHS as for parity.py.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: sre2l.sh sre2l|cda|cvdd OFFICIAL_CHECKOUT OUT [DATASET] [IPC] [ITERATIONS] [SEEDS]"
METHOD=${1:?$USAGE}
case $METHOD in sre2l | cda | cvdd) ;; *) echo "$USAGE" >&2; exit 2 ;; esac
OFF=${2:?$USAGE}
OUT=${3:?$USAGE}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_sre2l_setup.sh" "$OFF"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/parity.py" "$METHOD" "$OFF" "$OUT" \
  "${4:-fashion_mnist}" "${5:-10}" "${6:-1000}" "${7:-0,1}"
