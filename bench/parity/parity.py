"""Parity runs: the authors' DC/DSA/DM code and ddbench at the same budget on the same data.

For each distillation seed: run the authors' script (patched by official_dc_setup.sh) with
``--seed S``, import its ``res_*.pt`` with ``ddbench import dc``, run ``ddbench distill`` with
the same settings and ``seed=S``, then score both sets with ``ddbench evaluate`` under one
protocol and write ``OUT/<method>_<dataset>_ipc<K>.json``. Every step is skipped when its
output exists, so an interrupted run resumes.

Methods whose authors' code is another repository (DataDAM, MTT, FTD, AST, DATM) take their
command, result file, importer and default protocol from ``OTHER_OFFICIAL``. MTT's, FTD's, AST's
and DATM's parity start both sides from the same experts: the replay buffers of
``PARITY_BUFFER``, imported into ddbench's expert cache. SRe2L's, CDA's and CV-DD's parity
recovers on both sides from the same teacher(s), ddbench's cached ones exported for their
scripts (``prepare_teachers``, ``sre2l_shim.py``), and checks that both sets are scored by that
teacher. INFER's (``infer_parity.py``) shares its teachers and its real images, and imports the
authors' compensators over them.

Usage: python bench/parity/parity.py METHOD OFFICIAL_CHECKOUT OUT DATASET IPC ITERATIONS SEEDS
  METHOD dm | dc | dsa | datadam | mtt | ftd | ast | datm | sre2l | cda | cvdd | infer; DATASET
  mnist | fashion_mnist (sre2l, cda, cvdd, infer: any ddbench dataset, e.g. digits); SEEDS
  comma-separated
  METHOD fyi_dm | fyi_dsa: FYI's fork (OFFICIAL_CHECKOUT a checkout of cvlab-yonsei/FYI, its
  DC_DSA_DM/ patched by official_dc_setup.sh) against ``ddbench distill method=dm|dsa
  method.fyi=true``; the result is OUT/fyi_<dm|dsa>_<dataset>_ipc<K>.json.
Environment: PARITY_PROTOCOL (default: the protocol the method declares: dm, dsa, fyi_* ->
standard; dc -> dc; datadam -> datadam; mtt, ftd, ast -> learned_lr; datm -> datm; sre2l, cda,
cvdd -> sre2l; infer -> infer), PARITY_SRE2L_SETTINGS (sre2l, cda, cvdd: overrides of RECOVERY_SETTINGS),
PARITY_BUFFER and PARITY_MTT_SETTINGS (mtt, ftd, ast, datm: the shared experts, and overrides of
TRAJECTORY_SETTINGS), PARITY_EVAL_SEEDS (default 0,1,2), PARITY_OFFICIAL_EVAL=1 to keep one
final evaluate_synset model in the authors' run (its accuracy is recorded as theirs-scored-by-them),
PARITY_EVAL_EPOCHS to override the protocol's epochs (smoke tests only: the results are then
marked not comparable), PARITY_DDBENCH_ARGS: extra overrides of ddbench's side, space-separated,
``{seed}`` replaced by the distillation seed (e.g. ``method.init_from=DIR/seed{seed}/start.safetensors``
to start ddbench from the authors' images; recorded in the JSON's commands),
PARITY_OFFICIAL_INIT: a ddbench set file (``{seed}`` replaced) whose images start the authors'
side (their ``--parity_init``, setup edits E9 / M9; DC's family and MTT's).
PARITY_OFFICIAL_ITERATIONS: the authors' iteration argument when it must differ from ddbench's
``ITERATIONS`` (DC/DSA/DM's ``--Iteration N`` updates N + 1 times: N - 1 gives both sides N);
recorded as ``official_iterations``.
"""

import functools
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

# The helper modules beside this script (infer_parity, sre2l_shim), also when it is imported by
# path (the tests) rather than run.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import infer_parity  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PY = os.environ.get("DDBENCH_PY", sys.executable)
DDBENCH = [PY, "-m", "ddbench.cli"]
OFFICIAL_NAME = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
# ddbench's DSA strategy per dataset (ddbench/data.py catalogue): no flip for MNIST; the
# authors' argparse default has flip, so the authors' side is given ddbench's strategy.
DSA_STRATEGY = {
    "mnist": "color_crop_cutout_scale_rotate",
    "fashion_mnist": "color_crop_cutout_flip_scale_rotate",
}


def official_command(method: str, dataset: str, ipc: int, iters: int, seed: int, save: Path):
    """The authors' command: their argparse defaults, --init real where the readme uses it."""
    common = [
        "--dataset", OFFICIAL_NAME[dataset], "--model", "ConvNet", "--ipc", str(ipc),
        "--num_exp", "1", "--num_eval", "1", "--eval_mode", "S", "--Iteration", str(iters),
        "--seed", str(seed), "--save_path", str(save),
        "--parity_eval", "1" if os.environ.get("PARITY_OFFICIAL_EVAL") == "1" else "0",
    ]  # fmt: skip
    if method == "dm":  # readme: main_DM.py ... --init real --lr_img 1 (its defaults)
        return ["main_DM.py", *common, "--init", "real", "--lr_img", "1",
                "--dsa_strategy", DSA_STRATEGY[dataset]]  # fmt: skip
    if method == "dsa":  # readme: main.py ... --init real --method DSA --dsa_strategy ...
        return ["main.py", *common, "--method", "DSA", "--init", "real",
                "--dsa_strategy", DSA_STRATEGY[dataset]]  # fmt: skip
    return ["main.py", *common, "--method", "DC"]  # DC: init noise, no DSA (their defaults)


