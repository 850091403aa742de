#!/usr/bin/env bash
# Prepare a checkout of VILA-Lab/SRe2L (SRe2L's small-data recovery and CDA's) or of
# Jiacheng8/CV-DD (committee recovery) for the parity runs of bench/parity/sre2l.sh.
# Usage: bench/parity/official_sre2l_setup.sh OFFICIAL_CHECKOUT
#
# Patched (idempotent, each edit marked "ddbench-parity S<n><x>:" in their code; nothing else of
# theirs changes):
#   SRe2L/*small_dataset/recover_cifar.py   SRe2L's recovery (their CIFAR script)
#   CDA/recover_cda_tiny.py, CDA/utils.py    CDA's curriculum recovery (their small-data script)
#   recover/recover.py, recover/utils_recover.py   CV-DD's committee recovery
# The edits:
#   S0 the local parity shim (bench/parity/sre2l_shim.py, copied beside each script as
#      ddbench_parity_shim.py) is imported; it imports ddbench's model factory.
#   S1 --seed S (seeds torch, numpy and python's random after argparse; -1: unseeded) and
#      --parity-save DIR; the shim reads the shared teacher's config (dataset shape, classes,
#      normalisation constants) from the .json beside the exported .pth.
#   S2 CPU: their "cuda" targets, inputs and criterion -> the CPU (CV-DD picks it itself).
#   S3 the SHARED teacher: SRe2L/CDA's torchvision ResNet-18 (DataParallel, .cuda, their
#      checkpoint) -> the exported ddbench teacher (--arch-path NAME.pth: its state_dict) built
#      by ddbench's create_model; CV-DD's load_model -> the same for the members in
#      --model-pool-dir (their code loads MODEL_POOL_DIR/NAME.pth into it, unedited).
#   S4 ddbench's classes and image shape instead of their hard-coded 100/200 classes and
#      3x32x32 / 3x64x64 inputs (CDA: RandomResizedCrop(64) -> the image size).
#   S5 their clip/denormalize with ddbench's normalisation constants (1 channel; their loops
#      run over the constants instead of 3 channels).
#   S6 after recovery of each batch (one image per class), the exact final tensors (normalised,
#      float32) are saved to --parity-save/slot_<ipc_id>.pt (their JPEG save, under
#      --store-best-images, is 8-bit and not used).
#   S7 CDA/wandb.py: an offline stand-in for their wandb calls (api key, login, init, log).
#   S8 CV-DD: --dataset-name ddbench (ddbench's constants, classes and size, their CIFAR jitter
#      4, priors = the members' val accuracies) and --model-setting 8 (the committee = the
#      members in --model-pool-dir).
#   S9 CV-DD: --parity-init FILE, read by their Patches initialisation in place of the patch
#      files: the j-th image of every class of FILE starts batch j.
#   S10 CV-DD: `import cv2` optional (used only to read their patch files; S9 replaces them).
# Unedited: their losses (CE + r_bn * BN-statistics, first-layer multiplier, CV-DD's prior
# voting), augmentation (jitter, CDA's curriculum crop + flip, CV-DD's crop + flip), Adam
# (betas 0.5/0.9, eps 1e-8), cosine lr per batch, per-IPC loop and clipping.
set -euo pipefail
OFF=${1:?usage: official_sre2l_setup.sh OFFICIAL_CHECKOUT}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
python3 - "$OFF" "$HERE/bench/parity" <<'PYEOF'
import shutil
import sys
from pathlib import Path

off = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from patching import make_edit  # noqa: E402

SHIM = Path(sys.argv[2]) / "sre2l_shim.py"
edit, edit_all = make_edit(off), make_edit(off, unique=False)
IMPORT = "import ddbench_parity_shim as _parity  # ddbench-parity S0{}: the local parity shim\n"
ARGS = (
    "    parser.add_argument('--seed', type=int, default=-1, help='ddbench-parity: seed (-1: unseeded)')\n"
    "    parser.add_argument('--parity-save', type=str, default='', help='ddbench-parity: where the final tensors go')\n"
)
SETUP = "    _parity.setup(args)  # ddbench-parity S1{}: seeds; the shared teacher's config\n"
SAVE = ("        _parity.save_slot(args.parity_save, inputs.data, targets, {})"
        "  # ddbench-parity S6{}: the exact final tensors\n")
