"""The local parity shim between ddbench and the authors' recovery scripts of SRe2L, CDA
(VILA-Lab/SRe2L), CV-DD (Jiacheng8/CV-DD) and INFER (zhangxin-xd/UFC).

Two halves:

- ddbench's side (:func:`export_teacher`): a cached ddbench teacher written as their scripts
  load a network, ``NAME.pth`` (its ``state_dict``) with ``NAME.json`` beside it (its
  ``TeacherConfig``, the dataset's shape, classes and normalisation constants, its cache key and
  val accuracy).
- their side: ``official_sre2l_setup.sh`` copies this file beside each patched script as
  ``ddbench_parity_shim.py``; the edits (``ddbench-parity S<n>``) call :func:`setup` (``--seed``,
  the exported teacher's config), :func:`teacher` / :func:`member` (the network built by
  ddbench's model factory, ``ddbench.models.create_model``, with stock modules), :func:`priors`,
  :func:`save_slot` (the exact final tensors of one recovery batch) and :func:`init_slot` (a
  shared start in place of CV-DD's patch files); ``official_infer_setup.sh`` calls
  :func:`setup`, :func:`pool` (INFER's teachers) and :func:`save_compensator`. Importing
  ddbench there is this shim's doing:
  their scripts run under ddbench's interpreter, nothing else of theirs imports ddbench.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

DEVICE = "cpu"
MEAN: list[float] = []
STD: list[float] = []
SHAPE: tuple[int, int, int] = (0, 0, 0)
NUM_CLASSES = 0
POOL: dict[str, dict] = {}  # CV-DD's committee, INFER's teachers: name -> its exported config
_POOL_DIR = ""


# ------------------------------------------------------------------ ddbench's side


def export_teacher(dataset: str, config: dict, out: Path, name: str) -> dict:
    """The cached ddbench teacher of ``config`` (a ``TeacherConfig`` node; trained once on a
    cache miss) as ``out/NAME.pth`` (state_dict) and ``out/NAME.json``; returns the JSON."""
    from ddbench.data import get_spec
    from ddbench.teachers import TeacherConfig, get_teacher

    cfg = TeacherConfig.from_config(config)
    with torch.random.fork_rng(devices=[]):
        net, meta = get_teacher(dataset, cfg, device="cpu")
    spec = get_spec(dataset)
    info = {
        "dataset": dataset,
        "config": meta["config"],
        "key": meta["key"],
        "val_accuracy": meta["val_accuracy"],
        "shape": list(spec.shape),
        "num_classes": spec.num_classes,
        "mean": list(spec.mean),
        "std": list(spec.std),
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
               out / f"{name}.pth")  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


# ------------------------------------------------------------------ their side


def _info(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def setup(args) -> None:
    """After their argparse: seed torch, numpy and python's random with ``--seed`` (>= 0), and
    take the dataset's shape, classes and constants from the exported teacher (``--arch-path``:
    SRe2L, CDA) or committee (``--model-pool-dir``: CV-DD, every ``*.json`` there a member)."""
    global MEAN, STD, SHAPE, NUM_CLASSES, _POOL_DIR
    if getattr(args, "seed", -1) >= 0:
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)
    if getattr(args, "arch_path", ""):
        infos = [_info(Path(args.arch_path))]
    else:
        _POOL_DIR = args.model_pool_dir
        files = sorted(Path(args.model_pool_dir).glob("*.json"))
        POOL.update({f.stem: _info(f) for f in files})
        infos = list(POOL.values())
    if not infos:
        raise SystemExit("ddbench-parity: no exported teacher (--arch-path / --model-pool-dir)")
    MEAN, STD = infos[0]["mean"], infos[0]["std"]
    SHAPE, NUM_CLASSES = tuple(infos[0]["shape"]), infos[0]["num_classes"]


def _build(info: dict) -> torch.nn.Module:
    from ddbench.models import create_model

    c = info["config"]
    c_in, h, w = info["shape"]
    return create_model(c["model"], c_in, info["num_classes"], (h, w), kernels="off",
                        **c["model_kwargs"])  # fmt: skip


def teacher(path: str) -> torch.nn.Module:
    """The exported teacher ``path`` (``.pth`` with its ``.json``), weights loaded, in eval mode
    on :data:`DEVICE` (their code sets eval mode and freezes it next)."""
    net = _build(_info(Path(path)))
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.to(DEVICE).eval()


def is_member(name: str) -> bool:
    return name in POOL


def member(name: str) -> torch.nn.Module:
    """CV-DD's committee member ``name`` without weights (their ``load_recover_model`` loads
    ``MODEL_POOL_DIR/NAME.pth`` into it)."""
    return _build(POOL[name])


def pool() -> list[torch.nn.Module]:
    """Every exported network of ``--model-pool-dir`` (INFER's ``M`` teachers), in name order,
    weights loaded, in eval mode on :data:`DEVICE` (their code freezes them next)."""
    return [teacher(str(Path(_POOL_DIR) / f"{name}.pth")) for name in sorted(POOL)]


def priors() -> dict[str, float]:
    """Each member's prior performance for CV-DD's voting: its val accuracy (%), the prior
    ddbench's CV-DD takes by default (their code: per-dataset constants)."""
    return {name: float(info["val_accuracy"]) for name, info in POOL.items()}


def save_slot(save_dir: str, images: torch.Tensor, targets: torch.Tensor, slot: int) -> None:
    """The final images (normalised, float32, as optimised) and targets of recovery batch
    ``slot`` as ``save_dir/slot_<slot>.pt``: the exact tensors, not their 8-bit JPEGs."""
    if not save_dir:
        return
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    torch.save({"images": images.detach().cpu().clone(), "labels": targets.detach().cpu().clone()},
               Path(save_dir) / f"slot_{slot:05d}.pt")  # fmt: skip


def save_compensator(
    save_dir: str, slot: int, real: torch.Tensor, compensator: torch.Tensor, made_by: int
) -> None:
    """INFER's generation slot ``slot`` (their ``ipc_id``) as ``save_dir/slot_<slot>.pt``: the
    batch of real images it starts from, its compensator as optimised (zeros in the first
    ``B`` slots, which store the real images alone) and the index of the teacher that made it
    (``made_by``; -1: none)."""
    if not save_dir:
        return
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    torch.save({"real": real.detach().cpu().clone(), "teacher": int(made_by),
                "compensator": compensator.detach().cpu().clone()},
               Path(save_dir) / f"slot_{slot:05d}.pt")  # fmt: skip


def init_slot(path: str, start: int, end: int, slot: int) -> torch.Tensor:
    """The start of recovery batch ``slot`` for classes ``start..end-1`` from a shared start
    (``[K * ipc, C, H, W]`` normalised images ordered by class, ``torch.save``d): the ``slot``-th
    image of each class, as a leaf tensor to optimise."""
    x = torch.load(path, map_location="cpu", weights_only=True)
    ipc = len(x) // NUM_CLASSES
    rows = [c * ipc + slot for c in range(start, end)]
    return x[rows].float().clone().to(DEVICE).requires_grad_(True)


def collect(save_dir: Path, ipc: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The set from the ``slot_<j>.pt`` files of :func:`save_slot`: images ``[K * ipc, ...]``
    ordered by class (ddbench's order) and their hard labels; one error for a missing slot or
    a batch whose targets are not the classes in order."""
    slots = []
    for j in range(ipc):
        f = save_dir / f"slot_{j:05d}.pt"
        if not f.exists():
            raise SystemExit(f"{f}: missing (their run saved {len(slots)} of {ipc} batches)")
        d = torch.load(f, map_location="cpu", weights_only=True)
        if not torch.equal(d["labels"].long(), torch.arange(num_classes)):
            raise SystemExit(
                f"{f}: targets {d['labels'].tolist()}, not classes 0..{num_classes - 1}"
            )
        slots.append(d["images"])
    x = torch.stack(slots, 1)  # [K, ipc, C, H, W]
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    return x.reshape(-1, *x.shape[2:]).contiguous(), labels