def datadam_command(dataset: str, ipc: int, iters: int, seed: int, save: Path) -> list[str]:
    """DataDAM's main_DataDAM.py with its argparse defaults written out (lr_img 1, batch_real 64,
    task_balance 0.01, init real; its ConvNet is get_network's BatchNorm one), ddbench's DSA
    strategy for the dataset, and the setup's --seed / --parity_eval (official_datadam_setup.sh)."""
    return [
        "main_DataDAM.py", "--dataset", OFFICIAL_NAME[dataset], "--model", "ConvNet",
        "--ipc", str(ipc), "--eval_mode", "S", "--num_exp", "1", "--num_eval", "1",
        "--Iteration", str(iters), "--seed", str(seed), "--save_path", str(save),
        "--data_path", "data", "--init", "real", "--lr_img", "1", "--batch_real", "64",
        "--task_balance", "0.01", "--dsa_strategy", DSA_STRATEGY[dataset],
        "--parity_eval", "1" if os.environ.get("PARITY_OFFICIAL_EVAL") == "1" else "0",
    ]  # fmt: skip


# MTT (GeorgeCazenavette/mtt-distillation) and FTD (AngusDujw/FTD-distillation, a fork of it):
# the settings given to both sides, per IPC. MNIST and Fashion-MNIST are not in the papers:
# CIFAR-10's values of conf/recipes/mtt.yaml, with lr_img 100 at IPC 10 (docs/methods.md, chosen
# on val); FTD's image EMA decay 0.99, scaled to the short parity budgets as
# bench/reproduce_trajectory.sh scales it. PARITY_MTT_SETTINGS="key=value,..." overrides them
# (e.g. a smoke test on short experts).
MTT_SETTINGS = {
    1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 100.0,
        "lr_lr": 1e-07, "lr_teacher": 0.01},
    10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_img": 100.0,
         "lr_lr": 1e-05, "lr_teacher": 0.01},
}  # fmt: skip
# DATM (NUS-HPC-AI-Lab/DATM): MTT's settings and, in ddbench's names, DATM's own from its CIFAR-10
# configs: configs/CIFAR-10/ConvIN/IPC1.yaml lr_y 5., Momentum_y 0.9, threshold 1.1,
# Sequential_Generation False (a fixed range: max_start_epoch_final null); IPC10.yaml lr_y 2.0,
# threshold 1., current_max_start_epoch 10 -> max_start_epoch 20 over expansion_end_epoch 1000.
DATM_SETTINGS = {
    1: {**MTT_SETTINGS[1], "lr_y": 5.0, "momentum_y": 0.9, "threshold": 1.1,
        "max_start_epoch_final": None, "expansion_iterations": None},
    10: {**MTT_SETTINGS[10], "max_start_epoch": 10, "max_start_epoch_final": 20,
         "expansion_iterations": 1000, "lr_y": 2.0, "momentum_y": 0.9, "threshold": 1.0},
}  # fmt: skip
TRAJECTORY_SETTINGS = {
    "mtt": MTT_SETTINGS,
    "ftd": {ipc: {**v, "ema_decay": 0.99} for ipc, v in MTT_SETTINGS.items()},
    "ast": MTT_SETTINGS,
    "datm": DATM_SETTINGS,
}
# AST's parts, all on, on both sides: their store_true flags and ddbench's settings (methods/ast.py)
# (--mom is left at their default 0.9, ddbench's student_momentum)
AST_PARTS = {
    "--balance_loss": "method.balance_loss=true",
    "--agg_middle_loss": "method.agg_middle_loss=true",
    "--weight_perturb": "method.weight_perturb=true",
}
AST_CLUSTERS = 10  # their ipc_visual (distill.py 113): --pix_init avg picks ipc / 10 per centre


def ast_init(ipc: int) -> tuple[str, str]:
    """AST's initialisation on both sides: their --pix_init avg (k-means on an expert's logits)
    where the IPC is a multiple of their 10 clusters; below it their code picks int(ipc / 10) = 0
    images per centre, so both sides start from random real images (--pix_init real, ddbench's
    representative_init=null: MTT's initialisation)."""
    if ipc % AST_CLUSTERS == 0:
        return "avg", "method.representative_init=kmeans"
    return "real", "method.representative_init=null"


def trajectory_settings(method: str, ipc: int) -> dict[str, str]:
    table = TRAJECTORY_SETTINGS[method]
    out = {k: "null" if v is None else repr(v) for k, v in table.get(ipc, table[10]).items()}
    for item in filter(None, os.environ.get("PARITY_MTT_SETTINGS", "").split(",")):
        key, _, value = item.partition("=")
        if key not in out:
            raise SystemExit(f"PARITY_MTT_SETTINGS: unknown setting {key!r}; known {sorted(out)}")
        out[key] = value
    return out


def trajectory_command(
    method: str, dataset: str, ipc: int, iters: int, seed: int, save: Path
) -> list[str]:
    """MTT's distill.py (FTD: distill/distill_FTD.py, run in distill/; AST: its distill.py with
    ``AST_PARTS`` and ``ast_init``) with the settings of ``trajectory_settings`` (both sides get
    them), the shared experts in buffers/<NAME>/ConvNet (``prepare_experts``), ddbench's DSA
    strategy for the dataset, real initialisation and all images per student step (their
    defaults), and the setup's --seed / --parity_eval / --parity_save (official_mtt_setup.sh)."""
    up = "../" if method == "ftd" else ""
    flags = [f"--{k}={v}" for k, v in trajectory_settings(method, ipc).items()]
    pix_init = "real"
    if method == "ast":
        flags += list(AST_PARTS)
        pix_init = ast_init(ipc)[0]
    return [
        "distill_FTD.py" if method == "ftd" else "distill.py",
        "--dataset", OFFICIAL_NAME[dataset], "--model", "ConvNet",
        "--ipc", str(ipc), "--Iteration", str(iters), *flags, "--pix_init", pix_init,
        "--dsa", "True", "--dsa_strategy", DSA_STRATEGY[dataset], "--eval_mode", "S",
        "--num_eval", "1", "--data_path", f"{up}data", "--buffer_path", f"{up}buffers",
        "--seed", str(seed), "--parity_save", str(save),
        "--parity_eval", "1" if os.environ.get("PARITY_OFFICIAL_EVAL") == "1" else "0",
    ]  # fmt: skip


