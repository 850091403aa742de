"""Same sets before and after a change: every method distils a set on digits with fixed seeds,
and the sets are written to, or compared with, a reference file.

    python bench/same_sets.py --write REF.safetensors [--budget tiny|real] [--methods dm,mtt]
    python bench/same_sets.py --check REF.safetensors [--budget tiny|real] [--methods dm,mtt]
    python bench/same_sets.py --git-ref REV [--budget real] [--methods dm,dc,mtt,sre2l]

``--write`` stores, per method and IPC, the set's ``images``, ``labels`` (hard or soft), ``lr``
(a learned lr) and ``indices`` (the picked train images of a selection), keyed
``<method>/ipc<k>/<tensor>``, and in the file's metadata the exact settings (``settings``: the
method nodes, the model, the seeds, the budget, torch's version). ``--check`` recomputes every
set and prints, per method and tensor, the largest absolute difference and whether it is
bit-identical; it exits 1 if any tensor is outside the tolerance (below) or missing.

The tiny budget is what ``tests/test_same_sets.py`` checks against the committed reference
``tests/data/same_sets_reference.safetensors``. The real budget (more iterations, IPC 10, wider
networks) is for a change of arithmetic; its reference is too large to commit, so it is made
before the change and checked after it::

    git stash
    python bench/same_sets.py --budget real --methods dm,dc,mtt,sre2l --write /tmp/before.st
    git stash pop
    python bench/same_sets.py --budget real --methods dm,dc,mtt,sre2l --check /tmp/before.st

or in one command, ``--git-ref REV``: the package of revision ``REV`` (``git archive``, laid out
as its ``pyproject.toml`` maps the packages; no worktree is left behind) is imported by a child
process running this script (``PYTHONPATH``, which comes before the editable install's finder),
which writes the "before" sets; the working tree's package then checks them. The child runs the
working tree's copy of this script, so its nodes must build in both revisions.

Tolerance (``TOLERANCE``): a float tensor passes when ``|a - b| <= atol + rtol * |b|``
elementwise: rtol 1e-4, atol 1e-5 for float32 images and soft labels; rtol 1e-4 and no atol for
the learned lr (about 0.01, moved in steps of about ``lr_lr``, which an atol of 1e-5 would hide);
rtol 2e-3, atol 1e-3 for float16 soft labels (teacher logits: two float16 ulps, 2^-10 relative
each, for a logit whose float32 value moved across a rounding boundary); integer tensors (hard
labels, indices) must be equal. A few SGD/Adam steps from the same start amplify a float32
rounding difference (a reordered sum, ~1e-7 relative) by at most the step count times the
learning rate's gain; 1e-4 relative leaves room for that and still fails on any changed setting,
draw or operation (twice a method's lr moves its images by 0.07 to 38 at the tiny budget). A
discrete decision (a selection, an argmax, a threshold) that flips is a failure, not rounding.

Every method is built from an explicit node through :func:`ddbench.method.build_method`, so the
numbers depend on no default of the method's class or YAML. Each node pins (besides
``_target_`` and ``name``):

* random, full: nothing (no settings);
* herding: ``features`` (teacher), ``teacher`` (every TeacherConfig field), ``normalize``,
  ``lr``, ``batch_size``, ``chunk``; kcenter: ``features`` (trained), ``feature_epochs``,
  ``init``, ``normalize``, ``lr``, ``batch_size``, ``chunk``;
* forgetting: ``count`` (epoch), ``epochs``, ``schedule`` (constant), ``augment`` (none),
  ``keep``, ``never_learned``, ``lr``, ``batch_size``, ``chunk``; el2n, grand: ``models``,
  ``epochs``, ``augment`` (none), ``keep``, ``lr``, ``batch_size``, ``chunk``, and grand's
  ``gradient`` (last_layer): the cheaper variants, which the reference pins;
* dc, dsa: ``iterations``, ``lr_img``, ``momentum_img``, ``init``, ``batch_real``, ``dsa``,
  ``lr_net``, ``batch_train``, ``outer_loop``, ``inner_loop``, ``distance``;
* dm: ``iterations``, ``lr_img``, ``momentum_img``, ``init``, ``batch_real``, ``dsa``;
  datadam: those and ``power``, ``mmd_weight``, ``loss_scale``;
* mtt: ``iterations``, ``lr_img``, ``momentum_img``, ``lr_lr``, ``lr_teacher``, ``lr_min``,
  ``syn_steps``, ``expert_epochs``, ``max_start_epoch``, ``batch_syn``, ``num_experts``,
  ``init``, ``dsa``, ``checkpoint_unroll``, ``experts`` (every ExpertConfig field of a plain
  expert); ftd: MTT's and ``ema_decay``, ``experts.step: gsam`` with ``sam_rho``/``gsam_alpha``/``sam_adaptive``;
  datm: MTT's (``max_start_epoch`` the initial bound) and ``min_start_epoch``,
  ``max_start_epoch_final``, ``expansion_iterations``, ``soft_labels``, ``lr_y``,
  ``momentum_y``, ``label_expert``, ``label_epoch``, ``label_average``, ``correct_init``,
  ``threshold``, the GSAM experts; ast: MTT's and ``representative_init``/``_expert``/``_epoch``/``_clusters``,
  ``balance_loss``, ``student_momentum``, ``agg_middle_loss``, ``weight_perturb``,
  ``experts.step: smooth`` with ``grad_penalty``/``loss_decay``/``reset_momentum``;
* sre2l: ``iterations``, ``lr_img``, ``img_betas``, ``r_bn``, ``first_bn_multiplier``,
  ``crop_scale``, ``flip``, ``jitter``, ``init``, ``label_dtype``, ``label_topk``,
  ``mismatch``, ``teacher`` (every TeacherConfig field); cda: those and ``curriculum``,
  ``milestone``; cvdd: SRe2L's but ``teacher``, and ``committee`` (every TeacherConfig field
  of each member), ``voting``, ``priors``, ``weight_temperature``, ``members_per_step``.

Left at the defaults on purpose (they do not change these numbers, and leaving them out keeps
a node valid where such a setting moves elsewhere or goes): ``eval_every`` (0: no evaluation),
``eval_epochs``, ``eval_seeds``, ``fyi`` (off), DM/DataDAM's ``lr_img_large_ipc`` (only at
IPC >= 100), DM's ``batched`` (``auto``: the per-class loop on a CPU, the batched form's numbers
up to rounding), and the dead ``batch_real`` of the trajectory methods. The global ``kernels``
setting stays ``auto``: the fused norm + ReLU kernel of trajectory students only takes
activations of >= 2^18 elements, which these budgets never reach (the largest, in a student step
of ``batch_syn`` 10 images, is 10 x 32 x 12 x 12 at the real budget's width 32).

Everything runs on the CPU in float32 (the task's ``precision`` given explicitly), on one thread
(a thread count changes the order of some reductions), with a fresh ``DDBENCH_CACHE`` per method
(teachers, experts and scores trained afresh and shared by the method's IPCs only) and the
global RNG seeded before each set. :func:`make_task` is the one place that builds a task.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
# (rtol, atol) by dtype, or by tensor name first; integer tensors must be equal
TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-3, 1e-3), "lr": (1e-4, 0.0)}

# ------------------------------------------------------------------------------ the budgets

BUDGETS: dict[str, dict[str, Any]] = {
    # the test's budget: 3 iterations, IPC 1 and 2, 3-epoch teachers and 4-epoch experts
    "tiny": {"width": 16, "ipcs": (1, 2), "iterations": 3, "epochs": 3},
    # the bench's: more iterations, IPC 10, a wider network
    "real": {"width": 32, "ipcs": (10,), "iterations": 20, "epochs": 5},
}


def teacher_node(width: int, epochs: int, model: str = "convnet", seed: int = 0) -> dict:
    """Every field of a :class:`ddbench.teachers.TeacherConfig`."""
    return {
        "model": model, "model_kwargs": {"net_width": width}, "epochs": epochs,
        "batch_size": 256, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
        "weight_decay": 0.0005, "schedule": "cosine", "augment": "none", "seed": seed,
    }  # fmt: skip


def expert_node(width: int, epochs: int, step: str = "plain", **step_kwargs: Any) -> dict:
    """Every field of a :class:`ddbench.experts.ExpertConfig`: plain, or the step variant
    ``step`` with its settings ``step_kwargs``."""
    return {
        "model": "convnet", "model_kwargs": {"net_width": width}, "epochs": epochs,
        "batch_size": 64, "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0,
        "schedule": "constant", "augment": "dsa", "zca": False, "zca_eps": 0.1, "seed": 0,
        "step": step, "step_kwargs": step_kwargs,
    }  # fmt: skip


def nodes(budget: str) -> dict[str, dict[str, Any]]:
    """The method nodes of a budget: ``{name: node}`` (see the module docstring)."""
    b = BUDGETS[budget]
    w, its, ep = b["width"], b["iterations"], b["epochs"]
    t = "ddbench.methods."
    sel = {"lr": 0.01, "batch_size": 256, "chunk": 256}
    image = {"iterations": its, "momentum_img": 0.5, "dsa": True}
    gm = {
        **image, "lr_img": 0.1, "batch_real": 32, "lr_net": 0.01, "batch_train": 256,
        "outer_loop": 2, "inner_loop": 2, "distance": "ours",
    }  # fmt: skip
    mtt = {
        **image, "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "lr_min": 1e-6,
        "syn_steps": 4, "expert_epochs": 1, "max_start_epoch": 2, "batch_syn": 10,
        "num_experts": 2, "init": "real", "checkpoint_unroll": False,
        "experts": expert_node(w, ep + 1),
    }  # fmt: skip
    gsam = expert_node(w, ep + 1, "gsam", sam_rho=0.01, gsam_alpha=0.4, sam_adaptive=True)
    sre2l = {
        "iterations": its, "lr_img": 0.25, "img_betas": [0.5, 0.9], "r_bn": 0.01,
        "first_bn_multiplier": 10.0, "crop_scale": [0.08, 1.0], "flip": False, "jitter": 2,
        "init": "noise", "label_dtype": "float16", "label_topk": None, "mismatch": "swap",
    }  # fmt: skip
    bn_teacher = teacher_node(w, ep, model="convnet_bn")
    return {
        "random": {"_target_": t + "subset.Random", "name": "random"},
        "full": {"_target_": t + "subset.Full", "name": "full"},
        "herding": {
            "_target_": t + "herding.Herding",
            "name": "herding",
            "features": "teacher",
            "teacher": teacher_node(w, ep),
            "normalize": False,
            **sel,
        },
        "kcenter": {
            "_target_": t + "herding.KCenter",
            "name": "kcenter",
            "features": "trained",
            "feature_epochs": 1,
            "init": "mean",
            "normalize": False,
            **sel,
        },
        "forgetting": {
            "_target_": t + "forgetting.Forgetting",
            "name": "forgetting",
            "count": "epoch",
            "epochs": ep,
            "schedule": "constant",
            "augment": "none",
            "keep": "hardest",
            "never_learned": "count",
            **sel,
        },
        "el2n": {
            "_target_": t + "el2n.EL2N",
            "name": "el2n",
            "models": 2,
            "epochs": ep,
            "augment": "none",
            "keep": "hardest",
            **sel,
        },
        "grand": {
            "_target_": t + "el2n.GraNd",
            "name": "grand",
            "models": 2,
            "epochs": 1,
            "augment": "none",
            "gradient": "last_layer",
            "keep": "hardest",
            **sel,
        },
        "dc": {
            "_target_": t + "gradient_matching.DC",
            "name": "dc",
            **gm,
            "init": "noise",
            "dsa": False,
        },
        "dsa": {"_target_": t + "gradient_matching.DSA", "name": "dsa", **gm, "init": "real"},
        "dm": {
            "_target_": t + "dm.DM",
            "name": "dm",
            **image,
            "lr_img": 1.0,
            "init": "real",
            "batch_real": 64,
        },
        "datadam": {
            "_target_": t + "datadam.DataDAM",
            "name": "datadam",
            **image,
            "lr_img": 1.0,
            "init": "real",
            "batch_real": 32,
            "power": 4.0,
            "mmd_weight": 0.01,
            "loss_scale": 100.0,
        },
        "mtt": {"_target_": t + "mtt.MTT", "name": "mtt", **mtt},
        "ftd": {
            "_target_": t + "ftd.FTD",
            "name": "ftd",
            **mtt,
            "ema_decay": 0.5,
            "experts": gsam,
        },
        "datm": {
            "_target_": t + "datm.DATM",
            "name": "datm",
            **mtt,
            "max_start_epoch": 1,
            "min_start_epoch": 0,
            "max_start_epoch_final": 2,
            "expansion_iterations": its,
            "soft_labels": True,
            "lr_y": 2.0,
            "momentum_y": 0.9,
            "label_expert": 0,
            "label_epoch": -1,
            "label_average": True,
            "correct_init": True,
            "threshold": 10.0,
            "experts": gsam,
        },
        "ast": {
            "_target_": t + "ast.AST",
            "name": "ast",
            **mtt,
            "expert_epochs": 2,
            "representative_init": "kmeans",
            "representative_expert": 0,
            "representative_epoch": -1,
            "representative_clusters": 10,
            "balance_loss": True,
            "student_momentum": 0.9,
            "agg_middle_loss": True,
            "weight_perturb": True,
            "experts": expert_node(
                w, ep + 2, "smooth", grad_penalty=2.0, loss_decay=True, reset_momentum=True
            ),
        },
        "sre2l": {
            "_target_": t + "sre2l.SRe2L",
            "name": "sre2l",
            **sre2l,
            "teacher": bn_teacher,
        },
        "cda": {
            "_target_": t + "cda.CDA",
            "name": "cda",
            **sre2l,
            "teacher": bn_teacher,
            "curriculum": "cosine",
            "milestone": 1.0,
        },
        "cvdd": {
            "_target_": t + "cvdd.CVDD",
            "name": "cvdd",
            **sre2l,
            "init": "real",
            "committee": [bn_teacher, teacher_node(w // 2, ep, model="convnet_bn", seed=1)],
            "voting": "prior",
            "priors": None,
            "weight_temperature": 5.0,
            "members_per_step": 1,
        },
    }


def model_kwargs(budget: str) -> dict[str, Any]:
    """The task's ConvNet, every option explicit."""
    return {
        "net_width": BUDGETS[budget]["width"], "net_depth": 3, "net_act": "relu",
        "net_norm": "instancenorm", "net_pooling": "avgpooling",
    }  # fmt: skip


