#!/usr/bin/env bash
# Where the selection baselines' gaps to the DC paper (Table 1) come from (docs/benchmarks.md,
# "Random subsets and selection baselines"). Needs the sets of bench/reproduce_selection.sh (run it first,
# same RESULTS_ROOT); the random sets are re-made here.
#   1. the feature space of herding: L2-normalised teacher features, a random network, raw pixels;
#   2. forgetting's tie-break at IPC 1 (same cached scores, four more draws);
#   3. the recipe: the same sets re-scored under `nodsa`, the DC paper's own evaluation recipe for
#      Fashion-MNIST (300 epochs, no augmentation).
# Usage: bash bench/reproduce_selection_gaps.sh [RESULTS_ROOT]   (default bench/results)
set -euo pipefail
root=${1:-bench/results}
sel=$root/selection
diag=$root/selection_diag
nodsa=$root/selection_nodsa/fashion_mnist
run() {
  local dir=$1
  shift
  ddbench run precision=fp32 progress=false hydra.run.dir="$dir" "$@"
}
score() {
  local dir=$1 set=$2
  shift 2
  ddbench evaluate synset="$set" precision=fp32 progress=false hydra.run.dir="$dir" "$@"
}
# 1. feature spaces
run "$diag/mnist/herding_normalized/ipc1" dataset=mnist ipc=1 method=herding method.normalize=true protocol=standard
run "$diag/mnist/herding_random_features/ipc1" dataset=mnist ipc=1 method=herding method.features=random protocol=standard
run "$diag/fashion_mnist/herding_normalized/ipc10" dataset=fashion_mnist ipc=10 method=herding \
  method.normalize=true protocol=standard 'protocol.seeds=[0]'
run "$nodsa/herding_pixels/ipc10" dataset=fashion_mnist ipc=10 method=herding method.features=pixels \
  protocol=nodsa 'protocol.seeds=[0,1,2]'
# 2. forgetting's tie-break (the cached 5-epoch scores of method=forgetting method.epochs=5)
tb=$diag/fashion_mnist/forgetting_tiebreak
python bench/forgetting_tiebreak.py --dataset fashion_mnist --ipc 1 --tiebreaks 1 2 3 4 --out "$tb"
for t in 1 2 3 4; do score "$tb/t$t" "$tb/t$t.safetensors" protocol=standard; done
# 3. DC's recipe
s=$sel/fashion_mnist
score "$nodsa/herding/ipc1" "$s/herding/ipc1/synset.safetensors" protocol=nodsa
score "$nodsa/forgetting_count/ipc1" "$s/forgetting_count/ipc1/synset.safetensors" protocol=nodsa
score "$nodsa/herding/ipc10" "$s/herding/ipc10/synset.safetensors" protocol=nodsa 'protocol.seeds=[0,1,2]'
score "$nodsa/kcenter/ipc10" "$s/kcenter/ipc10/synset.safetensors" protocol=nodsa 'protocol.seeds=[0,1,2]'
score "$nodsa/forgetting_count/ipc10" "$s/forgetting_count/ipc10/synset.safetensors" protocol=nodsa \
  'protocol.seeds=[0,1,2]'
run "$nodsa/random/ipc1" dataset=fashion_mnist ipc=1 method=random protocol=nodsa
run "$nodsa/random/ipc10" dataset=fashion_mnist ipc=10 method=random protocol=nodsa 'protocol.seeds=[0,1,2]'
for d in "$diag" "$root/selection_nodsa"; do python bench/summarize.py "$d"; done