def trajectory_ddbench_args(method: str, dataset: str, ipc: int) -> list[str]:
    args = [f"method.{k}={v}" for k, v in trajectory_settings(method, ipc).items()]
    if method == "ast":
        args += [*AST_PARTS.values(), "method.student_momentum=0.9", ast_init(ipc)[1]]
    if method == "datm":
        args += [f"method.{k}={v}" for k, v in DATM_FIXED.items()]
        args.append(f"method.batch_syn={DATM_CLASSES * ipc}")
    return args


# DATM's parts both sides run (DATM.py's samples_predicted_correctly, soft labels, expert 0 of
# file 0 at Label_Model_Timestamp -1 choosing the images, the mean of the right experts' logits
# as the labels), the range from epoch 0, all images per student step (their batch_syn at IPC 1
# and 10: ipc x classes)
DATM_FIXED = {"soft_labels": "true", "correct_init": "true", "label_average": "true",
              "label_expert": 0, "label_epoch": -1, "min_start_epoch": 0}  # fmt: skip
DATM_CLASSES = 10  # MNIST, Fashion-MNIST


def datm_config(dataset: str, ipc: int, iters: int) -> dict:
    """DATM's yacs config (their only command-line input) for the settings both sides get, in
    their names and with their CFG defaults' types (utils/cfg.py: lr_img an int; yacs refuses
    another type), run from distill/ (data and buffers one level up), no ZCA, their evaluation
    (when asked) on args.device with batch 128 (parall_eva, their configs' batch_train)."""
    st = trajectory_settings("datm", ipc)

    def num(key):
        return None if st[key] in ("null", "None") else float(st[key])

    def whole(key):
        v = num(key)
        if v is None or not v.is_integer():
            raise SystemExit(f"datm: {key}={st[key]} must be a whole number in their config")
        return int(v)

    final = num("max_start_epoch_final")
    return {
        "dataset": OFFICIAL_NAME[dataset], "model": "ConvNet", "ipc": ipc, "Iteration": iters,
        "syn_steps": whole("syn_steps"), "expert_epochs": whole("expert_epochs"),
        "lr_img": whole("lr_img"), "lr_teacher": num("lr_teacher"), "lr_lr": num("lr_lr"),
        "lr_y": num("lr_y"), "Momentum_y": num("momentum_y"), "threshold": num("threshold"),
        "min_start_epoch": DATM_FIXED["min_start_epoch"],
        "current_max_start_epoch": whole("max_start_epoch"),
        "max_start_epoch": whole("max_start_epoch" if final is None else "max_start_epoch_final"),
        "Sequential_Generation": final is not None,
        **({} if final is None else {"expansion_end_epoch": whole("expansion_iterations")}),
        "batch_syn": DATM_CLASSES * ipc, "pix_init": "samples_predicted_correctly",
        "Label_Model_Timestamp": DATM_FIXED["label_epoch"],
        "dsa": True, "dsa_strategy": DSA_STRATEGY[dataset], "zca": False,
        "data_path": "../data", "buffer_path": "../buffers", "eval_mode": "S", "num_eval": 1,
        "eval_it": max(iters, 1), "skip_first_eva": True, "parall_eva": True, "batch_train": 128,
        "device": [0], "project": "ddbench_parity",
    }  # fmt: skip


def datm_command(dataset: str, ipc: int, iters: int, seed: int, save: Path) -> list[str]:
    """DATM's distill/DATM.py on the config ``datm_config`` writes beside ``save``
    (``<seed dir>/datm_config.yaml``), with the setup's --seed / --parity_eval / --parity_save
    (official_mtt_setup.sh D1, D2, M4)."""
    import yaml

    cfg = Path(save).parent / "datm_config.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(datm_config(dataset, ipc, iters), sort_keys=False))
    return [
        "DATM.py", "--cfg", str(cfg), "--seed", str(seed), "--parity_save", str(save),
        "--parity_eval", "1" if os.environ.get("PARITY_OFFICIAL_EVAL") == "1" else "0",
    ]  # fmt: skip