def ipcs_of(method: str, budget: str) -> tuple[int, ...]:
    if method == "full":
        return (0,)  # the whole split: one set, whatever the IPC
    return BUDGETS[budget]["ipcs"]


# ------------------------------------------------------------------------------ the runs


def make_task(ipc: int, budget: str, seed: int = SEED):
    """The task every set is distilled in: digits, a small ConvNet, DSA, fp32 on the CPU."""
    from ddbench.augment import DSA
    from ddbench.data import load_split
    from ddbench.method import Task
    from ddbench.models import create_model

    train = load_split("digits", "train")
    kw = model_kwargs(budget)
    return Task(
        train=train,
        ipc=max(ipc, 1),
        model_factory=lambda: create_model("convnet", 1, train.num_classes, (8, 8), **kw),
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
        device=torch.device("cpu"),
        augment=DSA(train.spec.dsa_strategy),
        precision="fp32",
        val_loader=lambda: load_split("digits", "val"),
    )


@contextmanager
def isolated(cache: Path) -> Iterator[None]:
    """One thread, ``DDBENCH_CACHE`` at ``cache``; both restored after."""
    threads, before = torch.get_num_threads(), os.environ.get("DDBENCH_CACHE")
    torch.set_num_threads(1)
    os.environ["DDBENCH_CACHE"] = str(cache)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if before is None:
            os.environ.pop("DDBENCH_CACHE", None)
        else:
            os.environ["DDBENCH_CACHE"] = before


