#!/usr/bin/env bash
# Every leaderboard entry, in stages, cheap first: each image method of conf/method/ on
# Fashion-MNIST and MNIST at IPC 1 and 10 under its pinned protocol (label-heavy methods also
# under hard-label `standard`), at CPU budgets; the views the scores need (random subsets under
# every protocol used, `noaug` views for ARS); the cross-architecture views of the
# Fashion-MNIST IPC 10 sets. Each stage submits its entries into $BOARD and rebuilds the board.
#
# Usage: bash bench/leaderboard_all.sh STAGE...      (prints the plan and its estimate first)
#   stages, in order:  refs selection matching trajectory recover views crossarch transfer
#                      (transfer: bench/transfer.py's KRR-ST and DP4TL tables, every row with a
#                      set submitted under the pinned transfer protocol; docs/transfer.md)
#   all                every stage above, in order;   plan   the estimate only, runs nothing
#   full               the whole train split under `standard` (HLR's reference): days of CPU,
#                      not in `all`; needs --max-set-bytes above the set's ~170 MB (see docs)
# Environment:
#   OUT=outputs/leaderboard   run folders (resumable: a finished run is skipped, an interrupted
#                             one resumes from its checkpoint; a submitted one is not resubmitted)
#   BOARD=leaderboard         the board;   DATASETS="fashion_mnist mnist";   IPCS="1 10"
#   CROSS_MODELS="convnet_bn lenet alexnet vgg11 resnet18"   the other models
#   CROSS_METHODS="random herding dm dc mtt sre2l"   the sets evaluated on them
#                             (one per family by default: on CPU a 1000-epoch ResNet-18 or VGG11
#                             evaluation costs ~6x ConvNet's; "${!PROTOCOL[@]}" = every method)
#   SMOKE=1                   proof at a tiny budget: digits, IPC 1 (SMOKE_IPCS="1 10": both),
#                             protocol quick for every run, 2 outer iterations, a width-16
#                             ConvNet (set BOARD and OUT elsewhere)
#
# A method added to conf/method/ later joins the `matching` stage at its own defaults (its
# entry says "CPU budget: the method's defaults"): give it a CPU budget in budget() below.
# The budgets are CPU budgets, far below the papers' (each entry says so on the page: "CPU
# budget: ..."); they follow bench/reproduce_matching.sh, reproduce_trajectory.sh,
# reproduce_sre2l.sh and reproduce_selection.sh. Estimates are CPU minutes on a 2-core AMD EPYC
# (bench/results/random and matching: one 5-seed 1000-epoch evaluation takes ~15 min at IPC 1
# and ~60 min at IPC 10 there) and only a guide.
set -euo pipefail
OUT=${OUT:-outputs/leaderboard}
BOARD=${BOARD:-leaderboard}
PY=${PYTHON:-python}
DATASETS=${DATASETS:-fashion_mnist mnist}
IPCS=${IPCS:-1 10}
SMOKE=${SMOKE:-0}
CROSS_METHODS=${CROSS_METHODS:-random herding dm dc mtt sre2l}
CROSS_MODELS=${CROSS_MODELS:-convnet_bn lenet alexnet vgg11 resnet18}
COMMON=(precision=fp32 progress=false)
MODEL=()  # the entries' own model settings (the protocol's model by default)
if [[ $SMOKE == 1 ]]; then
  DATASETS=digits IPCS=${SMOKE_IPCS:-1}
  MODEL=(model.kwargs.net_width=16)
  CROSS_MODELS=${SMOKE_CROSS_MODELS:-convnet_bn mlp}  # LeNet, AlexNet, VGG need more than 8x8
