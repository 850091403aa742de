#!/usr/bin/env bash
# Prepare a checkout of db-Lee/selfsup_dd (KRR-ST, train.py) for the parity run of
# bench/parity/krr_st.py.
# Usage: bench/parity/official_krr_st_setup.sh OFFICIAL_CHECKOUT
#
# Patched (idempotent, each edit marked "ddbench-parity K<n>:" in their code; nothing else of
# theirs changes):
#   K0 the local parity shim (bench/parity/krr_st_shim.py, copied beside train.py as
#      ddbench_parity_shim.py) is imported.
#   K1 CPU: their cuda:<gpu_id> device -> the CPU.
#   K2 ddbench's channels in their image shape (their 3 is hard-coded).
#   K3 the SHARED target model: --target_path FILE, the cached ddbench encoder whose
#      representation (embed) ddbench's KRR-ST regresses, in place of their Barlow Twins
#      ResNet-18 checkpoint.
#   K4 their in-loop meta-test (pre-train + linear evaluation) runs only with --eval_every > 0
#      (0: never; both sets are scored afterwards by `ddbench transfer`).
#   K5 a ddbench dataset (--target_path given): its size, channels, classes and normalisation
#      constants (the shim's setup, from the exported data's meta.json), --parity_num_images
#      images, --parity_model for their model pool (their per-dataset branches hard-code these).
#   K6 the three arguments above.
#   K7 data/augmentation.py: MNIST joins SVHN, their one digit dataset, in the branch without
#      the horizontal flip.
#   K8 algorithms/pretrain_frepo.py: `from transformers import ...` optional (its scheduler serves
#      FRePo's pre-training only, which train.py does not run; transformers is not installed).
# Unedited: their initialisation (the first num_images images of a shuffled loader, raw [0, 1]
# pixels, targets = the target model on the normalised images), the outer loss (KRR with
# lambda = 1e-6 trace(K_ss) and the bias feature, eval-mode pool model), AdamW over images and
# targets with the linear decay to 1e-3, the model pool (random initial steps, one SGD step per
# draw, replacement after online_iteration steps), their augmentation (kornia RandomCrop(pad 4)
# + flip + Normalize), their ConvNet, and their Logger's x_syn.pt / y_syn.pt.
set -euo pipefail
OFF=${1:?usage: official_krr_st_setup.sh OFFICIAL_CHECKOUT}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
python3 - "$OFF" "$HERE/bench/parity" <<'PYEOF'
import shutil
import sys
from pathlib import Path

off = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from patching import make_edit  # noqa: E402

edit = make_edit(off)
shutil.copyfile(Path(sys.argv[2]) / "krr_st_shim.py", off / "ddbench_parity_shim.py")
T = "train.py"
edit(T, "from model_pool import ModelPool\n",
     "from model_pool import ModelPool\n"
     "import ddbench_parity_shim as _parity  # ddbench-parity K0: the local parity shim\n",
     "ddbench-parity K0:")
edit(T, '    device = torch.device(f"cuda:{args.gpu_id}")\n    torch.cuda.set_device(device)\n',
     '    device = torch.device("cpu")  # ddbench-parity K1: the CPU\n', "ddbench-parity K1:")
edit(T, "    args.img_shape = (3, args.img_size, args.img_size)",
     "    args.img_shape = (args.channels, args.img_size, args.img_size)"
     "  # ddbench-parity K2: ddbench's channels", "ddbench-parity K2:")
edit(T, "    else:\n        target_model = resnet18()\n",
     "    elif args.target_path:  # ddbench-parity K3: the shared ddbench encoder\n"
     "        target_model = _parity.target_model(args.target_path, device)\n"
     "    else:\n        target_model = resnet18()\n", "ddbench-parity K3:")
edit(T, "        if outer_step % args.eval_every == 0 or outer_step == args.outer_iteration:\n",
     "        if args.eval_every > 0 and (outer_step % args.eval_every == 0 or outer_step == "
     "args.outer_iteration):  # ddbench-parity K4: no in-loop meta-test at 0\n",
     "ddbench-parity K4:")
edit(T, "    else:\n        raise NotImplementedError\n\n    main(args)",
     "    elif args.target_path:  # ddbench-parity K5: a ddbench dataset\n"
     "        _parity.setup(args)\n"
     "        args.num_images = args.parity_num_images\n"
     "        args.train_model = args.test_model = args.parity_model\n"
     "    else:\n        raise NotImplementedError\n\n    main(args)", "ddbench-parity K5:")
edit(T, "    args = parser.parse_args()\n",
     "    parser.add_argument('--target_path', type=str, default='',"
     " help='ddbench-parity K6: the exported ddbench encoder')\n"
     "    parser.add_argument('--parity_num_images', type=int, default=100)\n"
     "    parser.add_argument('--parity_model', type=str, default='convnet_128_128_128_in')\n"
     "    args = parser.parse_args()\n", "ddbench-parity K6:")
edit("data/augmentation.py", '        if data_name == "svhn":\n',
     '        if data_name in ("svhn", "mnist"):  # ddbench-parity K7: digits are not flipped\n',
     "ddbench-parity K7:")
edit("algorithms/pretrain_frepo.py",
     "from transformers import get_cosine_schedule_with_warmup\n",
     "try:  # ddbench-parity K8: optional (FRePo's pre-training only)\n"
     "    from transformers import get_cosine_schedule_with_warmup\n"
     "except ImportError:\n    get_cosine_schedule_with_warmup = None\n",
     "ddbench-parity K8:")
print(f"patched {off} (K0-K8)")
PYEOF
