#!/usr/bin/env bash
# Prepare a checkout of DataDAM's code (DataDistillation/DataDAM) for the parity runs.
# Usage: bench/parity/official_datadam_setup.sh OFFICIAL_CHECKOUT
#
# The same local edits for every run, applied idempotently (each marked "ddbench-parity D<n>");
# nothing else in their code is changed:
#   D1 utils.py get_dataset: MNIST and FashionMNIST (the latter absent from their get_dataset)
#      are read from DATA_PATH/parity_<NAME>.pt (ddbench's prepared train/test splits,
#      normalised with get_dataset's MNIST mean/std and ddbench's Fashion-MNIST ones, written
#      by bench/parity/export_data.py) instead of torchvision's download.
#   D2 main_DataDAM.py: a --seed argument (default -1: the original, unseeded behaviour);
#      seed >= 0 calls torch.manual_seed(seed) and np.random.seed(seed) after parsing.
#   D3 main_DataDAM.py: the siamese DSA seed, int(time.time() * 1000) % 100000 (the clock), is
#      np.random.randint(100000) when --seed >= 0 (one draw per class, as theirs).
#   D4 main_DataDAM.py: a --parity_eval argument (default -1: their eval_it_pool, every 2000
#      iterations). 0: no evaluation; 1: one evaluate_synset round (num_eval models,
#      --epoch_eval_train epochs) at the last iteration only. With 0 or 1 the set after exactly
#      --Iteration updates is appended to the res_DataDAM_*.pt file (their file keeps one set per
#      evaluation and is written only at evaluations) and the loop stops there (theirs makes one
#      more update after its last evaluation; with 0 the script returns there, as its closing
#      summary needs an evaluation); accs_all_exps is saved as plain floats.
#   D5 utils.py get_network: the network seed int(time.time() * 1000) % 100000 (the clock) is
#      np.random.randint(100000) (seeded by --seed, else by numpy's entropy: random per run as
#      before), and net.cuda() is net.to('cuda' if available else 'cpu').
#   D6 main_DataDAM.py: the unused `import matplotlib.pyplot as plt` is dropped (not installed).
#   D7 networks.py: the einops imports (used by their ViT only) may fail (not installed).
# The data files are written by ddbench's python (DDBENCH_PY, default python3).
set -euo pipefail
OFF=${1:?usage: official_datadam_setup.sh OFFICIAL_CHECKOUT}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
PY=${DDBENCH_PY:-python3}
python3 - "$OFF" "$HERE/bench/parity" <<'PYEOF'
import sys
from pathlib import Path

off = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from patching import make_edit  # noqa: E402

edit = make_edit(off)  # bench/parity/patching.py


edit(
    "utils.py",
    "def get_dataset(dataset, data_path, args):\n",
    "def get_dataset(dataset, data_path, args):\n"
    "    # ddbench-parity D1: ddbench's splits, normalised as get_dataset does, from a local file\n"
    "    _parity = os.path.join(data_path, 'parity_%s.pt' % dataset)\n"
    "    if dataset in ('MNIST', 'FashionMNIST') and os.path.exists(_parity):\n"
    "        _d = torch.load(_parity)\n"
    "        channel, im_size, num_classes = 1, (28, 28), 10\n"
    "        mean, std, class_names = _d['mean'], _d['std'], _d['classes']\n"
    "        dst_train = TensorDataset(_d['images_train'], _d['labels_train'])\n"
    "        dst_test = TensorDataset(_d['images_test'], _d['labels_test'])\n"
    "        testloader = torch.utils.data.DataLoader(dst_test, batch_size=256, shuffle=False, num_workers=0)\n"
    "        return channel, im_size, num_classes, class_names, mean, std, dst_train, dst_test, testloader, None\n",
    "ddbench-parity D1",
)
edit(
    "main_DataDAM.py",
    "    args = parser.parse_args()\n",
    "    parser.add_argument('--seed', type=int, default=-1, help='ddbench-parity: fixed seed (-1: unseeded)')\n"
    "    parser.add_argument('--parity_eval', type=int, default=-1, help='ddbench-parity: -1 their eval_it_pool, 0 none, 1 last iteration')\n"
    "    args = parser.parse_args()\n"
    "    if args.seed >= 0:  # ddbench-parity D2\n"
    "        torch.manual_seed(args.seed)\n"
    "        np.random.seed(args.seed)\n",
    "ddbench-parity D2",
)
edit(
    "main_DataDAM.py",
    "seed = int(time.time() * 1000) % 100000\n",
    "seed = int(np.random.randint(100000)) if args.seed >= 0 else int(time.time() * 1000) % 100000  # ddbench-parity D3\n",
    "ddbench-parity D3",
)
edit(
    "main_DataDAM.py",
    "    print('eval_it_pool: ', eval_it_pool)\n",
    "    if args.parity_eval >= 0:  # ddbench-parity D4\n"
    "        eval_it_pool = [args.Iteration] if args.parity_eval == 1 else []\n"
    "    print('eval_it_pool: ', eval_it_pool)\n",
    "ddbench-parity D4",
)
edit(
    "main_DataDAM.py",
    "            ''' Train synthetic data '''\n",
    "            if args.parity_eval >= 0 and it == args.Iteration:  # ddbench-parity D4: the set after Iteration updates\n"
    "                data_save.append([copy.deepcopy(image_syn.detach().cpu()), copy.deepcopy(label_syn.detach().cpu())])\n"
    "                torch.save({'data': data_save, 'accs_all_exps': {k: [float(a) for a in v] for k, v in accs_all_exps.items()}}, os.path.join(args.save_path, 'res_%s_%s_%s_%dipc_.pt'%(args.method, args.dataset, args.model, args.ipc)))\n"
    "                if args.parity_eval == 0:\n"
    "                    return  # nothing was evaluated: their summary below needs evaluations\n"
    "                break\n"
    "            ''' Train synthetic data '''\n",
    "ddbench-parity D4: the set",
)
edit(
    "utils.py",
    "    torch.random.manual_seed(int(time.time() * 1000) % 100000)\n",
    "    torch.random.manual_seed(int(np.random.randint(100000)))  # ddbench-parity D5\n",
    "ddbench-parity D5",
)
edit(
    "utils.py",
    "    net = net.cuda()\n",
    "    net = net.to('cuda' if torch.cuda.is_available() else 'cpu')  # ddbench-parity D5 net\n",
    "ddbench-parity D5 net",
)
edit(
    "main_DataDAM.py",
    "import matplotlib.pyplot as plt\n",
    "# ddbench-parity D6: unused matplotlib import dropped\n",
    "ddbench-parity D6",
)
edit(
    "networks.py",
    "from einops import rearrange, repeat\nfrom einops.layers.torch import Rearrange\n",
    "try:  # ddbench-parity D7: einops is needed by ViT only\n"
    "    from einops import rearrange, repeat\n"
    "    from einops.layers.torch import Rearrange\n"
    "except ImportError:\n"
    "    pass\n",
    "ddbench-parity D7",
)
print(f"patched {off}")
PYEOF
mkdir -p "$OFF/data"
for d in mnist:MNIST fashion_mnist:FashionMNIST; do
  [ -f "$OFF/data/parity_${d#*:}.pt" ] || "$PY" "$HERE/bench/parity/export_data.py" "$OFF/data" "${d%%:*}"
done
