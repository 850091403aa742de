#!/usr/bin/env bash
# Prepare a checkout of the authors' code (VICO-UoE/DatasetCondensation) for the parity runs.
# Usage: bench/parity/official_dc_setup.sh OFFICIAL_CHECKOUT
#
# The same local edits for every run, applied idempotently (each guarded by a marker comment
# "ddbench-parity"); nothing else in their code is changed:
#   E1 utils.py get_dataset: MNIST and FashionMNIST are read from DATA_PATH/parity_<NAME>.pt
#      (ddbench's prepared train/test splits, normalised with get_dataset's own mean/std,
#      written by bench/parity/export_data.py) instead of torchvision's download; every
#      other dataset and every other line of get_dataset is untouched.
#   E2 main.py, main_DM.py: a --seed argument (default -1: the original, unseeded behaviour);
#      seed >= 0 calls torch.manual_seed(seed) and np.random.seed(seed) after parsing.
#   E3 main.py, main_DM.py: the siamese DSA seed, int(time.time() * 1000) % 100000 (the clock),
#      is drawn as np.random.randint(100000) when --seed >= 0 (still one draw per class shared
#      by the real and the synthetic batch, as in their code), so a run is reproducible.
#   E4 main.py, main_DM.py: a --parity_eval argument (default -1: their eval_it_pool). 0: no
#      evaluation during distillation; 1: one evaluate_synset round at the last iteration only
#      (num_eval models, their epochs: 300 for DC without augmentation, 1000 otherwise).
#   E5 networks.py: ConvNet's out.view(out.size(0), -1) -> out.reshape(out.size(0), -1) (the
#      same values; the installed torch hands DiffAugment's output to the flatten in a layout
#      that view refuses).
#   E6 utils.py DiffAugment's siamese lines ``x[:] = x[0]`` -> ``x[:] = x[0].clone()`` (the same
#      values; the installed torch refuses the self-overlapping copy when the batch has one
#      image, i.e. IPC 1).
#   E9 main.py, main_DM.py: --parity_init FILE (default none): the synthetic images start from
#      the tensor in FILE (parity.py PARITY_OFFICIAL_INIT), set after their initialisation,
#      which still draws its images, so the random streams after it are those of --seed; both
#      sides can then run several seeds from one start.
# FYI's fork (cvlab-yonsei/FYI, folder DC_DSA_DM: the same files, recognised by BatchAug in
# utils.py) gets E1, E2, E3, E5 and E9 as above; its own code differs where:
#   E4 is not applied: the fork evaluates at the last iteration only (their `it == args.Iteration`);
#      parity.py passes --num_eval 0 (no evaluation) or 1 (PARITY_OFFICIAL_EVAL=1) instead.
#   E6 is not needed: the fork already has x[0].clone().
#   E7 main.py, main_DM.py: the fork leaves the iteration loop with `break` right after its last
#      evaluation, before the line that saves res_*.pt, so the set is never saved; the same
#      save (data_save, torch.save of res_<METHOD>_<DATASET>_<MODEL>_<K>ipc.pt) is run just before
#      that break. The set saved is the one their evaluation trains on (Iteration updates).
#   E8 wandb.py next to their scripts: an offline stand-in for the wandb calls (init keeps the
#      parsed arguments as wandb.config._items, from which their scripts rebuild args; log,
#      Image, Table and finish do nothing), so no account or network is needed.
# The device needs no edit: their code picks 'cpu' when CUDA is absent. The data files are
# written by ddbench's python (DDBENCH_PY, default python3).
set -euo pipefail
OFF=${1:?usage: official_dc_setup.sh OFFICIAL_CHECKOUT}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
PY=${DDBENCH_PY:-python3}
python3 - "$OFF" "$HERE/bench/parity" <<'PYEOF'
import sys
from pathlib import Path

off = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from patching import make_edit, write_wandb_standin  # noqa: E402
fork = "def BatchAug(" in (off / "utils.py").read_text()  # FYI's fork of the code (E7, E8)

edit = make_edit(off, unique=False)  # bench/parity/patching.py


