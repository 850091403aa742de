#!/usr/bin/env bash
# Prepare a checkout of MTT's code (GeorgeCazenavette/mtt-distillation), of FTD's fork of it
# (AngusDujw/FTD-distillation), of AST's or of DATM's (NUS-HPC-AI-Lab/DATM) for the parity runs
# of trajectory matching (trajectory.sh, expert_parity.sh).
# Usage: bench/parity/official_mtt_setup.sh OFFICIAL_CHECKOUT
#
# The same local edits for every run, applied idempotently (each marked "ddbench-parity M<n>" in
# their code); nothing else in their code is changed:
#   M1 utils.py get_dataset: MNIST and FashionMNIST (which their get_dataset does not have) are
#      read from DATA_PATH/parity_<NAME>.pt (ddbench's prepared train/test splits, written by
#      bench/parity/export_data.py) with the identity class map; every other dataset untouched.
#   M2 distill.py: --seed S (default -1: their unseeded behaviour); S >= 0 seeds torch, numpy and
#      python's random (their expert files and experts are shuffled with it) after parsing.
#   M3 utils.py get_network: the network seed int(time.time() * 1000) % 100000 (the clock, reset
#      at every iteration's student network, so it also drives the DSA draws after it) is
#      np.random.randint(100000) (seeded by --seed, else by numpy's entropy: random per run).
#   M4 distill.py: --parity_eval 0|1 (default -1: their eval_it_pool): no evaluation, or one at
#      the last iteration only; either way the images, labels and learned lr after exactly
#      --Iteration updates are saved as images_<N>.pt, labels_<N>.pt, lr_<N>.pt in
#      --parity_save DIR (the files `ddbench import mtt` reads) and the loop stops (their loop
#      runs Iteration + 1 updates and saves no lr).
#   M5 distill.py: image_syn.cuda() in their save block -> image_syn.to(args.device).
#   M6 wandb.py next to distill.py: an offline stand-in for the wandb calls (init keeps the
#      parsed arguments as wandb.config._items, from which distill.py rebuilds args; log,
#      Image, Histogram and finish do nothing; run.name is "parity"), so no account or network.
#   M7 buffer.py (their expert training, expert_parity.sh): --seed S as M2 (torch, numpy; the
#      network seed of M3 then comes from numpy).
#   B1 buffer.py: p.detach().cpu() -> p.detach().cpu().clone() where each epoch's parameters
#      are stored: on the CPU .cpu() returns the live tensor, so every stored epoch would be the
#      last one (found by expert_parity.sh: their epochs 0 and 1 were identical); on a GPU
#      .cpu() copies, so the values are theirs.
#   M9 distill.py: --parity_init FILE (default none): the synthetic images start from the tensor
#      in FILE (parity.py PARITY_OFFICIAL_INIT), set after their initialisation (which still
#      draws, so the random streams after it are those of --seed); FTD's EMA and DATM's labels
#      are made from those images. Both sides can then run several seeds from one start.
#   M8 networks.py ConvNet.forward: out.view(out.size(0), -1) -> out.reshape(out.size(0), -1)
#      (the same values; with torch 2.14 on CPU the convolution's output can come back in a
#      channels-last layout, which view refuses: "view size is not compatible with input
#      tensor's size and stride"). FTD's fork reads the same networks.py.
# FTD's fork (AngusDujw/FTD-distillation, recognised by distill/distill_FTD.py) gets the same
# edits in its files: M1 and M3 in utils/utils_baseline.py, M2, M4, M5 and M9 in
# distill/distill_FTD.py (M4 saves its image EMA, ema.module[0], as images_<N>.pt: FTD's set;
# M5 also edits the EMA's ema_image_syn.cuda()), M6 as distill/wandb.py (their script runs in
# distill/); M7 is not applied (its experts come from buffer/buffer_FTD.py, not run here).
# AST's code (shenjiyuan123/AST-Alignment-with-Smooth-Expert, MTT's files with AST's parts,
# recognised by --agg_middle_loss in distill.py) gets M1-M4 and M6-M9 in the same files (its
# save block has no .cuda(), so no M5), and:
#   A1 generator.py next to distill.py: their distill.py imports Generator from a generator.py
#      the repository does not have (used only by --pix_init gan); a stand-in that refuses to
#      be built, so the import succeeds and nothing else changes.
#   A2 distill.py get_repre_images (--pix_init avg): KMeans(..., random_state=0) ->
#      KMeans(..., random_state=0, n_init=10): scikit-learn's default when their code was
#      released (before 1.4; the installed version runs one init), ddbench's kmeans_rows too.
#   A3 distill.py get_repre_images: the expert's logits on all 5,400 images of a class are
#      computed under torch.no_grad() (the same values; their code keeps the autograd graph of
#      the whole batch, about 9 GB per class on CPU, two classes' worth alive at once).
# DATM's code (NUS-HPC-AI-Lab/DATM, FTD's layout, recognised by distill/DATM.py) reads every
# setting from a yacs config (--cfg, written by parity.py datm_config) and gets M1 (its
# get_dataset has an extra baseline=False), M3, M4 (the pool after its skip_first_eva branch;
# the save keeps label_syn, its learned label logits), M5, M6 (distill/wandb.py), M8 and M9, and:
#   D1 distill/DATM.py __main__: the first parse, which knows --cfg only, is parse_known_args,
#      and --seed / --parity_eval / --parity_save (M2, M4) are added to the second, the one
#      built from the config's keys (their only command line is --cfg, every setting is in it).
#   D2 distill/DATM.py main: manual_seed() (seed 0 for random, numpy and torch on every run) ->
#      manual_seed(S) with --seed S >= 0 (-1: their 0).
# Their config sets parall_eva: True, their switch that runs the label initialisation and the
# evaluation on args.device rather than cuda:0, so that part needs no edit.
# The device needs no edit: their code picks 'cpu' when CUDA is absent. The data files are
# written by ddbench's python (DDBENCH_PY, default python3).
set -euo pipefail
OFF=${1:?usage: official_mtt_setup.sh OFFICIAL_CHECKOUT}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
PY=${DDBENCH_PY:-python3}
python3 - "$OFF" "$HERE/bench/parity" <<'PYEOF'
import sys
from pathlib import Path

off = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from patching import make_edit, write_wandb_standin  # noqa: E402
# FTD's fork (AngusDujw/FTD-distillation): distill/distill_FTD.py over utils/utils_baseline.py
ftd = (off / "distill" / "distill_FTD.py").exists()
# DATM's code: FTD's layout, distill/DATM.py with a yacs config (D1, D2 below)
datm = (off / "distill" / "DATM.py").exists()
# AST's code: MTT's files with AST's parts (A1-A3 below)
ast = not ftd and not datm and "--agg_middle_loss" in (off / "distill.py").read_text()
UTILS = "utils/utils_baseline.py" if ftd or datm else "utils.py"
DISTILL = "distill/DATM.py" if datm else "distill/distill_FTD.py" if ftd else "distill.py"

edit = make_edit(off)  # bench/parity/patching.py


# M1
sig = "def get_dataset(dataset, data_path, batch_size=1, subset=\"imagenette\", args=None"
sig += ", baseline=False):\n" if datm else "):\n"
edit(
    UTILS,
    sig,
    sig
    + "    # ddbench-parity M1: ddbench's splits of MNIST/FashionMNIST, normalised, from a local file\n"
    "    _parity = os.path.join(data_path, 'parity_%s.pt' % dataset)\n"
    "    if dataset in ('MNIST', 'FashionMNIST') and os.path.exists(_parity):\n"
    "        _d = torch.load(_parity)\n"
    "        channel, im_size, num_classes = 1, (28, 28), 10\n"
    "        mean, std, class_names = _d['mean'], _d['std'], _d['classes']\n"
    "        dst_train = TensorDataset(_d['images_train'], _d['labels_train'])\n"
    "        dst_test = TensorDataset(_d['images_test'], _d['labels_test'])\n"
    "        testloader = torch.utils.data.DataLoader(dst_test, batch_size=128, shuffle=False, num_workers=0)\n"
    "        class_map = {c: c for c in range(num_classes)}\n"
    "        return channel, im_size, num_classes, class_names, mean, std, dst_train, dst_test, testloader, None, class_map, dict(class_map)\n",
    "ddbench-parity M1",
)
# M2 + M4 (arguments; DATM: D1 and D2)
PARITY_ARGS = (
    "    parser.add_argument('--seed', type=int, default=-1, help='ddbench-parity: fixed seed (-1: unseeded)')\n"
    "    parser.add_argument('--parity_eval', type=int, default=-1, help='ddbench-parity: -1 their eval_it_pool, 0 none, 1 last iteration')\n"
    "    parser.add_argument('--parity_save', type=str, default='parity_out', help='ddbench-parity: where the final set goes')\n"
)
if datm:
    edit(
        DISTILL,
        "    parser.add_argument(\"--cfg\", type=str, default=\"\")\n    args = parser.parse_args()\n",
        "    parser.add_argument(\"--cfg\", type=str, default=\"\")\n"
        "    args, _ = parser.parse_known_args()  # ddbench-parity D1: --cfg first\n",
        "ddbench-parity D1",
    )
    edit(
        DISTILL,
        "    args = parser.parse_args()\n    main(args)\n",
        PARITY_ARGS + "    args = parser.parse_args()  # ddbench-parity D1: the config's keys and the above\n"
        "    main(args)\n",
        "ddbench-parity D1: the config",
    )
    edit(
        DISTILL,
        "    manual_seed()\n",
        "    manual_seed(args.seed if args.seed >= 0 else 0)  # ddbench-parity D2\n",
        "ddbench-parity D2",
    )