def prepare_experts(
    method: str, off: Path, dataset: str, work: Path | None = None
) -> tuple[list[str], dict]:
    """The shared experts: the replay buffers of PARITY_BUFFER (a folder of replay_buffer_<n>.pt,
    MTT's buffer.py format; `ddbench expert export` writes ddbench's experts in it) become the
    only buffers of their distillation (linked into buffers/<NAME>/ConvNet) and are imported
    into ddbench's expert cache (`ddbench expert import --method METHOD`); returns ddbench's
    overrides that select them, and what the result records about them."""
    src = Path(os.environ.get("PARITY_BUFFER", "")).resolve()
    files = sorted(src.glob("replay_buffer_*.pt"),
                   key=lambda f: int(f.stem.rpartition("_")[2]))  # fmt: skip
    if not os.environ.get("PARITY_BUFFER") or not files:
        raise SystemExit("set PARITY_BUFFER to a folder of replay_buffer_<n>.pt files")
    if [f.name for f in files] != [f"replay_buffer_{n}.pt" for n in range(len(files))]:
        raise SystemExit(f"{src}: their distill.py reads replay_buffer_0.pt, _1, ... without gaps")
    dest = off / "buffers" / OFFICIAL_NAME[dataset] / "ConvNet"
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("replay_buffer_*.pt"):
        old.unlink()
    for f in files:
        (dest / f.name).symlink_to(f)
    p = subprocess.run([*DDBENCH, "expert", "import", dataset, str(src), "--method", method],
                       check=True, cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    line = next(x for x in p.stdout.splitlines() if x.startswith("use them with:"))
    args = [a for a in line.split(":", 1)[1].split() if a.startswith("method.")]
    return args, {"buffer": str(src), "files": [f.name for f in files], "ddbench_overrides": args}


def _trajectory_entry(method: str, repo: str, edits: str, cwd: str = "") -> dict:
    return {
        "command": datm_command
        if method == "datm"
        else functools.partial(trajectory_command, method),
        "res": "images_{iters}.pt",  # with labels_<N>.pt and lr_<N>.pt beside it (setup M4)
        "import": "mtt",  # DATM's label logits -> their softmax, protocol datm
        "protocol": "datm" if method == "datm" else "learned_lr",
        "ddbench_args": functools.partial(trajectory_ddbench_args, method),
        "prepare": functools.partial(prepare_experts, method),
        "cwd": cwd,
        "repo": repo,
        "edits": edits,
    }


# Methods whose authors' code is not DatasetCondensation: per method, the authors' command, the
# file it writes, the `ddbench import` format that reads it, the protocol its sets declare, the
# settings given to ddbench's side to match the released code, the repository and its edits;
# optionally a `prepare` run once before the seeds (the shared experts of trajectory matching).
OTHER_OFFICIAL = {
    "mtt": _trajectory_entry(
        "mtt", "GeorgeCazenavette/mtt-distillation", "bench/parity/official_mtt_setup.sh (M1-M9)"
    ),
    "ftd": _trajectory_entry(
        "ftd",
        "AngusDujw/FTD-distillation",
        "bench/parity/official_mtt_setup.sh (M1-M6, M8, M9, FTD's files)",
        cwd="distill",
    ),  # fmt: skip
    "ast": _trajectory_entry(
        "ast",
        "shenjiyuan123/AST-Alignment-with-Smooth-Expert",
        "bench/parity/official_mtt_setup.sh (M1-M4, M6-M9, A1-A3)",
    ),
    "datm": _trajectory_entry(
        "datm",
        "NUS-HPC-AI-Lab/DATM",
        "bench/parity/official_mtt_setup.sh (M1, M3-M6, M8, M9, D1, D2; DATM's files)",
        cwd="distill",
    ),
    "datadam": {
        "command": datadam_command,
        "res": "res_DataDAM_{name}_ConvNet_{ipc}ipc_.pt",
        "import": "datadam",
        "protocol": "datadam",
        # the released main_DataDAM.py: get_attention(exp=1) (line 303), p = 1; get_network's
        # BatchNorm ConvNet (utils.py 282) fed all classes in one forward (286-306)
        "ddbench_args": ["method.power=1", "model=convnet_bn", "method.batched=true"],
        "repo": "DataDistillation/DataDAM",
        "edits": "bench/parity/official_datadam_setup.sh (D1-D7)",
    },
}
# ddbench's DataDAM with the paper's instance-norm network (HP table; ddbench's default), p = 1,
# against the same released code: the effect of the network's normalisation
OTHER_OFFICIAL["datadam_paper_net"] = dict(
    OTHER_OFFICIAL["datadam"], method="datadam", ddbench_args=["method.power=1"]
)


# The SRe2L family (SRe2L and CDA: VILA-Lab/SRe2L; CV-DD: Jiacheng8/CV-DD) on a SHARED teacher:
# ddbench's cached teacher(s), exported as state_dict + config (sre2l_shim.export_teacher) and
# loaded by the patched scripts (official_sre2l_setup.sh S3). The settings given to both sides
# are the authors' published commands: SRe2L *small_dataset/recover_cifar.sh (lr 0.25, r_bn
# 0.01), CDA's README Tiny-ImageNet command (lr 0.4, r_bn 0.05, --easy2hard-mode cosine
# --milestone 1), CV-DD recover/scripts/cifar10_experiments/recover_voter_ipc*.sh (lr 0.25, r_bn
# 0.01, --selected-size 2, --voter-type prior, --apply-data-augmentation); their argparse
# defaults otherwise (first_bn_multiplier 10, jitter 4, CV-DD's weight temperature 5).
# PARITY_SRE2L_SETTINGS="lr_img=...,r_bn=..." overrides them on both sides.
RECOVERY_SETTINGS = {
    "sre2l": {"lr_img": 0.25, "r_bn": 0.01},
    "cda": {"lr_img": 0.4, "r_bn": 0.05},
    "cvdd": {"lr_img": 0.25, "r_bn": 0.01},
}
RECOVERY_FLAGS = {"lr_img": "--lr", "r_bn": "--r-bn"}
# CV-DD's committee: the members of bench/reproduce_sre2l.sh (keys left out: SRe2L's teacher)
CVDD_MEMBERS = [{"model": "convnet_bn", "seed": 0},
                {"model": "convnet_bn", "model_kwargs": {"net_width": 64}, "seed": 2}]  # fmt: skip
# ddbench's settings made equal to the authors' where ddbench's defaults differ (recorded in the
# result as `aligned_settings`), and the ones written out though equal, so no recipe moves them.
RECOVERY_DDBENCH = {
    "sre2l": {
        "method.first_bn_multiplier=10.0": "their argparse default (= ddbench's)",
        "method.jitter=4": "their argparse default (= ddbench's)",
        "method.init=noise": "their torch.randn start (= ddbench's)",
        "method.crop=false": "recover_cifar.py only rolls (= ddbench's crop: auto at 28 px)",
    },
    "cda": {
        "method.first_bn_multiplier=10.0": "their argparse default (= ddbench's)",
        "method.jitter=4": "their argparse default (= ddbench's)",
        "method.init=noise": "their torch.randn start (= ddbench's)",
        "method.crop=true": "their RandomResizedCrop at every size (= ddbench's CDA)",
        "method.flip=true": "their RandomHorizontalFlip always; ddbench's flip: auto does "
        "not flip MNIST",
        "method.curriculum=cosine": "--easy2hard-mode cosine (= ddbench's)",
        "method.milestone=1.0": "--milestone 1 (= ddbench's)",
    },
    "cvdd": {
        "method.first_bn_multiplier=10.0": "their argparse default (= ddbench's)",
        "method.jitter=4": "their per-dataset jitter at 32 px (= ddbench's)",
        "method.crop=true": "--apply-data-augmentation: RandomResizedCrop (= ddbench's CV-DD)",
        "method.flip=true": "their RandomHorizontalFlip always; ddbench's flip: auto does "
        "not flip MNIST",
        "method.voting=prior": "--voter-type prior (= ddbench's)",
        "method.weight_temperature=5.0": "--weight-temperature 5 (= ddbench's)",
        "method.members_per_step=2": "--selected-size 2: both members of the 2-member pool "
        "vote on every batch on both sides",
        "method.committee=" + json.dumps(CVDD_MEMBERS).replace('"', ""): "their pool "
        "(--model-setting 8) = these members, exported",
    },
}


def recovery_settings(method: str) -> dict[str, float]:
    out = dict(RECOVERY_SETTINGS[method])
    for item in filter(None, os.environ.get("PARITY_SRE2L_SETTINGS", "").split(",")):
        key, _, value = item.partition("=")
        if key not in out:
            raise SystemExit(f"PARITY_SRE2L_SETTINGS: unknown setting {key!r}; known {sorted(out)}")
        out[key] = float(value)
    return out


def _teachers_dir(save: Path) -> Path:
    """The exported teachers of a run: OUT/work/teachers/<dataset> (``prepare_teachers``)."""
    return save.parents[2] / "teachers"


def recovery_command(
    method: str, dataset: str, ipc: int, iters: int, seed: int, save: Path
) -> list[str]:
    """The authors' recovery script with their published flags (``RECOVERY_SETTINGS``), the
    shared teacher(s), ddbench's number of classes as the batch (one image per class, as their
    scripts' --batch-size 100 on CIFAR-100 and 10 on CIFAR-10), IPC as --ipc-start 0 --ipc-end K,
    and the setup's --seed / --parity-save (official_sre2l_setup.sh S1, S6). No
    --store-best-images: their 8-bit JPEGs are not the set."""
    from ddbench.data import get_spec

    k = get_spec(dataset).num_classes
    teachers = _teachers_dir(save) / dataset
    flags = [
        x for key, v in recovery_settings(method).items() for x in (RECOVERY_FLAGS[key], repr(v))
    ]
    common = ["--exp-name", "parity", "--syn-data-path", str(save / "syn"), "--batch-size", str(k),
              "--iteration", str(iters), *flags, "--ipc-start", "0", "--ipc-end", str(ipc),
              "--seed", str(seed), "--parity-save", str(save)]  # fmt: skip
    if method == "sre2l":
        return ["recover_cifar.py", "--arch-path", str(teachers / "teacher.pth"), *common]
    if method == "cda":
        return ["recover_cda_tiny.py", "--arch-path", str(teachers / "teacher.pth"),
                "--easy2hard-mode", "cosine", "--milestone", "1", *common]  # fmt: skip
    return ["recover.py", "--dataset-name", "ddbench", "--apply-data-augmentation",
            "--pretrained-model-type", "offline", "--model-pool-dir", str(teachers / "committee"),
            "--model-setting", "8", "--voter-type", "prior", "--selected-size", "2",
            "--initialisation-method", "Patches", "--parity-init", str(save.parent / "start.pt"),
            *common]  # fmt: skip


def recovery_ddbench_args(method: str, dataset: str, ipc: int) -> list[str]:
    return [*(f"method.{k}={v}" for k, v in recovery_settings(method).items()),
            *RECOVERY_DDBENCH[method]]  # fmt: skip


def prepare_teachers(method: str, off: Path, dataset: str, work: Path) -> tuple[list[str], dict]:
    """The shared teacher(s): ddbench's cached teacher (SRe2L's default, the ``sre2l``
    protocol's teacher for sets that name none) or CV-DD's members (``CVDD_MEMBERS``), trained
    once by ddbench's teacher cache and exported for their scripts into
    OUT/work/teachers/<dataset>/ (``teacher.pth`` / ``committee/m<i>.pth``, each with its
    ``.json``). Returns no extra ddbench overrides, and what the result records."""
    from sre2l_shim import export_teacher

    from ddbench.recover import DEFAULT_TEACHER

    out = work.parent / "teachers" / dataset
    if method == "cvdd":
        infos = [export_teacher(dataset, {**DEFAULT_TEACHER, **m}, out / "committee", f"m{i}")
                 for i, m in enumerate(CVDD_MEMBERS)]  # fmt: skip
    else:
        infos = [export_teacher(dataset, DEFAULT_TEACHER, out, "teacher")]
    return [], {"teachers": [{k: i[k] for k in ("key", "config", "val_accuracy")} for i in infos],
                "exported_to": str(out)}  # fmt: skip


def shared_start(d: Path, seed: int, dataset: str, ipc: int) -> list[str]:
    """CV-DD's start, the same on both sides: ``ddbench distill method=random`` (ipc real train
    images per class, seed S) as ddbench's ``method.init_from`` and, saved as a tensor
    (``start.pt``), their --parity-init (setup S9: in place of their patch files)."""
    from ddbench import synset

    start = d / "start" / "synset.safetensors"
    if not start.exists():
        subprocess.run([*DDBENCH, "distill", "method=random", f"dataset={dataset}", f"ipc={ipc}",
                        f"seed={seed}", "device=cpu", "precision=fp32", "progress=false",
                        f"hydra.run.dir={start.parent}"], check=True, cwd=ROOT)  # fmt: skip
    if not (d / "start.pt").exists():
        torch.save(synset.load(start).images.float().contiguous(), d / "start.pt")
    return [f"method.init_from={start}"]


def collect_slots(save: Path, res: Path, dataset: str, ipc: int) -> None:
    """Their per-batch tensors (setup S6) as the files `ddbench import mtt` reads:
    ``images_parity.pt`` (ordered by class) and ``labels_parity.pt`` (hard labels)."""
    from sre2l_shim import collect

    from ddbench.data import get_spec

    images, labels = collect(save, ipc, get_spec(dataset).num_classes)
    torch.save(labels, save / "labels_parity.pt")
    torch.save(images, res)


def recovery_eval_args(method: str) -> list[str]:
    """CV-DD: the committee labels an imported set (which names no teacher) as it labels
    ddbench's set (from the set's metadata): the protocol's committee teacher, weights
    softmax(val accuracy / 10), batch statistics (docs/methods.md, `sre2l` protocol)."""
    if method != "cvdd":
        return []
    members = json.dumps(CVDD_MEMBERS).replace('"', "")
    return [f"++protocol.teacher={{committee: {members}, temperature: 10, bn: batch}}"]


def _recovery_entry(method: str, repo: str, cwd: str) -> dict:
    return {
        "command": functools.partial(recovery_command, method),
        "res": "images_parity.pt",  # with labels_parity.pt beside it (collect_slots)
        "import": "mtt",  # exact float tensors: images_*.pt + labels_*.pt
        "protocol": "sre2l",
        "ddbench_args": functools.partial(recovery_ddbench_args, method),
        "prepare": functools.partial(prepare_teachers, method),
        "collect": collect_slots,
        "eval_args": recovery_eval_args(method),
        "same_teacher": True,
        "aligned": RECOVERY_DDBENCH[method],
        "cwd": cwd,
        "repo": repo,
        "edits": "bench/parity/official_sre2l_setup.sh (S0-S10)",
        **({"seed_setup": shared_start} if method == "cvdd" else {}),
    }


OTHER_OFFICIAL.update({
    "sre2l": _recovery_entry("sre2l", "VILA-Lab/SRe2L (SRe2L/*small_dataset)",
                             "SRe2L/*small_dataset"),
    "cda": _recovery_entry("cda", "VILA-Lab/SRe2L (CDA)", "CDA"),
    "cvdd": _recovery_entry("cvdd", "Jiacheng8/CV-DD", "recover"),
})  # fmt: skip


# INFER (zhangxin-xd/UFC): shared teachers and real images, their compensators (infer_parity.py)
OTHER_OFFICIAL["infer"] = {
    "command": infer_parity.command,
    "res": "compensators_parity.pt",  # with real_parity.pt beside it (infer_parity.collect)
    "importer": infer_parity.import_set,
    "protocol": "infer",
    "ddbench_args": infer_parity.ddbench_args,
    "prepare": infer_parity.prepare,
    "collect": infer_parity.collect,
    "seed_setup": functools.partial(infer_parity.shared_start, ddbench=DDBENCH, root=ROOT),
    "aligned": infer_parity.aligned(),
    "settings": infer_parity.SETTINGS,
    "cwd": "",
    "repo": "zhangxin-xd/UFC",
    "edits": "bench/parity/official_infer_setup.sh (U0-U8)",
}


def teacher_of(result: dict) -> dict:
    """The teacher that labelled a result's students (``labels.teacher``), without where it
    came from (``source``: the set's metadata or the protocol): the same for both sides of a
    parity run on a shared teacher."""
    t = dict(result["labels"]["teacher"])
    t.pop("source", None)
    if "committee" in t:
        t["committee"] = [{**m, "weight": round(m["weight"], 9)} for m in t["committee"]]
    return t


# FYI (cvlab-yonsei/FYI): its DC_DSA_DM/ is a fork of the code above with FYI always on.
FYI_BASE = {"fyi_dm": "dm", "fyi_dsa": "dsa"}


def fyi_official_command(method: str, dataset: str, ipc: int, iters: int, seed: int, run: str):
    """FYI's fork: the base method's command (their scripts/dm.sh and dsa.sh give the same flags
    as the readme: --init real, --lr_img 1 for DM, the DSA strategy), adapted to the fork's
    arguments: it saves to ./logs/RUN_NAME (no --save_path), needs --data_path and --run_tags,
    and evaluates at the last iteration only, --num_eval models (0: none; no --parity_eval)."""
    cmd = official_command(FYI_BASE[method], dataset, ipc, iters, seed, Path("."))
    for flag in ("--save_path", "--parity_eval", "--num_eval"):
        i = cmd.index(flag)
        del cmd[i : i + 2]
    n_eval = "1" if os.environ.get("PARITY_OFFICIAL_EVAL") == "1" else "0"
    return [*cmd, "--num_eval", n_eval, "--data_path", "data", "--run_name", run,
            "--run_tags", "ddbench_parity"]  # fmt: skip


def run(cmd: list[str], cwd: Path, log: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env, check=True)
    return time.perf_counter() - t0


EVAL_EPOCHS = [f"protocol.epochs={e}"] if (e := os.environ.get("PARITY_EVAL_EPOCHS")) else []


def evaluate(
    synset: Path, protocol: str, seeds: str, out: Path, log: Path, timings: dict,
    extra: list[str] = (),
):  # fmt: skip
    result = out / "result.json"
    if not result.exists():
        cmd = [*DDBENCH, "evaluate", f"synset={synset}", f"protocol={protocol}",
               f"protocol.seeds=[{seeds}]", "precision=fp32", "device=cpu", "progress=true",
               f"hydra.run.dir={out}", *EVAL_EPOCHS, *extra]  # fmt: skip
        timings[str(out)] = run(cmd, ROOT, log)
    return json.loads(result.read_text())


# the authors' codes patched to take a start file (official_dc_setup.sh E9,
# official_mtt_setup.sh M9)
TAKES_PARITY_INIT = ("dc", "dsa", "dm", "fyi_dm", "fyi_dsa", "mtt", "ftd", "ast", "datm")


def official_start(method: str, d: Path, seed: int) -> list[str]:
    """PARITY_OFFICIAL_INIT (a ddbench set file, ``{seed}`` replaced): its images, in the
    normalised space both sides share, written as ``<seed dir>/official_start.pt`` for the
    authors' ``--parity_init``; with the same file as ddbench's ``method.init_from``
    (PARITY_DDBENCH_ARGS) both sides start every seed from one set."""
    src = os.environ.get("PARITY_OFFICIAL_INIT")
    if not src:
        return []
    if method not in TAKES_PARITY_INIT:
        raise SystemExit(f"PARITY_OFFICIAL_INIT: the authors' {method} code takes no start file")
    from ddbench.synset import load

    start = d / "official_start.pt"
    torch.save(load(src.format(seed=seed)).images.float().contiguous(), start)
    return ["--parity_init", str(start)]


def main() -> None:
    method, off, out, dataset, ipc, iters, seeds = sys.argv[1:8]
    off, out, ipc, iters = Path(off).resolve(), Path(out).resolve(), int(ipc), int(iters)
    # the authors' iteration argument, where it must differ from ddbench's to give both sides
    # the same number of updates (DC/DSA/DM: --Iteration N updates N+1 times)
    off_iters = int(os.environ.get("PARITY_OFFICIAL_ITERATIONS", iters))
    seeds = [int(s) for s in seeds.split(",")]
    other = OTHER_OFFICIAL.get(method)
    declared = other["protocol"] if other else "dc" if method == "dc" else "standard"
    protocol = os.environ.get("PARITY_PROTOCOL", declared)
    eval_seeds = os.environ.get("PARITY_EVAL_SEEDS", "0,1,2")
    # ddbench's method: the one FYI modifies (fyi_dm -> dm), or the table's
    base = FYI_BASE.get(method, other.get("method", method) if other else method)
    row = f"{method}_{dataset}_ipc{ipc}_it{iters}"
    if off_iters != iters:
        row += f"_official_it{off_iters}"
    work = out / "work" / row
    work.mkdir(parents=True, exist_ok=True)
    commit = (
        subprocess.run(
            ["git", "-C", str(off), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or (off / "COMMIT").read_text().strip()
    )
    timings: dict[str, float] = {}
    rows, commands = [], {}
    extra_args, prepared = [], {}
    if other and "prepare" in other:
        extra_args, prepared = other["prepare"](off, dataset, work)
    if other and callable(other["ddbench_args"]):
        extra_args = [*other["ddbench_args"](dataset, ipc), *extra_args]
    elif other:
        extra_args = [*other["ddbench_args"], *extra_args]
    eval_args = list(other.get("eval_args", [])) if other else []
    for seed in seeds:
        d = work / f"seed{seed}"
        d.mkdir(exist_ok=True)
        # a start shared by both sides (CV-DD: real images): ddbench's overrides that read it
        seed_args = (
            other["seed_setup"](d, seed, dataset, ipc) if other and "seed_setup" in other else []
        )
        # the authors' side
        name = OFFICIAL_NAME.get(dataset, dataset)
        res = d / "official" / f"res_{base.upper()}_{name}_ConvNet_{ipc}ipc.pt"
        if other:
            res = d / "official" / other["res"].format(name=name, ipc=ipc, iters=off_iters)
            cmd = [PY, *other["command"](dataset, ipc, off_iters, seed, d / "official")]
        elif method in FYI_BASE:  # the fork saves to DC_DSA_DM/logs/<run name>; copied to res
            run_name = f"ddbench_parity/{work.name}_seed{seed}"
            cmd = [PY, *fyi_official_command(method, dataset, ipc, off_iters, seed, run_name)]
            saved = off / "DC_DSA_DM" / "logs" / run_name / res.name
        else:
            cmd = [PY, *official_command(method, dataset, ipc, off_iters, seed, d / "official")]
        cmd += official_start(method, d, seed)
        commands[f"official_seed{seed}"] = shlex.join(cmd)
        if not res.exists():
            cwd = off / "DC_DSA_DM" if method in FYI_BASE else off / (other or {}).get("cwd", "")
            timings[f"official_seed{seed}"] = run(cmd, cwd, d / "official.log")
            if method in FYI_BASE:
                res.parent.mkdir(exist_ok=True)
                shutil.copyfile(saved, res)
            if other and "collect" in other:  # their per-batch tensors -> the importer's files
                other["collect"](d / "official", res, dataset, ipc)
        theirs = d / "official.safetensors"
        if not theirs.exists() and other and "importer" in other:  # no `ddbench import` format
            other["importer"](res, d, dataset, theirs, f"{other['repo']}@{commit[:7]}")
        elif not theirs.exists():
            fmt = other["import"] if other else "dc"
            # marked as the authors' set of ddbench's method (a reference row for the board)
            mark = ["--method", base, "--code", f"{other['repo']}@{commit[:7]}"] if other else []
            subprocess.run([*DDBENCH, "import", fmt, str(res), "--dataset", dataset,
                            "--out", str(theirs), *mark], check=True, cwd=ROOT)  # fmt: skip
        saved = torch.load(res, weights_only=False)
        own_eval = saved["accs_all_exps"].get("ConvNet", []) if isinstance(saved, dict) else []
        # ddbench's side
        ours_dir = d / "ddbench"
        cmd = [*DDBENCH, "distill", f"method={base}", f"dataset={dataset}", f"ipc={ipc}",
               f"method.iterations={iters}", f"seed={seed}", "precision=fp32", "device=cpu",
               "progress=false", f"hydra.run.dir={ours_dir}", *extra_args, *seed_args,
               *os.environ.get("PARITY_DDBENCH_ARGS", "").format(seed=seed).split()]  # fmt: skip
        if method in FYI_BASE:
            cmd.insert(5, "method.fyi=true")
        commands[f"ddbench_seed{seed}"] = shlex.join(cmd)
        ours = ours_dir / "synset.safetensors"
        if not ours.exists():
            timings[f"ddbench_seed{seed}"] = run(cmd, ROOT, d / "ddbench.log")
        ev, labelled_by = {}, {}
        for side, path in (("official", theirs), ("ddbench", ours)):
            r = evaluate(path, protocol, eval_seeds, d / f"eval_{side}", d / f"eval_{side}.log",
                         timings, eval_args)  # fmt: skip
            ev[side] = r["accuracy"]
            if other and other.get("same_teacher"):
                labelled_by[side] = teacher_of(r)
        if labelled_by and labelled_by["official"] != labelled_by["ddbench"]:
            raise SystemExit(f"seed {seed}: the two sets were labelled by different teachers: "
                             f"{json.dumps(labelled_by)}")  # fmt: skip
        rows.append({"seed": seed, "official": ev["official"], "ddbench": ev["ddbench"],
                     "official_own_evaluate_synset": [100 * a for a in own_eval],
                     **({"teacher": labelled_by["ddbench"]} if labelled_by else {})})  # fmt: skip
    commands["evaluate"] = shlex.join([*DDBENCH[2:], "evaluate", "synset=SET", f"protocol={protocol}",
                                       f"protocol.seeds=[{eval_seeds}]", "precision=fp32",
                                       *EVAL_EPOCHS, *eval_args])  # fmt: skip

    def pooled(side):
        return [p["accuracy"] for r in rows for p in r[side]["per_seed"]]

    summary = {}
    for side in ("official", "ddbench"):
        a = torch.tensor(pooled(side), dtype=torch.float64)
        summary[side] = {
            "mean": a.mean().item(),
            "std": a.std(unbiased=False).item() if len(a) > 1 else 0.0,
            "n": len(a),
            "per_distillation_seed_mean": [r[side]["mean"] for r in rows],
        }
    # standard error of the difference of the two means, over all (set, model) scores
    se = math.sqrt(sum(
        (torch.tensor(pooled(s), dtype=torch.float64).std().item() ** 2) / len(pooled(s))
        for s in ("official", "ddbench")
    )) if all(len(pooled(s)) > 1 for s in ("official", "ddbench")) else 0.0  # fmt: skip
    diff = summary["ddbench"]["mean"] - summary["official"]["mean"]
    bound = max(1.0, 2 * se)
    result = {
        "method": method, "dataset": dataset, "ipc": ipc, "iterations": iters,
        **({"official_iterations": off_iters} if off_iters != iters else {}),
        "distillation_seeds": seeds, "protocol": protocol, "eval_seeds": eval_seeds,
        "official": summary["official"], "ddbench": summary["ddbench"],
        "difference_ddbench_minus_official": diff, "bound": bound, "standard_error": se,
        "within_bound": abs(diff) <= bound, "per_seed": rows,
        "official_repo": other["repo"] if other else "VICO-UoE/DatasetCondensation",
        "official_commit": commit,
        "official_edits": other["edits"] if other else "bench/parity/official_dc_setup.sh (E1-E6, E9)",
        **({"official_repo": "cvlab-yonsei/FYI (DC_DSA_DM)",
            "official_edits": "bench/parity/official_dc_setup.sh (E1-E3, E5, E7-E9)"}
           if method in FYI_BASE else {}),
        "data": "ddbench's train split (the 10% val carve-out excluded) and test split, both sides",
        **({"experts": prepared} if prepared and method in TRAJECTORY_SETTINGS else {}),
        **({"shared_teacher": prepared, "aligned_settings": other["aligned"],
            "recovery_settings": other.get("settings") or recovery_settings(method)}
           if other and "aligned" in other else {}),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), OMP_NUM_THREADS=1",
        "torch": torch.__version__, "commands": commands, "seconds": timings,
    }  # fmt: skip
    path = out / f"{method}_{dataset}_ipc{ipc}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{path}: official {summary['official']['mean']:.2f} +- {summary['official']['std']:.2f}"
          f", ddbench {summary['ddbench']['mean']:.2f} +- {summary['ddbench']['std']:.2f}, "
          f"diff {diff:+.2f} (bound {bound:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
