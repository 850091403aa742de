#!/usr/bin/env bash
# bf16 vs fp32 distillation at the same budget (is bf16 as good as fp32?):
# Fashion-MNIST IPC 10, DM 100 iterations and DC 4 iterations (10 outer x 50 inner each), both
# with the official batch_real 256; each set distilled with precision=fp32 and =bf16, then all
# evaluated the same way (protocol `quick`, seeds 0 and 1, fp32). Per-iteration speed of the same
# settings: bench/matching_speed.py.
#
# Usage: bash bench/matching_precision.sh [OUT_DIR]
set -euo pipefail
out=${1:-bench/results/matching_precision}
for p in fp32 bf16; do
  for m in "dm 100" "dc 4"; do
    set -- $m
    d=$out/${1}_ipc10_$p
    ddbench distill method=$1 dataset=fashion_mnist ipc=10 method.iterations=$2 \
      method.batch_real=256 method.init=real precision=$p progress=false hydra.run.dir=$d
    ddbench evaluate synset=$d/synset.safetensors protocol=quick 'protocol.seeds=[0,1]' \
      precision=fp32 progress=false hydra.run.dir=$d/eval
  done
done
python bench/summarize.py "$out"