else:
    edit(
        DISTILL,
        "    args = parser.parse_args()\n",
        PARITY_ARGS + "    args = parser.parse_args()\n"
        "    if args.seed >= 0:  # ddbench-parity M2\n"
        "        torch.manual_seed(args.seed)\n"
        "        np.random.seed(args.seed)\n"
        "        random.seed(args.seed)\n",
        "ddbench-parity M2",
    )
# M3
edit(
    UTILS,
    "    torch.random.manual_seed(int(time.time() * 1000) % 100000)\n",
    "    torch.random.manual_seed(int(np.random.randint(100000)))  # ddbench-parity M3\n",
    "ddbench-parity M3",
)
# M4 (the evaluation pool, the save and stop; FTD's set is its image EMA; DATM's pool is set in
# two branches, the parity's after both)
pool = (
    "        eval_it_pool = np.arange(args.eval_it, args.Iteration + 1, args.eval_it).tolist()\n"
    if datm
    else "    eval_it_pool = np.arange(0, args.Iteration + 1, args.eval_it).tolist()\n"
)
edit(
    DISTILL,
    pool,
    pool + "    if args.parity_eval >= 0:  # ddbench-parity M4\n"
    "        eval_it_pool = [args.Iteration] if args.parity_eval == 1 else []\n",
    "ddbench-parity M4",
)
final = "ema.module[0]" if ftd else "image_syn"
edit(
    DISTILL,
    "        wandb.log({\"Synthetic_LR\": syn_lr.detach().cpu()}, step=it)\n",
    "        if args.parity_eval >= 0 and it == args.Iteration:  # ddbench-parity M4 save\n"
    "            os.makedirs(args.parity_save, exist_ok=True)\n"
    f"            for _name, _t in (('images', {final}), ('labels', label_syn), ('lr', syn_lr)):\n"
    "                torch.save(_t.detach().cpu(), os.path.join(args.parity_save, '%s_%d.pt' % (_name, it)))\n"
    "            break\n"
    "        wandb.log({\"Synthetic_LR\": syn_lr.detach().cpu()}, step=it)\n",
    "ddbench-parity M4 save",
)
# M5 (AST's save block has no .cuda())
for i, name in enumerate(("image", "ema_image") if ftd else () if ast else ("image",)):
    edit(
        DISTILL,
        f"                {name}_save = {name}_syn.cuda()\n",
        f"                {name}_save = {name}_syn.to(args.device)  # ddbench-parity M5.{i}\n",
        f"ddbench-parity M5.{i}",
    )