fi
[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
stages=("$@")
[[ ${stages[*]} == all ]] && stages=(refs selection matching trajectory recover views crossarch transfer)

# The image methods of conf/method/ and their pinned protocols (methods added later included).
mapfile -t METHODS < <("$PY" - <<'EOF'
import importlib.resources
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from ddbench.method import build_method
from ddbench.methods import register_schemas
register_schemas()
folder = importlib.resources.files("ddbench.conf") / "method"
with initialize_config_module("ddbench.conf", version_base=None):
    for f in sorted(folder.iterdir(), key=lambda f: f.name):
        if not f.name.endswith(".yaml"):
            continue
        name = f.name[:-5]
        m = build_method(OmegaConf.to_container(compose("run", [f"method={name}"]).method,
                                                resolve=True))
        if getattr(m, "kind", "image") == "image" and name != "full":  # graph, transfer: not here
            print(name, getattr(m, "protocol", None) or "standard")
from ddbench.protocol import Protocol, protocol_config
folder = importlib.resources.files("ddbench.conf") / "protocol"
for f in sorted(folder.iterdir(), key=lambda f: f.name):
    if f.name.endswith(".yaml") and Protocol.from_config(protocol_config(f.name[:-5])).lr_from_set:
        print("lr-from-set", f.name[:-5])
EOF
)
declare -A PROTOCOL LR_FROM_SET
for line in "${METHODS[@]}"; do
  if [[ $line == lr-from-set* ]]; then LR_FROM_SET[${line#* }]=1; else PROTOCOL[${line%% *}]=${line#* }; fi
done

# CPU budgets: method -> overrides (IPC-dependent ones are set in budget()).
TRAJ=(method.num_experts=1 method.expert_epochs=2 method.iterations=200 method.syn_steps=20
  method.experts.epochs=4 method.max_start_epoch=2)
budget() {  # method ipc -> sets B (overrides) and NOTE (the entry's budget text)
  local m=$1 ipc=$2
  B=() NOTE="CPU budget: the method's defaults"
  case $m in
    random | herding | kcenter | grand) NOTE="no distillation budget" ;;
    forgetting) B=(method.count=epoch method.schedule=constant method.augment=none method.epochs=5)
      NOTE="CPU budget: forgetting counted over 5 epochs (paper: 200)" ;;
    el2n) B=(method.epochs=5); NOTE="CPU budget: scores after 5 epochs (paper: 20)" ;;
    dm) B=(method.iterations=200 method.batch_real=64); NOTE="CPU budget: 200 of 20000 iterations" ;;
    datadam) B=(method.iterations=200 method.power=4); NOTE="CPU budget: 200 of 20000 iterations" ;;
    dsa) local n=$([[ $ipc == 1 ]] && echo 100 || echo 10)
      B=(method.iterations=$n method.batch_real=64); NOTE="CPU budget: $n of 1000 iterations" ;;
    dc) if [[ $ipc == 1 ]]; then B=(method.iterations=200 method.batch_real=64); local n=200
      else B=(method.iterations=4 method.batch_real=256); local n=4; fi
      NOTE="CPU budget: $n of 1000 iterations" ;;
    mtt) B=("${TRAJ[@]}") ;;
    ftd) B=("${TRAJ[@]}" method.ema_decay=0.99) ;;
    datm) B=("${TRAJ[@]}" method.experts.sam_rho=0 method.experts.gsam_alpha=0
      method.experts.sam_adaptive=false method.min_start_epoch=0 method.max_start_epoch=1
      method.max_start_epoch_final=2 method.expansion_iterations=100 method.batch_syn=null) ;;
    ast) B=("${TRAJ[@]}" method.experts.step=plain method.experts.step_kwargs.grad_penalty=0
      method.experts.step_kwargs.loss_decay=false method.experts.step_kwargs.reset_momentum=false
      method.experts.lr=0.01 method.experts.momentum=0 method.experts.weight_decay=0
      method.experts.schedule=constant) ;;
    sre2l | cda | cvdd) B=(method.iterations=200); NOTE="CPU budget: 200 of 1000 recovery iterations" ;;
  esac
  case $m in
    mtt | ftd | datm | ast) local lr_lr=$([[ $ipc == 1 ]] && echo 1e-7 || echo 1e-5)
      B+=(method.lr_lr=$lr_lr)
      NOTE="CPU budget: 1 expert of 4 epochs, 200 iterations of 20 steps (paper: 100 experts, 5000+ iterations)" ;;
  esac
  if [[ $SMOKE == 1 ]]; then  # every iteration or epoch count down to 2 (1 for forgetting)
    local kept=() o
    for o in ${B[@]+"${B[@]}"}; do [[ $o == method.iterations=* || $o == method.epochs=* ]] || kept+=("$o"); done
    B=(${kept[@]+"${kept[@]}"})
    case $m in
      dm | datadam | dsa | dc | mtt | ftd | datm | ast | sre2l | cda | cvdd) B+=(method.iterations=2) ;;
      forgetting | el2n) B+=(method.epochs=1) ;;
    esac
    NOTE="smoke budget"
  fi
}
stage_of() {
  case $1 in
    random) echo refs ;; herding | kcenter | forgetting | el2n | grand) echo selection ;;
    dm | dc | dsa | datadam) echo matching ;; mtt | ftd | datm | ast) echo trajectory ;;
    sre2l | cda | cvdd) echo recover ;; *) echo matching ;;
  esac
}
# estimated CPU minutes: distillation (method, ipc) and one evaluation (protocol, ipc)
distill_min() {
  if [[ $SMOKE == 1 ]]; then echo 1; return; fi
  case $1 in
    random | grand) echo 0 ;; herding | kcenter) echo 10 ;; forgetting | el2n) echo 20 ;;
    dm) echo 8 ;; datadam) echo 15 ;; dsa) echo 30 ;; dc) echo 25 ;;
    mtt | datm | ast) echo 40 ;; ftd) echo 60 ;; sre2l | cda | cvdd) echo 40 ;; *) echo 30 ;;
  esac
}
eval_min() {  # protocol ipc model
  local base=$([[ $2 == 1 ]] && echo 15 || echo 60)
  case $1 in sre2l | kd* | datm) base=$((base * 2)) ;; quick) base=1 ;; esac
  case ${3:-convnet} in resnet18 | vgg11) base=$((base * 6)) ;; alexnet) base=$((base * 2)) ;; esac
  echo "$base"
}

