#!/usr/bin/env bash
# Prepare a checkout of zhangxin-xd/UFC (INFER's generation, ufc_generation/ufc_cifar.py) for the
# parity run of bench/parity/infer.sh.
# Usage: bench/parity/official_infer_setup.sh OFFICIAL_CHECKOUT
#
# Patched (idempotent, each edit marked "ddbench-parity U<n>:" in their code; nothing else of
# theirs changes):
#   U0 the local parity shim (bench/parity/sre2l_shim.py, copied beside the script as
#      ddbench_parity_shim.py) is imported; it imports ddbench's model factory.
#   U1 --seed S (torch, numpy and python's random, which draws their jitter), --parity-save DIR
#      and --model-pool-dir DIR (the exported teachers); the shim reads the teachers' configs.
#   U2 the CPU for their "cuda" targets, inputs, compensator and criterion.
#   U3 the SHARED teachers: their four CIFAR networks (ResNet-18, MobileNetV2, EfficientNet-B0,
#      ShuffleNet; checkpoints in pretrained/) -> the M networks exported from ddbench's teacher
#      cache into --model-pool-dir, in name order, frozen as theirs are.
#   U4 --dataset ddbench: ddbench's classes (their 10/100/1000) and image shape (their
#      compensator's 1x3x32x32).
#   U5 utils.py clip_image / denormalize_image: ddbench's normalisation constants for --dataset
#      ddbench (their loops run over the constants instead of 3 channels).
#   U6 their drop of the second BatchNorm hook of teacher 3 (`loss_packed_features[2].pop(1)`,
#      specific to their EfficientNet-B0) is not applied: ddbench's teachers are ConvNets.
#   U7 after each generation slot (their ipc_id), the real batch it starts from and its exact
#      compensator (float32) are saved to --parity-save/slot_<ipc_id>.pt (their JPEG save, under
#      --store-best-images, is 8-bit and not used).
#   U8 ufc_generation/wandb.py: an offline stand-in for their wandb calls.
# Unedited: the budget split (ipc_init = int(ipc / (M / K + 1)), M teachers per batch), the zero
# start of each compensator, their loss (CE + r_bn x BN statistics, first layer x10), the jitter
# (python's random, one roll per slot), Adam (betas 0.5/0.9, eps 1e-8) with their cosine lr,
# and the slot loop (one teacher after another, one batch after another).
set -euo pipefail
OFF=${1:?usage: official_infer_setup.sh OFFICIAL_CHECKOUT}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
python3 - "$OFF" "$HERE/bench/parity" <<'PYEOF'
import shutil
import sys
from pathlib import Path

off = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from patching import make_edit  # noqa: E402

F, U = "ufc_generation/ufc_cifar.py", "ufc_generation/utils.py"
if not (off / F).exists():
    sys.exit(f"{off}: no {F} (a checkout of zhangxin-xd/UFC is expected)")
shutil.copyfile(Path(sys.argv[2]) / "sre2l_shim.py", off / "ufc_generation" / "ddbench_parity_shim.py")
edit, edit_all = make_edit(off), make_edit(off, unique=False)

edit(F, "from utils import BNFeatureHook, lr_cosine_policy, save_images, clip_image, denormalize_image\n",
     "from utils import BNFeatureHook, lr_cosine_policy, save_images, clip_image, denormalize_image\n"
     "import ddbench_parity_shim as _parity  # ddbench-parity U0: the local parity shim\n",
     "ddbench-parity U0:")
edit(F, "    # Parse arguments\n    args = parser.parse_args()\n",
     "    # ddbench-parity U1: --seed, --parity-save, --model-pool-dir (the exported teachers)\n"
     "    parser.add_argument('--seed', type=int, default=-1, help='ddbench-parity: seed (-1: unseeded)')\n"
     "    parser.add_argument('--parity-save', type=str, default='', help='ddbench-parity: where the compensators go')\n"
     "    parser.add_argument('--model-pool-dir', type=str, default='', help='ddbench-parity: the exported teachers')\n"
     "    # Parse arguments\n    args = parser.parse_args()\n"
     "    _parity.setup(args)  # ddbench-parity U1: seeds; the teachers' configs\n",
     "ddbench-parity U1:")
edit(F, "        targets = targets_all[kk : min(kk + batch_size, args.num_class)].to(\"cuda\")\n",
     "        targets = targets_all[kk : min(kk + batch_size, args.num_class)].to(_parity.DEVICE)  # ddbench-parity U2a: the CPU\n",
     "ddbench-parity U2a:")
