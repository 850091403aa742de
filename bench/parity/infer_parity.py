"""INFER's parity pieces for bench/parity/parity.py: the authors' generation
(zhangxin-xd/UFC ``ufc_generation/ufc_cifar.py``, patched by official_infer_setup.sh) and
``ddbench distill method=infer`` on the SAME teachers (ddbench's cached ``DEFAULT_TEACHERS``,
exported for their script) and the SAME real images (a 0-iteration ddbench run of the seed: its
real images are the authors' ``--init_path`` batches; ddbench's own run draws the same ones,
which the import checks).

Their script saves each slot's compensator (setup U7); :func:`collect` gathers them in ddbench's
order (compensator ``m B + b``: teacher ``m``, batch ``b``, their ``ipc_id = B + m B + b``) and
:func:`import_set` makes them a ddbench INFER set: the shared real images, their compensators,
and static labels from the same teachers (ddbench's ``static_logits``, the mean of the teachers'
logits on each composed image, as their ``val_static.py`` labels). So the two sets differ only in
the compensators, and both are scored under ``infer``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

# sh/ufc_cifar.sh (--iteration 1000 --r-bn 1 --lr 0.25) with ufc_cifar.py's defaults (jitter 4,
# first-bn-multiplier 10); M = ddbench's four default teachers (their --M 4)
SETTINGS = {"lr_img": 0.25, "r_bn": 1.0, "jitter": 4, "first_bn_multiplier": 10.0}
FLAGS = {"lr_img": "--lr", "r_bn": "--r-bn", "jitter": "--jitter",
         "first_bn_multiplier": "--first-bn-multiplier"}  # fmt: skip
ALIGNED = {
    "method.lr_img=0.25": "sh/ufc_cifar.sh --lr 0.25 (= ddbench's)",
    "method.r_bn=1.0": "sh/ufc_cifar.sh --r-bn 1 (= ddbench's)",
    "method.jitter=4": "their argparse default (= ddbench's)",
    "method.first_bn_multiplier=10.0": "their argparse default (= ddbench's)",
}


def teachers() -> list[dict]:
    """ddbench's default INFER teachers, or PARITY_INFER_TEACHERS (a JSON list of TeacherConfig
    nodes, e.g. small ones for a smoke test on digits), keys left out from SRe2L's teacher."""
    from ddbench.methods.infer import DEFAULT_TEACHERS
    from ddbench.recover import DEFAULT_TEACHER

    chosen = json.loads(os.environ.get("PARITY_INFER_TEACHERS") or "null") or DEFAULT_TEACHERS
    return [{**DEFAULT_TEACHER, **t} for t in chosen]


def aligned() -> dict[str, str]:
    """ddbench's overrides, each with its reason (recorded as ``aligned_settings``)."""
    out = dict(ALIGNED)
    if os.environ.get("PARITY_INFER_TEACHERS"):
        out["method.teachers=" + json.dumps(teachers()).replace('"', "")] = (
            "PARITY_INFER_TEACHERS: the teachers exported to their side"
        )
    return out


def pool_dir(save: Path) -> Path:
    """OUT/work/teachers/<dataset>/infer (``save`` is OUT/work/<row>/seed<S>/official)."""
    return save.parents[2] / "teachers"


def command(dataset: str, ipc: int, iters: int, seed: int, save: Path) -> list[str]:
    from ddbench.data import get_spec

    flags = [x for k, v in SETTINGS.items() for x in (FLAGS[k], str(v))]
    return ["ufc_generation/ufc_cifar.py", "--dataset", "ddbench", "--M", str(len(teachers())),
            "--ipc", str(ipc), "--iteration", str(iters), *flags,
            "--batch-size", str(get_spec(dataset).num_classes), "--exp-name", "parity",
            "--wandb-name", "parity", "--syn-data-path", str(save / "syn"),
            "--init_path", str(save.parent / "official_init"), "--seed", str(seed),
            "--parity-save", str(save),
            "--model-pool-dir", str(pool_dir(save) / dataset / "infer")]  # fmt: skip


def ddbench_args(dataset: str, ipc: int) -> list[str]:
    return list(aligned())


def prepare(off: Path, dataset: str, work: Path) -> tuple[list[str], dict]:
    """The shared teachers, exported as ``t<i>.pth`` / ``t<i>.json`` in ddbench's order."""
    sys.path.insert(0, str(Path(__file__).parent))
    from sre2l_shim import export_teacher

    out = work.parent / "teachers" / dataset / "infer"
    infos = [export_teacher(dataset, t, out, f"t{i}") for i, t in enumerate(teachers())]
    return [], {"teachers": [{k: i[k] for k in ("key", "config", "val_accuracy")} for i in infos],
                "exported_to": str(out)}  # fmt: skip


