#!/usr/bin/env bash
# KD on pruned data ("Distilling the Knowledge in Data Pruning", Ben-Baruch et al., ICML 2025):
# for each method and subset size, the KD weight alpha in {0, 0.25, 0.5, 0.75, 1} is scored on
# VAL (conf/experiment/kd_pruning.yaml), the best alpha is picked there, and only that alpha is
# then scored on test. Prints one table row per method and size (bench/kd_pruning.py).
#
# Default budget (CPU-sized): Fashion-MNIST, random subsets at ipc 10 and 50, 5 alphas, students
# 100 epochs x 2 seeds, teacher 10 epochs with DSA (the teacher is trained once and cached).
# Set FULL=1 for the experiment's own budget (random and EL2N, ipc 10/50/100/500, 300 epochs,
# 5 seeds, the 50-epoch teacher); every setting can also be changed alone:
#   DATASET METHODS IPCS EPOCHS SEEDS TEACHER_EPOCHS   (e.g. IPCS=10,50,100 SEEDS=[0,1,2])
# Usage: bash bench/kd_pruning.sh [OUT_DIR] [extra overrides for every run, e.g. device=cuda]
set -euo pipefail
out=${1:-bench/results/kd_pruning}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
if [ "${FULL:-0}" = 1 ]; then
  : "${METHODS:=random,el2n}" "${IPCS:=10,50,100,500}"
else
  : "${METHODS:=random}" "${IPCS:=10,50}" "${EPOCHS:=100}" "${SEEDS:=[0,1]}" "${TEACHER_EPOCHS:=10}"
fi
common=(precision=fp32 progress=false)
[ -n "${DATASET:-}" ] && common+=("dataset=$DATASET")
[ -n "${EPOCHS:-}" ] && common+=("protocol.epochs=$EPOCHS")
[ -n "${SEEDS:-}" ] && common+=("protocol.seeds=$SEEDS")
[ -n "${TEACHER_EPOCHS:-}" ] && common+=("protocol.teacher.epochs=$TEACHER_EPOCHS")

# 1. every alpha on val (one Hydra multirun; the teacher is trained by the first job)
ddbench -m run +experiment=kd_pruning "method=$METHODS" "ipc=$IPCS" "${common[@]}" \
  hydra.sweep.dir="$out/val" "$@"
# 2. the alpha chosen on val, per method and size, scored once on test
python "$here/kd_pruning.py" best "$out/val" | while read -r method ipc hard_weight; do
  ddbench run +experiment=kd_pruning "method=$method" "ipc=$ipc" \
    "protocol.hard_weight=$hard_weight" eval_split=test "${common[@]}" \
    hydra.run.dir="$out/test/$method-ipc$ipc" "$@"
done
python "$here/kd_pruning.py" table "$out/val" "$out/test"