edit(F, "        input_original = loaded_tensor.to(\"cuda\").detach()\n"
        "        uni_perb = torch.zeros((1, 3, 32, 32), requires_grad=True, device=\"cuda\", dtype=torch.float)\n",
     "        input_original = loaded_tensor.to(_parity.DEVICE).detach()  # ddbench-parity U2b: the CPU\n"
     "        uni_perb = torch.zeros((1, *_parity.SHAPE), requires_grad=True, device=_parity.DEVICE, dtype=torch.float)  # ddbench-parity U4a: ddbench's shape\n",
     "ddbench-parity U2b:")
edit(F, "        criterion = nn.CrossEntropyLoss().cuda()",
     "        criterion = nn.CrossEntropyLoss().to(_parity.DEVICE)  # ddbench-parity U2c: the CPU",
     "ddbench-parity U2c:")
s = (off / F).read_text()
if "ddbench-parity U3:" not in s:
    start, end = "    # prepare archs for UFC\n", "        model_lists.append(model_teacher)\n"
    if s.count(start) != 1 or s.count(end) != 1:
        sys.exit(f"{off / F}: the teachers' block to patch is missing or not unique")
    old = s[s.index(start): s.index(end) + len(end)]
    edit(F, old,
         "    # ddbench-parity U3: the shared teachers (ddbench's, exported) instead of their four\n"
         "    # CIFAR networks and checkpoints; frozen as theirs\n"
         "    model_lists = _parity.pool()\n"
         "    for model_teacher in model_lists:\n"
         "        for p in model_teacher.parameters():\n"
         "            p.requires_grad = False\n",
         "ddbench-parity U3:")
edit(F, 'choices=["cifar10", "cifar100", "imagenet"],',
     'choices=["cifar10", "cifar100", "imagenet", "ddbench"],  # ddbench-parity U4b',
     "ddbench-parity U4b")
edit(F, "    elif args.dataset =='imagenet':\n        args.num_class = 1000\n",
     "    elif args.dataset =='imagenet':\n        args.num_class = 1000\n"
     "    elif args.dataset == 'ddbench':  # ddbench-parity U4c: ddbench's classes\n"
     "        args.num_class = _parity.NUM_CLASSES\n",
     "ddbench-parity U4c:")
edit_all(U,
         "    elif dataset == 'tinyIN':\n"
         "        mean = np.array([0.4802, 0.4481, 0.3975])\n"
         "        std = np.array([0.2302, 0.2265, 0.2262])\n\n"
         "    for c in range(3):\n",
         "    elif dataset == 'tinyIN':\n"
         "        mean = np.array([0.4802, 0.4481, 0.3975])\n"
         "        std = np.array([0.2302, 0.2265, 0.2262])\n"
         "    elif dataset == 'ddbench':  # ddbench-parity U5: ddbench's constants\n"
         "        import ddbench_parity_shim as _parity\n"
         "        mean, std = np.array(_parity.MEAN), np.array(_parity.STD)\n\n"
         "    for c in range(len(mean)):\n",
         "ddbench-parity U5:")
s = (off / F).read_text()
if "ddbench-parity U6:" not in s:
    lines = [ln for ln in s.splitlines(keepends=True) if "loss_packed_features[2].pop(1)" in ln]
    if len(lines) != 1:
        sys.exit(f"{off / F}: their hook drop to patch is missing or not unique")
    guard = "    if len(loss_packed_features) > 2 and len(loss_packed_features[2]) > 1:\n"
    edit(F, guard + lines[0],
         "    # ddbench-parity U6: their EfficientNet-B0's hook drop is not applied (ConvNet teachers)\n",
         "ddbench-parity U6:")
edit(F, "        if args.store_best_images:\n            best_inputs = inputs.data.clone()  # using multicrop",
     "        _parity.save_compensator(args.parity_save, ipc_id, input_original, uni_perb, "
     "model_index if ipc_id >= args.ipc_init else -1)  # ddbench-parity U7: the exact tensors\n"
     "        if args.store_best_images:\n            best_inputs = inputs.data.clone()  # using multicrop",
     "ddbench-parity U7:")
stub = off / "ufc_generation" / "wandb.py"
if not stub.exists():
    stub.write_text(
        '"""ddbench-parity U8: an offline stand-in for the wandb calls of UFC\'s generation."""\n\n\n'
        "class _Api:\n    api_key = 'offline'\n\n\napi = _Api()\n\n\n"
        "def login(*args, **kwargs):\n    pass\n\n\n"
        "def init(*args, **kwargs):\n    pass\n\n\n"
        "def log(*args, **kwargs):\n    pass\n\n\n"
        "def finish(*args, **kwargs):\n    pass\n"
    )
print(f"patched {off}: INFER (ufc_generation/ufc_cifar.py, utils.py)")
PYEOF
