#!/usr/bin/env bash
# Parity run for MTT on shared experts: the authors' distill.py (GeorgeCazenavette/
# mtt-distillation, patched by official_mtt_setup.sh) and `ddbench distill method=mtt` at the
# same budget and settings (parity.py MTT_SETTINGS), both matching against the SAME expert
# trajectories: the replay_buffer_<n>.pt files of BUFFER_DIR (MTT's buffer.py format; `ddbench
# expert export DATASET BUFFER_DIR` writes ddbench's experts so), linked as their only buffers
# and imported into ddbench's cache (`ddbench expert import`). Their images, labels and learned
# lr are imported with `ddbench import mtt`; both sets are scored under learned_lr. Writes
# OUT/mtt_<dataset>_ipc<K>.json (parity.py).
# Usage: bench/parity/trajectory.sh OFFICIAL_CHECKOUT OUT BUFFER_DIR [DATASET] [IPC] [ITERATIONS]
#        [SEEDS]   (defaults: fashion_mnist, IPC 1, 200 iterations, distillation seeds 0,1)
# OFFICIAL_CHECKOUT: a work tree of GeorgeCazenavette/mtt-distillation with its commit in COMMIT.
# PARITY_MTT_SETTINGS="syn_steps=2,..." overrides the settings given to both sides.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: trajectory.sh OFFICIAL_CHECKOUT OUT BUFFER_DIR [DATASET] [IPC] [ITERATIONS] [SEEDS]"
OFF=${1:?$USAGE}
OUT=${2:?$USAGE}
export PARITY_BUFFER=${3:?$USAGE}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash "$HERE/bench/parity/official_mtt_setup.sh" "$OFF"
exec "${DDBENCH_PY:-python3}" "$HERE/bench/parity/parity.py" mtt "$OFF" "$OUT" \
  "${4:-fashion_mnist}" "${5:-1}" "${6:-200}" "${7:-0,1}"
