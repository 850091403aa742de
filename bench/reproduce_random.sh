#!/usr/bin/env bash
# Reproduces the DC paper's random-subset baseline (Table 1) under the `standard` protocol:
# ConvNet-3, 1000 epochs with DSA, 5 seeds, final-epoch test accuracy.
# Paper: MNIST 64.9+-3.5 / 95.1+-0.9, Fashion-MNIST 51.4+-3.8 / 73.8+-0.7 (IPC 1 / 10).
# Usage: bash bench/reproduce_random.sh [OUT_DIR]
set -euo pipefail
out=${1:-bench/results/random}
for ds in fashion_mnist mnist; do
  for ipc in 10 1; do
    ddbench run method=random dataset=$ds ipc=$ipc protocol=standard precision=fp32 progress=false \
      hydra.run.dir="$out/$ds/ipc$ipc"
  done
done
python - "$out" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).rglob("result.json")):
    r = json.loads(f.read_text()); a = r["accuracy"]
    print(f"{r['dataset']:14s} ipc={r['ipc']:3d} {a['mean']:6.2f} +- {a['std']:.2f}  eval {r['cost']['eval_seconds']:.0f}s")
PY
