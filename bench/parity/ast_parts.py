"""AST's parts against the authors' own functions, on digits (CPU, seconds).

    python bench/parity/ast_parts.py OFFICIAL_CHECKOUT [--out RESULT.json]

OFFICIAL_CHECKOUT is shenjiyuan123/AST-Alignment-with-Smooth-Expert (extracted from a bare
clone with ``git archive``, outside the project); nothing of it is copied here. Three parts
of theirs are callable and are called as they are:

* ``utils.epoch_gp`` (their smooth expert step): three SGD steps (lr 0.003, momentum 0.9,
  weight decay 1e-3) on one digits batch at the loss weights of epochs 0, 4 and 12, against
  ddbench's ``SmoothStep`` on a copy of the same network (``aug=False``: their CE and penalty
  then see the same images; ddbench's penalty always sees the batch before augmentation);
* ``weightPerturb`` and ``get_repre_images``, nested in their ``distill.py`` ``main()``: their
  source is taken out of ``main`` with Python's ``ast`` module and executed with the free names
  it reads (``args``, the images, the network builder: ddbench's ConvNet) bound here, against
  ``AST.start_params`` (same seed: their global generator, ddbench's task generator) and
  ``AST.init_images`` (``--pix_init avg``) on one expert trajectory written in their
  ``replay_buffer_0.pt`` format.

Local stand-ins, each only for running on this machine: ``Tensor.cuda`` is the identity (their
``epoch_gp`` moves ``grad_outputs`` to CUDA); ``matplotlib`` is an inert module (their
``get_repre_images`` draws a figure; it is not installed); scikit-learn's ``KMeans`` defaults to
``n_init=10``, its default before 1.4 (their last commit is of 2023-11, before 1.4); ``scipy.ndimage.interpolation`` is
aliased to ``scipy.ndimage`` where newer SciPy removed it (their ``utils.py`` imports it).
Prints one line per check and exits non-zero on a difference.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import json
import random
import sys
import tempfile
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddbench import data, experts
from ddbench.experts import ExpertConfig, ExpertStepContext
from ddbench.method import Task
from ddbench.methods.ast import AST, SmoothStep
from ddbench.models import create_model


def _stand_ins() -> None:
    import scipy.ndimage

    if "scipy.ndimage.interpolation" not in sys.modules:
        try:
            import scipy.ndimage.interpolation  # noqa: F401
        except ImportError:
            sys.modules["scipy.ndimage.interpolation"] = scipy.ndimage
    torch.Tensor.cuda = lambda self, *a, **k: self

    class _Inert:
        def __getattr__(self, name):
            return _Inert()

        def __call__(self, *a, **k):
            return _Inert()

        def __getitem__(self, i):
            return _Inert()

    import sklearn.cluster

    class KMeans(sklearn.cluster.KMeans):  # scikit-learn < 1.4's default n_init, as theirs ran
        def __init__(self, n_clusters=8, *, n_init=10, **kw):
            super().__init__(n_clusters, n_init=n_init, **kw)

    sklearn.cluster.KMeans = KMeans
    plt = types.ModuleType("matplotlib.pyplot")
    plt.subplots = lambda *a, **k: (_Inert(), _Inert())
    mpl = types.ModuleType("matplotlib")
    mpl.pyplot = plt
    sys.modules.setdefault("matplotlib", mpl)
    sys.modules.setdefault("matplotlib.pyplot", plt)


def _nested(distill_py: Path, name: str, namespace: dict):
    """The function ``name`` defined inside their ``main()``, compiled in ``namespace``."""
    tree = ast.parse(distill_py.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    fn = next(n for n in ast.walk(main) if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(distill_py), "exec"), namespace)
    return namespace[name]


def _net() -> torch.nn.Module:
    return create_model("convnet", 1, 10, (8, 8), net_width=16)


def check_smooth_step(theirs, x, y) -> dict:
    torch.manual_seed(0)
    net_a = _net()
    net_b, net_0 = copy.deepcopy(net_a), copy.deepcopy(net_a)
    args = types.SimpleNamespace(device="cpu", dataset="digits", dsa=False)
    out = {}
    for epoch, decay in ((0, 0.5), (4, 0.7), (12, 1)):  # buffer.py 91, 110
        opt_a = torch.optim.SGD(net_a.parameters(), lr=0.003, momentum=0.9, weight_decay=1e-3)
        opt_b = torch.optim.SGD(net_b.parameters(), lr=0.003, momentum=0.9, weight_decay=1e-3)
        step = SmoothStep(grad_penalty=2.0, loss_decay=True, reset_momentum=True)
        step.context = ExpertStepContext(net_b, epoch)
        params = list(net_b.parameters())
        for _ in range(3):
            theirs.epoch_gp(
                "train", decay, [(x, y)], net_a, opt_a, torch.nn.CrossEntropyLoss(), args, False
            )
            step.context.observe(x, y)
            step(lambda: F.cross_entropy(net_b(x), y), params, opt_b)
        out[f"epoch_{epoch}"] = max(
            float((a - b).abs().max()) for a, b in zip(net_a.parameters(), net_b.parameters())
        )
    moved = max(float((a - b).abs().max()) for a, b in zip(net_0.parameters(), params))
    return {"max_abs_diff": out, "moved": moved, "ok": max(out.values()) <= 1e-6}


def check_perturbation(distill_py: Path, a: AST, task: Task, traj: torch.Tensor) -> dict:
    perturb = _nested(distill_py, "weightPerturb", {"torch": torch})
    theta = traj[3]
    tensors = [t.clone() for t in a.student.unflatten(theta).values()]
    torch.manual_seed(11)
    theirs = torch.cat([t.reshape(-1) for t in perturb(tensors, alpha=1)])
    task.generator.manual_seed(11)
    ours = a.start_params(task, theta)
    diff = float((theirs - ours).abs().max())
    return {"max_abs_diff": diff, "moved": float((ours - theta).abs().max()), "ok": diff <= 1e-6}


def check_init(distill_py: Path, a: AST, train, traj: torch.Tensor, workdir: Path) -> dict:
    buffers = workdir / "buffers"
    (buffers / "digits" / "ConvNet").mkdir(parents=True, exist_ok=True)
    flat = a.student
    epochs = [[t.clone() for t in flat.unflatten(row).values()] for row in traj]
    torch.save([epochs], buffers / "digits" / "ConvNet" / "replay_buffer_0.pt")
    images_all = train.normalize(train.images).float()
    indices_class = [train.indices_of(c).tolist() for c in range(10)]
    namespace = {
        "args": types.SimpleNamespace(
            model="ConvNet", buffer_path=str(buffers), dataset="digits", zca=False, device="cpu"
        ),
        "channel": 1, "num_classes": 10, "im_size": (8, 8), "os": __import__("os"),
        "random": random, "np": np, "torch": torch, "images_all": images_all,
        "indices_class": indices_class,
        "get_network": lambda *args, **kw: _net(),
    }  # fmt: skip
    get_repre_images = _nested(distill_py, "get_repre_images", namespace)
    out = {}
    for ipc in (1, 10, 20):
        task = Task(train=train, ipc=ipc, model_factory=_net, generator=torch.Generator(),
                    seed=0, device=torch.device("cpu"))  # fmt: skip
        ours, _ = a.init_images(task)
        with torch.no_grad():
            rows = get_repre_images(ipc)
        theirs = images_all[rows] if rows else images_all[:0]
        same = theirs.shape == ours.shape and torch.equal(theirs, ours)
        out[f"ipc{ipc}"] = {"theirs": len(rows), "ddbench": len(ours), "same_images": same}
    out["ok"] = all(v["same_images"] for k, v in out.items() if k != "ipc1")
    return out


def _wandb_stand_in(logged: list) -> types.ModuleType:
    """An offline ``wandb`` that keeps what is logged (their ``distill.py`` rebuilds ``args`` from
    ``wandb.config._items``)."""
    w = types.ModuleType("wandb")

    def init(config=None, **kw):
        w.config = types.SimpleNamespace(_items=dict(vars(config)))
        w.run = types.SimpleNamespace(name="parity")

    w.init, w.finish = init, lambda: None
    # values as they are when logged (their tensors are updated in place afterwards)
    w.log = lambda values, step=None: logged.append(
        (step, {k: v.clone() if torch.is_tensor(v) else v for k, v in values.items()})
    )
    w.Histogram = w.Image = lambda *a, **k: None
    return w


def check_one_iteration(official: Path, theirs_utils, cfg: ExpertConfig, traj, train, tmp: Path):
    """One iteration of their ``distill.py main()`` (IPC 10, ``--pix_init avg --balance_loss
    --agg_middle_loss``, ``--mom`` 0.9, no DSA and no perturbation: their draws come from
    generators ddbench does not share; all images in each step, so the batch order does not
    matter) against one iteration of ``ddbench``'s AST on the same expert: the matching loss,
    the learned lr and the images after the update."""
    net = theirs_utils.get_network("ConvNet", 1, 10, (8, 8))
    flat = experts.FlatModel(net)
    buffers = tmp / "buffers1"
    (buffers / "digits" / "ConvNet").mkdir(parents=True)
    epochs = [[t.clone() for t in flat.unflatten(row).values()] for row in traj]
    torch.save([epochs], buffers / "digits" / "ConvNet" / "replay_buffer_0.pt")
    images = train.normalize(train.images).float()
    dst_train = torch.utils.data.TensorDataset(images, train.labels)
    identity = {c: c for c in range(10)}

    def get_dataset(*a, **k):  # ddbench's digits train split (their get_dataset has none)
        return (1, (8, 8), 10, [str(c) for c in range(10)], None, None, dst_train, None, None,
                None, identity, identity)  # fmt: skip

    accuracy = iter(range(1, 100))  # rising: their loop then saves the images at iteration 1
    theirs_utils.get_dataset = get_dataset
    theirs_utils.evaluate_synset = lambda *a, **k: (None, 0.0, float(next(accuracy)))
    logged: list = []
    sys.modules["wandb"] = _wandb_stand_in(logged)
    sys.modules.setdefault("generator", types.SimpleNamespace(Generator=None))
    distill = __import__("distill")
    settings = dict(syn_steps=7, expert_epochs=3, max_start_epoch=1, lr_img=100.0, lr_lr=1e-5,
                    lr_teacher=0.01)  # fmt: skip
    args = types.SimpleNamespace(
        dataset="digits", subset="", model="ConvNet", ipc=10, align_loss=False, eval_mode="S",
        num_eval=1, eval_it=1, epoch_eval_train=1, Iteration=1, mom=0.9, balance_loss=True,
        agg_middle_loss=True, adaptive_middle_loss=False, ignore_graph=False,
        weight_perturb=False, batch_real=256, batch_syn=None, batch_train=256, pix_init="avg",
        dsa="False", dsa_strategy="", data_path="", buffer_path=str(buffers), zca=False,
        load_all=False, no_aug=False, texture=False, canvas_size=1, canvas_samples=1,
        max_files=None, max_experts=None, force_save=False, dc_aug_param=None, **settings,
    )  # fmt: skip
    cwd = Path.cwd()
    try:
        import os

        os.chdir(tmp)
        np.random.seed(0)
        random.seed(0)
        distill.main(args)
    finally:
        os.chdir(cwd)
    theirs_images = torch.load(tmp / "logged_files" / "digits" / "parity" / "images_1.pt")
    theirs_loss = [float(v["Grand_Loss"]) for _, v in logged if "Grand_Loss" in v][0]
    theirs_lr = [float(v["Synthetic_LR"]) for it, v in logged if "Synthetic_LR" in v and it == 1]

    losses = []

    class Recorded(AST):
        def step(self, task, images, labels, it):
            losses.append(super().step(task, images, labels, it))
            return losses[-1]

    a = Recorded(iterations=1, batch_syn=None, dsa=False, num_experts=1, weight_perturb=False,
                 experts=asdict(cfg), **settings)  # fmt: skip
    task = Task(train=train, ipc=10, model_factory=_net128, generator=torch.Generator(),
                seed=0, device=torch.device("cpu"))  # fmt: skip
    s = a.distill(task)
    diff = float((s.images - theirs_images).abs().max())
    moved = float((s.images - a.init_images(task)[0]).abs().max())
    out = {
        "loss": {"theirs": theirs_loss, "ddbench": losses[0]},
        "learned_lr": {"theirs": theirs_lr[0], "ddbench": float(s.lr)},
        "images_max_abs_diff": diff,
        "images_moved": moved,
    }
    out["ok"] = (
        abs(theirs_loss - losses[0]) <= 1e-4 * abs(theirs_loss)
        and abs(theirs_lr[0] - float(s.lr)) <= 1e-6
        and diff <= 1e-3 * moved
    )
    return out


def check_expert_training(theirs_utils, train, tmp: Path) -> dict:
    """One smooth expert of their ``buffer.py main()`` (README.md:12's ``--optim SGDMOM
    --loss_decay --gp True``, 5 epochs: the lr drops after epoch ``5 // 2 + 1`` = 3) against
    ``experts.get_experts`` with AST's expert config (``milestones: [0.8]``: the same epoch).
    Their ``p.detach().cpu()`` records copy the weights on CUDA; on the CPU ``.cpu()`` is made to
    copy as well (else every record is the final weights). Both start from ddbench's initial
    network (theirs seeds it from the clock), train without
    augmentation (ddbench ``augment: none``, their ``augment`` the identity: the draws come from
    generators the two sides do not share) and on the whole split per step (so the batch order
    does not matter)."""
    cfg = dataclasses.replace(AST().experts, model_kwargs={"net_width": 16}, epochs=5,
                              batch_size=4096, milestones=[0.8], augment="none")  # fmt: skip
    ours = experts.get_experts("digits", cfg, 1, "cpu", progress=False)[0]
    torch.manual_seed(cfg.seed)
    init = experts.build_expert_model("digits", cfg)
    flat = experts.FlatModel(init)
    assert torch.equal(flat.flatten(dict(init.named_parameters())), ours[0])
    images = train.normalize(train.images).float()
    dst_train = torch.utils.data.TensorDataset(images, train.labels)
    testloader = torch.utils.data.DataLoader(dst_train, batch_size=4096)
    identity = {c: c for c in range(10)}
    theirs_utils.augment = lambda images, dc_aug_param, device: images
    buffer = __import__("buffer")
    buffer.get_dataset = lambda *a, **k: (1, (8, 8), 10, None, None, None, dst_train, None,
                                          testloader, None, identity, identity)  # fmt: skip
    buffer.get_network = lambda *a, **k: copy.deepcopy(init)
    args = types.SimpleNamespace(
        dataset="digits", subset="", model="ConvNet", num_experts=1, lr_teacher=0.003,
        batch_train=4096, batch_real=256, dsa="False", dsa_strategy="", data_path="",
        buffer_path=str(tmp / "buffers2"), train_epochs=5, zca=False, decay=False, mom=0.9,
        l2=0.001, gp="True", loss_decay=True, optim="SGDMOM", save_interval=5,
    )  # fmt: skip
    cpu = torch.Tensor.cpu  # on the CPU, their .detach().cpu() records would alias the weights
    torch.Tensor.cpu = lambda self, *a, **k: (
        cpu(self, *a, **k).clone() if self.device.type == "cpu" else cpu(self, *a, **k)
    )
    try:
        buffer.main(args)
    finally:
        torch.Tensor.cpu = cpu
    (timestamps,) = torch.load(tmp / "buffers2" / "digits" / "ConvNet" / "replay_buffer_0.pt")
    theirs = torch.stack([torch.cat([p.reshape(-1) for p in row]) for row in timestamps])
    diff = [float(d) for d in (theirs - ours).abs().amax(1)]
    moved = float((ours[-1] - ours[0]).abs().max())
    return {"max_abs_diff_per_epoch": diff, "moved": moved, "ok": max(diff) <= 1e-3 * moved}


def _net128() -> torch.nn.Module:
    return create_model("convnet", 1, 10, (8, 8))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("official", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    _stand_ins()
    sys.path.insert(0, str(args.official))
    theirs = __import__("utils")
    torch.set_num_threads(1)
    train = data.load_split("digits", "train")
    x, y = train.normalize(train.images[:64]).float(), train.labels[:64]
    result = {"commit": (args.official / "COMMIT").read_text().strip()
              if (args.official / "COMMIT").exists() else None}  # fmt: skip
    result["smooth_step"] = check_smooth_step(theirs, x, y)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        import os

        os.environ["DDBENCH_CACHE"] = str(cache)
        cfg = ExpertConfig(model_kwargs={"net_width": 16}, epochs=4, lr=0.05, batch_size=64)
        traj = experts.get_experts("digits", cfg, 1, "cpu", progress=False)[0]
        a = AST(experts=asdict(cfg), num_experts=1, expert_epochs=2, max_start_epoch=2)
        a.student = experts.FlatModel(_net())
        a.trajectories = [traj]
        task = Task(train=train, ipc=1, model_factory=_net, generator=torch.Generator(),
                    seed=0, device=torch.device("cpu"))  # fmt: skip
        result["weight_perturb"] = check_perturbation(args.official / "distill.py", a, task, traj)
        result["pix_init_avg"] = check_init(args.official / "distill.py", a, train, traj, Path(tmp))
        cfg128 = ExpertConfig(epochs=4, lr=0.05, batch_size=64)  # their ConvNet's width, 128
        traj128 = experts.get_experts("digits", cfg128, 1, "cpu", progress=False)[0]
        result["expert_training"] = check_expert_training(theirs, train, Path(tmp))
        result["one_iteration"] = check_one_iteration(
            args.official, theirs, cfg128, traj128, train, Path(tmp)
        )
    for k, v in result.items():
        print(f"{k}: {v}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0 if all(v["ok"] for k, v in result.items() if k != "commit") else 1


if __name__ == "__main__":
    sys.exit(main())
