#!/usr/bin/env bash
# Random real subsets of Fashion-MNIST trained with a teacher's soft labels (`kd`) vs hard
# labels under the same recipe (`kd_hard`) and under `standard`: "Rethinking Large-scale
# Dataset Compression" / "Distilling the Knowledge in Data Pruning" on small data.
# Usage: bash bench/kd_random.sh [OUT_DIR] [extra overrides, e.g. 'protocol.seeds=[0,1,2]']
set -euo pipefail
out=${1:-bench/results/kd}
shift || true
ddbench teacher train fashion_mnist          # once; a cache hit afterwards
for ipc in 10 50; do
  for protocol in kd kd_hard; do
    ddbench run method=random dataset=fashion_mnist ipc=$ipc protocol=$protocol precision=fp32 progress=false \
      hydra.run.dir="$out/ipc$ipc/$protocol" "$@"
  done
done
python - "$out" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).rglob("result.json")):
    r = json.loads(f.read_text()); a = r["accuracy"]
    print(f"ipc={r['ipc']:3d} {r['protocol']['name']:8s} labels={r['labels']['kind']:8s}"
          f" {a['mean']:6.2f} +- {a['std']:.2f}  seeds={len(a['per_seed'])}  eval {r['cost']['eval_seconds']:.0f}s")
PY