def tensors_of(synset) -> dict[str, torch.Tensor]:
    """The tensors of a set that the reference keeps."""
    out = {"images": synset.images, "labels": synset.labels}
    if synset.lr is not None:
        out["lr"] = synset.lr
    if synset.meta.get("indices") is not None:
        out["indices"] = torch.tensor(synset.meta["indices"], dtype=torch.long)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def distill(method: str, budget: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The sets of ``method`` at the budget's IPCs: ``({'<m>/ipc<k>/<t>': tensor}, {key: s})``."""
    import logging

    from ddbench.method import build_method

    logging.getLogger("ddbench").setLevel(logging.WARNING)
    node = nodes(budget)[method]
    out, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix=f"same_sets_{method}_") as cache:
        with isolated(Path(cache)):
            for ipc in ipcs_of(method, budget):
                torch.manual_seed(SEED)
                t0 = time.perf_counter()
                synset = build_method(copy.deepcopy(node)).distill(make_task(ipc, budget))
                key = f"{method}/ipc{ipc}"
                seconds[key] = time.perf_counter() - t0
                out.update({f"{key}/{k}": v for k, v in tensors_of(synset).items()})
    return out, seconds


def settings(methods: list[str], budget: str) -> dict[str, Any]:
    """What the sets of ``methods`` are made with (stored in the reference)."""
    return {
        "budget": budget,
        "dataset": "digits",
        "seed": SEED,
        "device": "cpu",
        "precision": "fp32",
        "threads": 1,
        "model": {"name": "convnet", "kwargs": model_kwargs(budget)},
        "ipcs": {m: list(ipcs_of(m, budget)) for m in methods},
        "nodes": {m: nodes(budget)[m] for m in methods},
        "torch": torch.__version__,
    }