declare -A EST
PLAN=1
proto_for() { [[ $SMOKE == 1 ]] && echo quick || echo "$1"; }

# One entry: distil + evaluate under its protocol, then submit. $1 stage, $2 dir, $3 protocol,
# then ddbench run overrides.
entry() {
  local stage=$1 dir=$2 protocol=$3 m=$4 ds=$5 ipc=$6
  shift 6
  if [[ $PLAN == 1 ]]; then
    [[ -f $dir/.submitted ]] && return 0
    local mins=$(( $(eval_min "$protocol" "$ipc") + $( [[ -f $dir/synset.safetensors ]] && echo 0 \
      || distill_min "$m") ))
    EST[$stage]=$(( ${EST[$stage]:-0} + mins ))
    return 0
  fi
  [[ -f $dir/.submitted ]] && { echo "done: $dir"; return 0; }
  ddbench run method="$m" dataset="$ds" ipc="$ipc" protocol="$protocol" "${COMMON[@]}" \
    ${MODEL[@]+"${MODEL[@]}"} "$@" hydra.run.dir="$dir"
  submit "$dir/result.json" "$dir/synset.safetensors" "$dir"
}
submit() {  # result set dir: submit once (a set already there under this view is not an error)
  local out
  if out=$(ddbench submit "$1" --synset "$2" --board "$BOARD" --budget "$NOTE" 2>&1); then
    echo "$out"
  elif [[ $out == *"already on the board"* ]]; then
    echo "already on the board: $1"
  else
    echo "$out" >&2
    return 1
  fi
  touch "$3/.submitted"
}
# Another view of a submitted set: evaluate it under $3 (and model $4), attach it to its entry.
view() {
  local stage=$1 dir=$2 protocol=$3 model=${4:-} ipc=$5
  local vdir=$dir/views/$protocol${model:+-$model}
  [[ -f $dir/synset.safetensors || $PLAN == 1 ]] || return 0
  if [[ $PLAN == 1 ]]; then
    [[ -f $vdir/.submitted ]] || EST[$stage]=$(( ${EST[$stage]:-0} + $(eval_min "$protocol" "$ipc" "$model") ))
    return 0
  fi
  [[ -f $vdir/.submitted ]] && { echo "done: $vdir"; return 0; }
  local how=(model="$model")
  [[ -n $model ]] || how=(${MODEL[@]+"${MODEL[@]}"})
  ddbench evaluate synset="$dir/synset.safetensors" protocol="$protocol" "${how[@]}" \
    "${COMMON[@]}" hydra.run.dir="$vdir"
  submit "$vdir/result.json" "$dir/synset.safetensors" "$vdir"
}