# E1
edit(
    "utils.py",
    "def get_dataset(dataset, data_path):\n",
    "def get_dataset(dataset, data_path):\n"
    "    # ddbench-parity E1: ddbench's splits, normalised as below, from a local file\n"
    "    _parity = os.path.join(data_path, 'parity_%s.pt' % dataset)\n"
    "    if dataset in ('MNIST', 'FashionMNIST') and os.path.exists(_parity):\n"
    "        _d = torch.load(_parity)\n"
    "        channel, im_size, num_classes = 1, (28, 28), 10\n"
    "        mean, std, class_names = _d['mean'], _d['std'], _d['classes']\n"
    "        dst_train = TensorDataset(_d['images_train'], _d['labels_train'])\n"
    "        dst_test = TensorDataset(_d['images_test'], _d['labels_test'])\n"
    "        testloader = torch.utils.data.DataLoader(dst_test, batch_size=256, shuffle=False, num_workers=0)\n"
    "        return channel, im_size, num_classes, class_names, mean, std, dst_train, dst_test, testloader\n",
    "ddbench-parity E1",
)
for f in ("main.py", "main_DM.py"):
    # E2 + E4
    edit(
        f,
        "    args = parser.parse_args()\n",
        "    parser.add_argument('--seed', type=int, default=-1, help='ddbench-parity: fixed seed (-1: unseeded)')\n"
        "    parser.add_argument('--parity_eval', type=int, default=-1, help='ddbench-parity: -1 their eval_it_pool, 0 none, 1 last iteration')\n"
        "    args = parser.parse_args()\n"
        "    if args.seed >= 0:  # ddbench-parity E2\n"
        "        torch.manual_seed(args.seed)\n"
        "        np.random.seed(args.seed)\n",
        "ddbench-parity E2",
    )
    if not fork:  # FYI's fork evaluates at the last iteration only (no eval_it_pool)
        edit(
            f,
            "    print('eval_it_pool: ', eval_it_pool)\n",
            "    if args.parity_eval >= 0:  # ddbench-parity E4\n"
            "        eval_it_pool = [args.Iteration] if args.parity_eval == 1 else []\n"
            "    print('eval_it_pool: ', eval_it_pool)\n",
            "ddbench-parity E4",
    )
    # E3
    edit(
        f,
        "seed = int(time.time() * 1000) % 100000\n",
        "seed = int(np.random.randint(100000)) if args.seed >= 0 else int(time.time() * 1000) % 100000  # ddbench-parity E3\n",
        "ddbench-parity E3",
    )
    # E9
    arg = "    parser.add_argument('--parity_eval', type=int, default=-1, help='ddbench-parity: -1 their eval_it_pool, 0 none, 1 last iteration')\n"
    edit(
        f,
        arg,
        arg + "    parser.add_argument('--parity_init', type=str, default='', help='start images')  # ddbench-parity E9 arg\n",
        "ddbench-parity E9 arg",
    )
    edit(
        f,
        "        ''' training '''\n",
        "        if args.parity_init:  # ddbench-parity E9 start: the images from a file (their draw above is still made)\n"
        "            image_syn.data[:] = torch.load(args.parity_init).to(image_syn.device)\n"
        "        ''' training '''\n",
        "ddbench-parity E9 start",
    )
# E5
p = off / "networks.py"
s = p.read_text()
old = "        out = out.view(out.size(0), -1)\n"
marker = "# ddbench-parity E5"
if marker not in s:
    i = s.index("class ConvNet(")
    j = s.index("\nclass ", i + 1)
    body = s[i:j].replace(old, "        out = out.reshape(out.size(0), -1)  " + marker + "\n")
    if body == s[i:j]:
        sys.exit(f"{p}: the text to patch is missing: {old!r}")
    p.write_text(s[:i] + body + s[j:])
# E6
import re

p = off / "utils.py"
s = p.read_text()
if "ddbench-parity E6" not in s:
    s, n = re.subn(r"^( +)(\w+)\[:\] = (\w+)\[0\]\n", lambda m: f"{m[1]}{m[2]}[:] = {m[3]}[0].clone()  # ddbench-parity E6\n" if m[2] == m[3] else m[0], s, flags=re.M)
    if n == 0 and not fork:
        sys.exit(f"{p}: the text to patch is missing: x[:] = x[0]")
    p.write_text(s)
if fork:
    # E7
    for f in ("main.py", "main_DM.py"):
        edit(
            f,
            "                wandb.log({\"Synthetic_Images\": wandb.Image(make_grid(image_syn_vis, nrow=10))}, step=exp)\n"
            "                break\n",
            "                wandb.log({\"Synthetic_Images\": wandb.Image(make_grid(image_syn_vis, nrow=10))}, step=exp)\n"
            "                data_save.append([copy.deepcopy(image_syn.detach().cpu()), copy.deepcopy(label_syn.detach().cpu())])  # ddbench-parity E7\n"
            "                torch.save({'data': data_save, 'accs_all_exps': accs_all_exps, }, os.path.join(args.save_path, 'res_%s_%s_%s_%dipc.pt'%(args.method, args.dataset, args.model, args.ipc)))\n"
            "                break\n",
            "ddbench-parity E7",
        )
    # E8
    write_wandb_standin(
        off / "wandb.py",
        "ddbench-parity E8: offline stand-in for the wandb calls of main.py and main_DM.py.",
        None,
        "Table",
    )
print(f"patched {off}")
PYEOF
mkdir -p "$OFF/data"
for d in mnist:MNIST fashion_mnist:FashionMNIST; do
  [ -f "$OFF/data/parity_${d#*:}.pt" ] || "$PY" "$HERE/bench/parity/export_data.py" "$OFF/data" "${d%%:*}"
done