def shared_start(d: Path, seed: int, dataset: str, ipc: int, ddbench: list[str], root: Path):
    """A 0-iteration ``ddbench distill method=infer`` of the seed (its real images, ``B`` per
    class, batch-major), written as their ``--init_path`` batches ``tensor_<b>.pt``."""
    from ddbench import synset
    from ddbench.data import get_spec

    start = d / "start" / "synset.safetensors"
    if not start.exists():
        subprocess.run([*ddbench, "distill", "method=infer", f"dataset={dataset}", f"ipc={ipc}",
                        f"seed={seed}", "method.iterations=0", "device=cpu", "precision=fp32",
                        "progress=false", *aligned(), f"hydra.run.dir={start.parent}"],
                       check=True, cwd=root)  # fmt: skip
    k = get_spec(dataset).num_classes
    images = synset.load(start).images.float()
    init = d / "official_init"
    init.mkdir(exist_ok=True)
    for b in range(len(images) // k):
        torch.save(images[b * k : (b + 1) * k].contiguous(), init / f"tensor_{b}.pt")
    return []


def collect(save: Path, res: Path, dataset: str, ipc: int) -> None:
    """Their slots (setup U7) as ``real_parity.pt`` (``[B K, C, H, W]``, batch-major) and
    ``res`` (the compensators ``[B M, C, H, W]`` in ddbench's order); each slot is checked to
    start from its batch and to have been made by the teacher ddbench's order gives it."""
    from ddbench.data import get_spec
    from ddbench.methods.infer import budget_split

    m = len(teachers())
    b, u = budget_split(ipc, get_spec(dataset).num_classes, m)
    slots = []
    for i in range(b + u):
        f = save / f"slot_{i:05d}.pt"
        if not f.exists():
            raise SystemExit(f"{f}: missing (their run saved {len(slots)} of {b + u} slots)")
        slots.append(torch.load(f, map_location="cpu", weights_only=True))
    for i, s in enumerate(slots):
        want = -1 if i < b else (i - b) // b
        if s["teacher"] != want or not torch.equal(s["real"], slots[i % b]["real"]):
            raise SystemExit(f"slot {i}: teacher {s['teacher']} (expected {want}) or another "
                             f"batch than {i % b}")  # fmt: skip
    torch.save(torch.cat([s["real"] for s in slots[:b]]).contiguous(), save / "real_parity.pt")
    torch.save(torch.cat([s["compensator"] for s in slots[b:]]).contiguous(), res)


def import_set(res: Path, d: Path, dataset: str, out: Path, code: str) -> None:
    """The authors' set as a ddbench INFER set (module docstring), marked ``imported:infer``."""
    from ddbench import synset
    from ddbench.data import get_spec
    from ddbench.methods.infer import static_logits
    from ddbench.recover import load_members
    from ddbench.relabel import relabel_set
    from ddbench.teachers import TeacherConfig

    start = synset.load(d / "start" / "synset.safetensors")
    real = torch.load(res.with_name("real_parity.pt"), map_location="cpu", weights_only=True)
    if not torch.equal(real.float(), start.images.float()):
        raise SystemExit(f"{res}: the authors' real images are not the shared start's")
    comp = torch.load(res, map_location="cpu", weights_only=True).float()
    spec = get_spec(dataset)
    meta = json.loads(json.dumps(start.meta))
    meta["method"] = {"name": "imported:infer", "config": {"code": code}}
    meta["distillation"] = {"compensators": f"the authors' ({code}), from the shared real images"}
    s = replace(start, meta=meta, extras={"compensators": comp})
    composed = synset.compensated_view(s.images, s.extras, s.meta, "infer parity import")
    relabel = dict(start.meta["relabel"])
    cfgs = [TeacherConfig.from_config(t["config"]) for t in relabel["teachers"]]
    members = load_members(SimpleNamespace(spec=spec, device=torch.device("cpu")), cfgs)
    try:
        logits = static_logits(members, composed)
    finally:
        for mem in members:
            mem.remove()
    k, b = spec.num_classes, len(s.images) // spec.num_classes
    classes = torch.arange(k).repeat(b + len(comp))  # the composed images' classes, in order
    kept = {key: relabel[key] for key in ("static", "teachers") if key in relabel}
    s = relabel_set(s, logits, classes, method="infer", label_dtype=relabel["dtype"],
                    label_topk=relabel.get("topk"), mismatch="swap", meta=kept)  # fmt: skip
    synset.save(s, out)
    print(f"wrote {out} (the authors' {len(comp)} compensators over {b * k} shared real images)")