done = []

# ---------------------------------------------------------------- SRe2L (recover_cifar.py)
sre2l = Path("SRe2L/*small_dataset")
if (off / sre2l / "recover_cifar.py").exists():
    F = str(sre2l / "recover_cifar.py")
    shutil.copyfile(SHIM, off / sre2l / "ddbench_parity_shim.py")
    edit(F, "from utils import BNFeatureHook, lr_cosine_policy\n",
         "from utils import BNFeatureHook, lr_cosine_policy\n" + IMPORT.format("a"),
         "ddbench-parity S0a:")
    edit(F, "    args = parser.parse_args()\n\n    args.syn_data_path",
         ARGS + "    args = parser.parse_args()\n" + SETUP.format("a") + "\n    args.syn_data_path",
         "ddbench-parity S1a:")
    edit(F,
         "    targets_all = torch.LongTensor(np.arange(100))\n\n"
         "    for kk in range(0, 100, batch_size):\n"
         "        targets = targets_all[kk : min(kk + batch_size, 100)].to(\"cuda\")\n\n"
         "        data_type = torch.float\n"
         "        inputs = torch.randn((targets.shape[0], 3, 32, 32), requires_grad=True, device=\"cuda\", dtype=data_type)\n",
         "    # ddbench-parity S4a: ddbench's classes and image shape; S2a: on the CPU\n"
         "    targets_all = torch.LongTensor(np.arange(_parity.NUM_CLASSES))\n\n"
         "    for kk in range(0, _parity.NUM_CLASSES, batch_size):\n"
         "        targets = targets_all[kk : min(kk + batch_size, _parity.NUM_CLASSES)].to(_parity.DEVICE)\n\n"
         "        data_type = torch.float\n"
         "        inputs = torch.randn((targets.shape[0], *_parity.SHAPE), requires_grad=True, device=_parity.DEVICE, dtype=data_type)\n",
         "ddbench-parity S4a:")
    edit(F, "        criterion = criterion.cuda()\n",
         "        criterion = criterion.to(_parity.DEVICE)  # ddbench-parity S2b: the CPU\n",
         "ddbench-parity S2b:")
    edit(F,
         "    import torchvision\n\n"
         "    model_teacher = torchvision.models.get_model(\"resnet18\", num_classes=100)\n"
         "    model_teacher.conv1 = nn.Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)\n"
         "    model_teacher.maxpool = nn.Identity()\n\n"
         "    model_teacher = nn.DataParallel(model_teacher).cuda()\n\n"
         "    checkpoint = torch.load(args.arch_path)\n"
         "    model_teacher.load_state_dict(checkpoint[\"state_dict\"])\n",
         "    # ddbench-parity S3a: the shared teacher (ddbench's, exported) instead of their ResNet-18\n"
         "    model_teacher = _parity.teacher(args.arch_path)\n",
         "ddbench-parity S3a:")
    edit_all(F,
             "    mean = np.array([0.4914, 0.4822, 0.4465])\n"
             "    std = np.array([0.2023, 0.1994, 0.2010])\n\n"
             "    for c in range(3):\n",
             "    mean = np.array(_parity.MEAN)  # ddbench-parity S5a: ddbench's constants\n"
             "    std = np.array(_parity.STD)\n\n"
             "    for c in range(len(mean)):\n",
             "ddbench-parity S5a:")
    edit(F, "        if args.store_best_images:\n            best_inputs = inputs.data.clone()  # using multicrop",
         SAVE.format("ipc_id", "a") + "        if args.store_best_images:\n"
         "            best_inputs = inputs.data.clone()  # using multicrop",
         "ddbench-parity S6a:")
    done.append("SRe2L (recover_cifar.py)")