# ------------------------------------------------------------------------------ compare


def compare(got: torch.Tensor, want: torch.Tensor, name: str = "") -> tuple[bool, bool, float]:
    """``(within the tolerance, bit-identical, max abs difference)`` of tensor ``name``."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, False, float("inf")
    if torch.equal(got, want):
        return True, True, 0.0
    if not want.is_floating_point():
        return False, False, float((got.long() - want.long()).abs().max())
    rtol, atol = TOLERANCE.get(name) or TOLERANCE[want.dtype]
    a, b = got.double(), want.double()
    diff = (a - b).abs()
    ok = bool(torch.isfinite(a).all()) and bool((diff <= atol + rtol * b.abs()).all())
    return ok, False, float(diff.max())


def check_method(
    method: str, got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]
) -> list[dict[str, Any]]:
    """One row per tensor of ``method`` in either set."""
    keys = sorted(k for k in set(got) | set(ref) if k.startswith(f"{method}/"))
    rows = []
    for k in keys:
        if k not in ref or k not in got:
            note = "missing in the reference" if k not in ref else "not made"
            rows.append({"key": k, "ok": False, "same": False, "diff": float("inf"), "note": note})
            continue
        ok, same, diff = compare(got[k], ref[k], k.rsplit("/", 1)[1])
        rows.append({"key": k, "ok": ok, "same": same, "diff": diff, "note": ""})
    return rows


def read_reference(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads((f.metadata() or {}).get("settings", "{}"))
    return tensors, meta


def write_reference(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"settings": json.dumps(meta, sort_keys=True)})


def print_table(rows: list[dict[str, Any]], seconds: dict[str, float]) -> None:
    print(f"{'tensor':<28} {'max abs diff':>13} {'identical':>9} {'ok':>4} {'s':>6}  note")
    for r in rows:
        set_key = r["key"].rsplit("/", 1)[0]
        s = seconds.pop(set_key, None)
        print(
            f"{r['key']:<28} {r['diff']:>13.3g} {'yes' if r['same'] else 'no':>9} "
            f"{'ok' if r['ok'] else 'FAIL':>4} {'' if s is None else f'{s:.1f}':>6}  {r['note']}"
        )


# ------------------------------------------------------------------------------ --git-ref


def stage_revision(rev: str, dest: Path) -> Path:
    """The package of revision ``rev`` laid out for ``PYTHONPATH`` as its pyproject maps it."""
    import tarfile

    if tomllib is None:
        sys.exit("--git-ref reads pyproject.toml with tomllib: it needs Python >= 3.11")
    src = dest / "src"
    src.mkdir(parents=True)
    archive = dest / "rev.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), rev], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    setup = tomllib.loads((src / "pyproject.toml").read_text()).get("tool", {}).get("setuptools")
    mapping = dict((setup or {}).get("package-dir") or {})
    packages = (setup or {}).get("packages")  # a list, or a table (packages.find)
    packages = packages if isinstance(packages, list) else list(mapping or ["ddbench"])
    stage = dest / "stage"
    for pkg in sorted(packages, key=lambda p: p.count(".")):
        where = src / mapping.get(pkg, pkg.replace(".", "/"))
        target = stage / pkg.replace(".", "/")
        if target.exists():  # a subpackage already copied with its parent
            shutil.rmtree(target)
        shutil.copytree(where, target)
    return stage


def run_git_ref(rev: str, budget: str, methods: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="same_sets_rev_") as tmp:
        stage = stage_revision(rev, Path(tmp))
        before = Path(tmp) / "before.safetensors"
        env = {**os.environ, "PYTHONPATH": str(stage), "SAME_SETS_EXPECT_PACKAGE": str(stage)}
        print(f"writing the sets of {rev} (package staged at {stage})", flush=True)
        cmd = [sys.executable, __file__, "--budget", budget, "--methods", ",".join(methods)]
        subprocess.run([*cmd, "--write", str(before)], env=env, check=True, cwd=tmp)
        print(f"checking the working tree's sets against {rev}'s", flush=True)
        return check(before, budget, methods)


# ------------------------------------------------------------------------------ main


def check(path: Path, budget: str, methods: list[str]) -> int:
    ref, meta = read_reference(path)
    if meta.get("budget") not in (None, budget):
        print(f"{path} holds the {meta['budget']!r} budget, not {budget!r}", file=sys.stderr)
        return 2
    rows, seconds, notes = [], {}, []
    for m in methods:
        got, s = distill(m, budget)
        seconds.update(s)
        rows += check_method(m, got, ref)
        stored = (meta.get("nodes") or {}).get(m)
        if stored is not None and stored != nodes(budget)[m]:
            notes.append(f"{m}: the node differs from the reference's (a renamed setting?)")
    print_table(rows, seconds)
    for n in notes:
        print("note:", n)
    bad = [r["key"] for r in rows if not r["ok"]]
    same = sorted({r["key"].split("/")[0] for r in rows} - {k.split("/")[0] for k in bad})
    print(f"{len(same)}/{len(methods)} methods within the tolerance", end="")
    print(f"; outside it: {', '.join(bad)}" if bad else "")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, help="distil the sets and store them here")
    mode.add_argument("--check", type=Path, help="distil the sets and compare with this file")
    mode.add_argument("--git-ref", help="compare with the sets of this git revision")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="tiny")
    p.add_argument("--methods", help="comma-separated (default: all)")
    args = p.parse_args(argv)
    expect = os.environ.get("SAME_SETS_EXPECT_PACKAGE")
    if expect:  # a --git-ref child: the staged package, not the editable install, must load
        import ddbench

        if not Path(ddbench.__file__).resolve().is_relative_to(Path(expect).resolve()):
            sys.exit(f"imported {ddbench.__file__}, not the staged package under {expect}")
    known = list(nodes(args.budget))
    methods = args.methods.split(",") if args.methods else known
    unknown = [m for m in methods if m not in known]
    if unknown:
        p.error(f"unknown methods {unknown}; known: {', '.join(known)}")
    if args.git_ref:
        return run_git_ref(args.git_ref, args.budget, methods)
    if args.check:
        return check(args.check, args.budget, methods)
    tensors, seconds = {}, {}
    for m in methods:
        t, s = distill(m, args.budget)
        tensors.update(t)
        seconds.update(s)
        print(f"{m}: {', '.join(f'{k} {v:.1f} s' for k, v in s.items())}", flush=True)
    write_reference(args.write, tensors, settings(methods, args.budget))
    size = args.write.stat().st_size
    print(f"wrote {len(tensors)} tensors of {len(methods)} methods to {args.write} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