# M9 (every one of the four codes)
arg = "    parser.add_argument('--parity_save', type=str, default='parity_out', help='ddbench-parity: where the final set goes')\n"
edit(
    DISTILL,
    arg,
    arg + "    parser.add_argument('--parity_init', type=str, default='', help='start images')  # ddbench-parity M9 arg\n",
    "ddbench-parity M9 arg",
)
start = "    image_syn = image_syn.detach().to(args.device).requires_grad_(True)\n"
edit(
    DISTILL,
    start,
    "    if args.parity_init:  # ddbench-parity M9 start: the images from a file (their draw above is still made)\n"
    "        image_syn = torch.load(args.parity_init)\n" + start,
    "ddbench-parity M9 start",
)
# M7
if not ftd and not datm:
    edit(
        "buffer.py",
        "    args = parser.parse_args()\n",
        "    parser.add_argument('--seed', type=int, default=-1, help='ddbench-parity: fixed seed (-1: unseeded)')\n"
        "    args = parser.parse_args()\n"
        "    if args.seed >= 0:  # ddbench-parity M7\n"
        "        import numpy as np\n"
        "        torch.manual_seed(args.seed)\n"
        "        np.random.seed(args.seed)\n",
        "ddbench-parity M7",
    )
# B1: on the CPU `.cpu()` returns the parameter itself, so every stored epoch would alias the
# live weights (all equal to the last epoch); a copy, as `.cpu()` makes from a GPU
if not ftd and not datm:
    make_edit(off, unique=False)(
        "buffer.py",
        "timestamps.append([p.detach().cpu() for p in teacher_net.parameters()])",
        "timestamps.append([p.detach().cpu().clone() for p in teacher_net.parameters()])  # ddbench-parity B1",
        "ddbench-parity B1",
    )
# M8 (ConvNet.forward only; their other networks are not used here)
edit(
    "networks.py",
    "        out = self.features(x)\n        out = out.view(out.size(0), -1)\n"
    "        out = self.classifier(out)\n        return out\n",
    "        out = self.features(x)\n"
    "        out = out.reshape(out.size(0), -1)  # ddbench-parity M8: view -> reshape, same values\n"
    "        out = self.classifier(out)\n        return out\n",
    "ddbench-parity M8",
)
# A1-A3 (AST)
if ast:
    stand_in = off / "generator.py"
    if not stand_in.exists():
        stand_in.write_text(
            '"""ddbench-parity A1: stand-in for the generator.py their distill.py imports."""\n\n\n'
            "class Generator:\n"
            "    def __init__(self, *args, **kwargs):\n"
            "        raise RuntimeError('ddbench-parity A1: --pix_init gan needs a generator.py "
            "the repository does not have')\n"
        )
    for i, (var, k) in enumerate((("kmeans", "ipc_visual"), ("kmeans_ipc", "ipc"))):
        line = f"            {var} = KMeans(n_clusters={k}, random_state=0"
        edit(
            "distill.py",
            f"{line}).fit(logist)\n",
            f"{line}, n_init=10).fit(logist)  # ddbench-parity A2.{i}\n",
            f"ddbench-parity A2.{i}",
        )
    edit(
        "distill.py",
        "            logist_per_class = expert_net(images_per_class)\n",
        "            with torch.no_grad():  # ddbench-parity A3: the same values, no graph\n"
        "                logist_per_class = expert_net(images_per_class)\n",
        "ddbench-parity A3",
    )
# M6
stub = off / DISTILL.rpartition("/")[0] / "wandb.py" if ftd or datm else off / "wandb.py"
write_wandb_standin(
    stub, "ddbench-parity M6: offline stand-in for the wandb calls of the distillation.",
    "parity", "Histogram",
)
print(f"patched {off}" + (" (FTD's fork)" if ftd else " (AST's code)" if ast else
                          " (DATM's code)" if datm else ""))
PYEOF
mkdir -p "$OFF/data"
for d in mnist:MNIST fashion_mnist:FashionMNIST; do
  [ -f "$OFF/data/parity_${d#*:}.pt" ] || "$PY" "$HERE/bench/parity/export_data.py" "$OFF/data" "${d%%:*}"
done