# ---------------------------------------------------------------- CDA (recover_cda_tiny.py)
if (off / "CDA" / "recover_cda_tiny.py").exists():
    F, U = "CDA/recover_cda_tiny.py", "CDA/utils.py"
    shutil.copyfile(SHIM, off / "CDA" / "ddbench_parity_shim.py")
    edit(F, "from utils import BNFeatureHook, lr_cosine_policy, tiny_clip, tiny_denormalize\n",
         "from utils import BNFeatureHook, lr_cosine_policy, tiny_clip, tiny_denormalize\n"
         + IMPORT.format("b"), "ddbench-parity S0b:")
    edit(F, "    args = parser.parse_args()\n\n    assert args.milestone",
         ARGS + "    args = parser.parse_args()\n" + SETUP.format("b") + "\n    assert args.milestone",
         "ddbench-parity S1b:")
    edit(F,
         "    targets_all = torch.LongTensor(np.arange(200))\n\n"
         "    for kk in range(0, 200, batch_size):\n"
         "        targets = targets_all[kk : min(kk + batch_size, 200)].to(\"cuda\")\n\n"
         "        data_type = torch.float\n"
         "        inputs = torch.randn((targets.shape[0], 3, 64, 64), requires_grad=True, device=\"cuda\", dtype=data_type)\n",
         "    # ddbench-parity S4b: ddbench's classes and image shape; S2c: on the CPU\n"
         "    targets_all = torch.LongTensor(np.arange(_parity.NUM_CLASSES))\n\n"
         "    for kk in range(0, _parity.NUM_CLASSES, batch_size):\n"
         "        targets = targets_all[kk : min(kk + batch_size, _parity.NUM_CLASSES)].to(_parity.DEVICE)\n\n"
         "        data_type = torch.float\n"
         "        inputs = torch.randn((targets.shape[0], *_parity.SHAPE), requires_grad=True, device=_parity.DEVICE, dtype=data_type)\n",
         "ddbench-parity S4b:")
    edit(F, "                    transforms.RandomResizedCrop(64, scale=(min_crop, max_crop)),\n",
         "                    transforms.RandomResizedCrop(_parity.SHAPE[-1], scale=(min_crop, max_crop)),"
         "  # ddbench-parity S4c: the image size\n",
         "ddbench-parity S4c:")
    edit(F, "        criterion = criterion.cuda()\n",
         "        criterion = criterion.to(_parity.DEVICE)  # ddbench-parity S2d: the CPU\n",
         "ddbench-parity S2d:")
    edit(F,
         "    import torchvision\n\n"
         "    model = torchvision.models.get_model(args.arch_name, weights=False, num_classes=200)\n"
         "    model.conv1 = nn.Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)\n"
         "    model.maxpool = nn.Identity()\n\n"
         "    checkpoint = torch.load(args.arch_path, map_location=\"cpu\")\n"
         "    model.load_state_dict(checkpoint[\"model\"])\n\n"
         "    model_teacher = nn.DataParallel(model).cuda()\n",
         "    # ddbench-parity S3b: the shared teacher (ddbench's, exported) instead of their ResNet-18\n"
         "    model_teacher = _parity.teacher(args.arch_path)\n",
         "ddbench-parity S3b:")
    edit(U, "import numpy as np\nimport torch\n",
         "import numpy as np\nimport torch\n" + IMPORT.format("c"), "ddbench-parity S0c:")
    edit_all(U,
             "    mean = np.array([0.4802, 0.4481, 0.3975])\n"
             "    std = np.array([0.2302, 0.2265, 0.2262])\n\n"
             "    for c in range(3):\n",
             "    mean = np.array(_parity.MEAN)  # ddbench-parity S5b: ddbench's constants\n"
             "    std = np.array(_parity.STD)\n\n"
             "    for c in range(len(mean)):\n",
             "ddbench-parity S5b:")
    edit(F, "        if args.store_best_images:\n            best_inputs = inputs.data.clone()  # using multicrop",
         SAVE.format("ipc_id", "b") + "        if args.store_best_images:\n"
         "            best_inputs = inputs.data.clone()  # using multicrop",
         "ddbench-parity S6b:")
    stub = off / "CDA" / "wandb.py"
    if not stub.exists():
        stub.write_text(
            '"""ddbench-parity S7: an offline stand-in for the wandb calls of CDA\'s recovery."""\n\n\n'
            "class _Api:\n    api_key = 'offline'\n\n\napi = _Api()\n\n\n"
            "def login(*args, **kwargs):\n    pass\n\n\n"
            "def init(*args, **kwargs):\n    pass\n\n\n"
            "def log(*args, **kwargs):\n    pass\n\n\n"
            "def finish(*args, **kwargs):\n    pass\n"
        )
    done.append("CDA (recover_cda_tiny.py)")

