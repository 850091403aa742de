#!/usr/bin/env bash
# The expert recipes apart from the distillation: MTT's buffer.py (patched by
# official_mtt_setup.sh, M7: --seed) and `ddbench expert train` train NUM experts of EPOCHS epochs
# on the same data (ddbench's train split; ddbench's DSA strategy for the dataset on both
# sides; their defaults otherwise: SGD lr 0.01, no momentum, batch 256, the ConvNet-3), then
# expert_stats.py compares them at equal epochs (test accuracy, distance from the initial
# parameters, epoch steps, MTT's target distance) and writes OUT/experts_<dataset>.json.
# ddbench's experts are exported to OUT/ddbench_buffers (replay buffers), so both sides are read
# by the same code; the authors' buffers (OUT/authors_buffers/<NAME>/ConvNet) can then serve as
# BUFFER_DIR of trajectory.sh.
# Usage: bench/parity/expert_parity.sh OFFICIAL_MTT_CHECKOUT OUT [DATASET] [NUM] [EPOCHS] [EVERY]
#   defaults: fashion_mnist, 10 experts, 50 epochs (MTT's), compared every 5 epochs
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
USAGE="usage: expert_parity.sh OFFICIAL_MTT_CHECKOUT OUT [DATASET] [NUM] [EPOCHS] [EVERY]"
OFF=$(cd "${1:?$USAGE}" && pwd)
OUT=${2:?$USAGE}
DS=${3:-fashion_mnist}
NUM=${4:-10}
EPOCHS=${5:-50}
EVERY=${6:-5}
PY=${DDBENCH_PY:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
case $DS in
  mnist) NAME=MNIST STRATEGY=color_crop_cutout_scale_rotate ;;
  fashion_mnist) NAME=FashionMNIST STRATEGY=color_crop_cutout_flip_scale_rotate ;;
  *) echo "DATASET must be mnist or fashion_mnist" >&2; exit 2 ;;
esac
bash "$HERE/bench/parity/official_mtt_setup.sh" "$OFF"
AUTHORS=$OUT/authors_buffers/$NAME/ConvNet
if [ ! -f "$AUTHORS/replay_buffer_0.pt" ]; then
  (cd "$OFF" && "$PY" buffer.py --dataset "$NAME" --model ConvNet --num_experts "$NUM" \
    --train_epochs "$EPOCHS" --save_interval "$NUM" --dsa True --dsa_strategy "$STRATEGY" \
    --data_path data --buffer_path "$OUT/authors_buffers" --seed 0) > "$OUT/authors_buffer.log" 2>&1
fi
OURS=$OUT/ddbench_buffers/$DS
if [ ! -f "$OURS/replay_buffer_0.pt" ]; then
  "$PY" -m ddbench.cli expert train "$DS" --num "$NUM" --epochs "$EPOCHS" > "$OUT/ddbench_experts.log" 2>&1
  "$PY" -m ddbench.cli expert export "$DS" "$OURS" --num "$NUM" --epochs "$EPOCHS" --per-file "$NUM"
fi
cd "$HERE"
"$PY" bench/parity/expert_stats.py "$DS" "$AUTHORS" "$OURS" --every "$EVERY" \
  --out "$OUT/experts_${DS}.json"
