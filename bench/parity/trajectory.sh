#!/usr/bin/env bash
# Parity run for MTT, FTD, AST or DATM on shared experts: the authors' distillation (MTT's
# distill.py, GeorgeCazenavette/mtt-distillation; FTD's distill/distill_FTD.py,
# AngusDujw/FTD-distillation; AST's distill.py, shenjiyuan123/AST-Alignment-with-Smooth-Expert,
# its parts on: parity.py AST_PARTS, ast_init; DATM's distill/DATM.py, NUS-HPC-AI-Lab/DATM, on
# a config parity.py datm_config writes, its soft labels and correct-only start on both sides:
# DATM_FIXED; all patched by official_mtt_setup.sh) and `ddbench distill
# method=METHOD` at the same budget and settings (parity.py TRAJECTORY_SETTINGS), both
# matching against the SAME expert trajectories: the replay_buffer_<n>.pt files of BUFFER_DIR
# (MTT's buffer.py format; `ddbench expert export DATASET BUFFER_DIR` writes ddbench's experts
# so), linked as their only buffers
# and imported into ddbench's cache (`ddbench expert import`). Their images (FTD: the image EMA),
# labels (DATM: its learned logits, stored as their softmax) and learned lr are imported with
# `ddbench import mtt`; both sets are scored under learned_lr (DATM: datm, its batch 128).
# Writes OUT/<method>_<dataset>_ipc<K>.json (parity.py). DATM's code needs yacs (pip).
# Usage: bench/parity/trajectory.sh mtt|ftd|ast|datm OFFICIAL_CHECKOUT OUT BUFFER_DIR [DATASET] [IPC]
#        [ITERATIONS] [SEEDS]   (defaults: fashion_mnist, IPC 1, 200 iterations, seeds 0,1)
# OFFICIAL_CHECKOUT: a work tree of the method's repository with its commit in COMMIT.
# PARITY_MTT_SETTINGS="syn_steps=2,..." overrides the settings given to both sides.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: trajectory.sh mtt|ftd|ast|datm OFFICIAL_CHECKOUT OUT BUFFER_DIR [DATASET] [IPC] [ITERATIONS] [SEEDS]"
METHOD=${1:?$USAGE}
case $METHOD in mtt | ftd | ast | datm) ;; *) echo "$USAGE" >&2; exit 2 ;; esac
OFF=${2:?$USAGE}
OUT=${3:?$USAGE}
export PARITY_BUFFER=${4:?$USAGE}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_mtt_setup.sh" "$OFF"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/parity.py" "$METHOD" "$OFF" "$OUT" \
  "${5:-fashion_mnist}" "${6:-1}" "${7:-200}" "${8:-0,1}"