# ---------------------------------------------------------------- CV-DD (recover/recover.py)
if (off / "recover" / "recover.py").exists() and (off / "recover" / "utils_recover.py").exists():
    F, U = "recover/recover.py", "recover/utils_recover.py"
    shutil.copyfile(SHIM, off / "recover" / "ddbench_parity_shim.py")
    edit(F, "import utils_recover as utils_re\n",
         "import utils_recover as utils_re\n" + IMPORT.format("d"), "ddbench-parity S0d:")
    edit(F, "    args = parser.parse_args()\n\n    # verifier model weight path",
         ARGS + "    parser.add_argument('--parity-init', type=str, default='', help='ddbench-parity S9a: the shared start')\n"
         "    args = parser.parse_args()\n" + SETUP.format("c") + "\n    # verifier model weight path",
         "ddbench-parity S1c:")
    edit(F, "    else:\n        raise ValueError('dataset not supported')\n",
         "    elif args.dataset_name == 'ddbench':  # ddbench-parity S8a: ddbench's dataset\n"
         "        args.mean_norm, args.std_norm = list(_parity.MEAN), list(_parity.STD)\n"
         "        args.ncls = _parity.NUM_CLASSES\n"
         "        args.input_size = _parity.SHAPE[-1]\n"
         "        args.jitter = 4\n"
         "        args.model_prior_weight_dict = _parity.priors()\n"
         "    else:\n        raise ValueError('dataset not supported')\n",
         "ddbench-parity S8a:")
    edit(F, "    else:\n        raise ValueError('model setting not supported')\n",
         "    elif args.model_setting == 8:  # ddbench-parity S8b: the members in --model-pool-dir\n"
         "        args.model_choice = list(args.model_prior_weight_dict)\n"
         "    else:\n        raise ValueError('model setting not supported')\n",
         "ddbench-parity S8b:")
    edit(F,
         "            inputs = torch.randn((targets.shape[0], 3, args.input_size, args.input_size), requires_grad=True, device=device,\n",
         "            inputs = torch.randn((targets.shape[0], _parity.SHAPE[0], args.input_size, args.input_size), requires_grad=True, device=device,  # ddbench-parity S4d: channels\n",
         "ddbench-parity S4d:")
    edit(F, "        if args.store_best_images:\n            best_inputs = inputs.data.clone()\n",
         SAVE.format("num_call", "c") + "        if args.store_best_images:\n"
         "            best_inputs = inputs.data.clone()\n",
         "ddbench-parity S6c:")
    edit(U, "import cv2\n",
         "try:  # ddbench-parity S10: cv2 reads only their patch files (replaced by S9)\n"
         "    import cv2\nexcept ImportError:\n    cv2 = None\n"
         + IMPORT.format("e"), "ddbench-parity S10:")
    edit(U, "def load_model(model, num_classes):\n",
         "def load_model(model, num_classes):\n"
         "    if _parity.is_member(model):  # ddbench-parity S3c: a shared ddbench teacher\n"
         "        return _parity.member(model)\n",
         "ddbench-parity S3c:")
    edit_all(U, "    for c in range(3):\n",
             "    for c in range(len(mean)):  # ddbench-parity S5c: ddbench's channels\n",
             "ddbench-parity S5c:")
    edit(U, "def initialize_patch_data(start_label_idx, end_label_idx, args, num_call):\n",
         "def initialize_patch_data(start_label_idx, end_label_idx, args, num_call):\n"
         "    if getattr(args, 'parity_init', ''):  # ddbench-parity S9b: the shared start\n"
         "        return _parity.init_slot(args.parity_init, start_label_idx, end_label_idx, num_call)\n",
         "ddbench-parity S9b:")
    done.append("CV-DD (recover/recover.py)")

if not done:
    sys.exit(f"{off}: neither VILA-Lab/SRe2L (SRe2L/*small_dataset, CDA) nor Jiacheng8/CV-DD")
print(f"patched {off}: {', '.join(done)}")
PYEOF
