#!/usr/bin/env bash
# DataDAM's attention exponent p on the VAL split: the paper (and its HP table) says p = 4, the
# released main_DataDAM.py runs p = 1 (get_attention(exp=1), line 303). This distils
# Fashion-MNIST IPC 1 with p = 1 and p = 4 (everything else at DataDAM's defaults, ConvNet-3
# with instance norm) and scores each set on the val split (eval_split=val, never test) under
# the protocol DataDAM declares (datadam: BatchNorm ConvNet, batch 64, 1800 epochs, 5 models).
# Budget: ITERATIONS per distillation (default 1000, about 2 s per iteration on one CPU thread,
# so about 35 minutes per set), for each p and each distillation seed (default 0 and 1: four
# sets, about 2.5 hours of distillation), plus 5 x 1800 BatchNorm epochs per set.
# Usage: bash bench/datadam_power_val.sh [OUT_DIR] [ITERATIONS] [SEEDS] [extra overrides...]
#   e.g. a smoke test: bash bench/datadam_power_val.sh /tmp/pv 2 0 protocol.epochs=2 'protocol.seeds=[0]'
# Prints, per p, the val accuracy of each set and their mean; the larger mean chooses p.
set -euo pipefail
out=${1:-bench/results/datadam_power_val}
iters=${2:-1000}
seeds=${3:-0,1}
shift 3 2>/dev/null || shift $#
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${DDBENCH_PY:-python3}
for p in 1 4; do
  for s in ${seeds//,/ }; do
    "$PY" -m ddbench.cli run method=datadam dataset=fashion_mnist ipc=1 method.power=$p \
      method.iterations="$iters" seed="$s" protocol=datadam eval_split=val precision=fp32 \
      progress=false hydra.run.dir="$out/p$p/seed$s" "$@"
  done
done
"$PY" - "$out" <<'PY'
import json, pathlib, statistics, sys
root = pathlib.Path(sys.argv[1])
for p in ("p1", "p4"):
    rs = [json.loads(f.read_text()) for f in sorted((root / p).glob("seed*/result.json"))]
    assert all(r["split"] == "val" for r in rs)
    accs = [r["accuracy"]["mean"] for r in rs]
    print(f"{p}: val accuracy per set {['%.2f' % a for a in accs]}, mean "
          f"{statistics.mean(accs):.2f} over {len(accs)} set(s) ({rs[0]['protocol']['name']}/{rs[0]['model']})")
PY