# The transfer track (stage `transfer`): bench/transfer.py's two tables at their CPU budgets
# (docs/transfer.md), resumable row by row; each row with a set is submitted (its result is a
# `ddbench transfer` result). SMOKE: the tables' smoke runs, whose protocol is not pinned, so
# nothing is submitted.
TRANSFER_OUT=${TRANSFER_OUT:-bench/results/transfer}
KRR_ARGS=(--ipc 10 --iterations 1000 --krr batch_real=256 online_iteration=100
  --encoder epochs=5 model_kwargs.net_width=64)
DP4TL_ARGS=(--ipc 20 --encoder epochs=5 model_kwargs.net_width=64)
run_transfer() {
  local krr=$TRANSFER_OUT/krr_ipc10 dp=$TRANSFER_OUT/dp4tl_ipc20 row sfile n
  # minutes on one thread (AMD EPYC, docs/benchmarks.md section 7): 45 a missing row with
  # pre-training, 20 a missing no-pre-training row, 35 a missing KRR-ST set, 60 DP4TL's models
  if [[ $PLAN == 1 ]]; then
    n=0
    for row in {fashion_mnist_to_mnist,mnist_to_fashion_mnist}_{krr_st,random,herding,scratch}; do
      [[ -f $krr/rows/$row.json ]] || { [[ $row == *scratch ]] && n=$((n + 20)) || n=$((n + 45)); }
      [[ $row != *krr_st || -f $krr/sets/$row.safetensors ]] || n=$((n + 35))
    done
    for row in mnist_fashion20_to_digits28_{dp4tl_lm,dp4tl_fm,dp4tl_random,full_source,scratch}; do
      [[ -f $dp/rows/$row.json ]] || { [[ $row == *scratch ]] && n=$((n + 20)) || n=$((n + 45)); }
    done
    [[ -f $dp/sets/mnist_fashion20_to_digits28_dp4tl_fm.safetensors ]] || n=$((n + 60))
    EST[transfer]=$n
    return 0
  fi
  if [[ $SMOKE == 1 ]]; then
    "$PY" bench/transfer.py krr --smoke --pairs mnist_to_digits28 --iterations 5 --out "$OUT/transfer"
    "$PY" bench/transfer.py dp4tl --smoke --pair mnist_to_digits28 --out "$OUT/transfer"
    echo "smoke: the transfer tables' smoke protocol is not pinned; nothing submitted"
    return 0
  fi
  "$PY" bench/transfer.py krr "${KRR_ARGS[@]}" --out "$TRANSFER_OUT"
  "$PY" bench/transfer.py dp4tl "${DP4TL_ARGS[@]}" --out "$TRANSFER_OUT"
  for row in "$krr"/rows/*.json "$dp"/rows/*.json; do
    [[ -f $row && $row != *_scratch.json ]] || continue  # no pre-training: no set to submit
    sfile=$(dirname "$(dirname "$row")")/sets/$(basename "${row%.json}").safetensors
    case $row in
      *_krr_st.json) NOTE="CPU budget: 1000 of 160000 iterations, real batch 256 (1024), online 100 (1000); encoder: SimCLR ConvNet-64, 5 epochs (paper: Barlow Twins ResNet-18)" ;;
      *_dp4tl_*) NOTE="no distillation budget; surrogate: ConvNet 5 epochs, encoder: SimCLR ConvNet-64 5 epochs" ;;
      *) NOTE="no distillation budget" ;;
    esac
    local mark=$OUT/transfer/submitted/$(basename "${row%.json}")
    mkdir -p "$mark"
    # a row the board refuses (a near-copy, say) is reported and the others still go in
    [[ -f $mark/.submitted ]] || submit "$row" "$sfile" "$mark" || echo "not submitted: $row" >&2
  done
}

run_stage() {
  local stage=$1 ds ipc m
  if [[ $stage == transfer ]]; then run_transfer; return 0; fi
  for ds in $DATASETS; do
    for ipc in $IPCS; do
      case $stage in
        refs)  # random subsets under every protocol the methods use, and under noaug (ARS)
          local protos
          protos=$(printf '%s\n' "${PROTOCOL[@]}" standard noaug | sort -u)
          [[ $SMOKE == 1 ]] && protos=quick
          NOTE="no distillation budget"
          for p in $protos; do
            # a random subset stores no learned lr: no random reference (IOR "-") under these
            [[ -z ${LR_FROM_SET[$p]:-} ]] || continue
            entry refs "$OUT/$ds/ipc$ipc/$p/random" "$p" random "$ds" "$ipc" seed=0
          done ;;
        selection | matching | trajectory | recover)
          for m in "${!PROTOCOL[@]}"; do
            [[ $(stage_of "$m") == "$stage" && $m != random ]] || continue
            budget "$m" "$ipc"
            local p
            p=$(proto_for "${PROTOCOL[$m]}")
            entry "$stage" "$OUT/$ds/ipc$ipc/$p/$m" "$p" "$m" "$ds" "$ipc" seed=0 ${B[@]+"${B[@]}"}
          done ;;
        views)  # hard-label `standard` views of label-heavy sets; `noaug` views for ARS
          for m in "${!PROTOCOL[@]}"; do
            local p
            p=$(proto_for "${PROTOCOL[$m]}")
            budget "$m" "$ipc"
            case $m in sre2l | cda | cvdd) view views "$OUT/$ds/ipc$ipc/$p/$m" "$(proto_for standard)" "" "$ipc" ;; esac
            [[ $p == standard ]] && view views "$OUT/$ds/ipc$ipc/$p/$m" noaug "" "$ipc"
          done ;;
        crossarch)  # Fashion-MNIST IPC 10 (digits IPC 1 in SMOKE): the sets of CROSS_METHODS
          [[ ($ds == fashion_mnist && $ipc == 10) || $SMOKE == 1 ]] || continue
          for m in $CROSS_METHODS; do
            [[ -n ${PROTOCOL[$m]:-} ]] || continue
            local p
            p=$(proto_for "${PROTOCOL[$m]}")
            budget "$m" "$ipc"
            for model in $CROSS_MODELS; do
              view crossarch "$OUT/$ds/ipc$ipc/$p/$m" "$p" "$model" "$ipc"
            done
          done ;;
        full)
          NOTE="the whole train split"
          if [[ $PLAN == 1 ]]; then EST[full]=$(( ${EST[full]:-0} + 60 * 24 * 3 )); continue; fi
          ddbench run method=full dataset="$ds" protocol=standard "${COMMON[@]}" \
            hydra.run.dir="$OUT/$ds/full/standard/full"
          ddbench submit "$OUT/$ds/full/standard/full/result.json" --board "$BOARD" \
            --synset "$OUT/$ds/full/standard/full/synset.safetensors" --max-set-bytes 400000000 \
            --budget "$NOTE" || true ;;
        *) echo "unknown stage $stage (refs selection matching trajectory recover views crossarch transfer all full plan)" >&2
          exit 2 ;;
      esac
    done
    if [[ $stage == full ]]; then break; fi
  done
  return 0
}

# the plan: estimated CPU minutes of what is left in each stage
for s in refs selection matching trajectory recover views crossarch transfer full; do
  if [[ " ${stages[*]} " == *" $s "* || (" ${stages[*]} " == *" plan "* && $s != full) ]]; then
    run_stage "$s"
  fi
done
echo "estimated CPU time left per stage (2-core AMD EPYC; a guide only):"
for s in refs selection matching trajectory recover views crossarch transfer full; do
  [[ -z ${EST[$s]:-} ]] || awk -v s="$s" -v m="${EST[$s]}" 'BEGIN { printf "  %-11s %6d min (%.1f h)\n", s, m, m / 60 }'
done
if [[ " ${stages[*]} " == *" plan "* ]]; then exit 0; fi
PLAN=0
for s in "${stages[@]}"; do
  echo "=== stage $s"
  run_stage "$s"
  ddbench leaderboard build --board "$BOARD"
done
