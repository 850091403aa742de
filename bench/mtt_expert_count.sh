#!/usr/bin/env bash
# MTT's expert count on the VAL split: the paper trains 100 experts (buffer.py --num_experts 100),
# ddbench's default is 10 (method.num_experts). This distils DATASET at IPC with each count of
# COUNTS (the experts are the cached ones, 0..k-1: a larger count adds experts to the same pool)
# and scores each set on the val split (eval_split=val, never test) under learned_lr.
# Cost: max(COUNTS) experts x method.experts.epochs (50) epochs of training on the train split,
# once (cached, resumable: `ddbench expert train DATASET --num N` trains them ahead), plus per
# count and seed ITERATIONS distillation iterations and learned_lr's 5 x 1000 evaluation epochs.
# Usage: bash bench/mtt_expert_count.sh [OUT_DIR] [DATASET] [IPC] [COUNTS] [ITERATIONS] [SEEDS]
#        [extra overrides...]   (defaults: bench/results/mtt_expert_count fashion_mnist 10
#        "1 2 5 10 20 100" 5000 0,1; lr_img 100 as docs/methods.md chooses for (Fashion-)MNIST)
#   a smoke test: bash bench/mtt_expert_count.sh /tmp/ec digits 1 "1 2" 2 0 \
#     method.experts.epochs=2 method.max_start_epoch=1 method.expert_epochs=1 \
#     model.kwargs.net_width=8 method.syn_steps=2 protocol.epochs=2 'protocol.seeds=[0]'
# Prints, per count, the val accuracy of each set and their mean.
set -euo pipefail
out=${1:-bench/results/mtt_expert_count}
ds=${2:-fashion_mnist}
ipc=${3:-10}
counts=${4:-1 2 5 10 20 100}
iters=${5:-5000}
seeds=${6:-0,1}
shift 6 2>/dev/null || shift $#
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${DDBENCH_PY:-python3}
for k in $counts; do
  for s in ${seeds//,/ }; do
    "$PY" -m ddbench.cli run method=mtt dataset="$ds" ipc="$ipc" method.num_experts="$k" \
      method.iterations="$iters" method.lr_img=100 seed="$s" protocol=learned_lr eval_split=val \
      precision=fp32 progress=false hydra.run.dir="$out/$ds/ipc$ipc/experts$k/seed$s" "$@"
  done
done
"$PY" - "$out/$ds/ipc$ipc" <<'PY'
import json, pathlib, statistics, sys
root = pathlib.Path(sys.argv[1])
dirs = sorted(root.glob("experts*"), key=lambda d: int(d.name.removeprefix("experts")))
for d in dirs:
    rs = [json.loads(f.read_text()) for f in sorted(d.glob("seed*/result.json"))]
    assert all(r["split"] == "val" for r in rs)
    accs = [r["accuracy"]["mean"] for r in rs]
    print(f"{d.name}: val accuracy per set {['%.2f' % a for a in accs]}, mean "
          f"{statistics.mean(accs):.2f} over {len(accs)} set(s) ({rs[0]['protocol']['name']})")
PY
