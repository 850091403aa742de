"""The trajectory methods against their authors' code (issue 27), on the real digits data: the
authors' replay buffers into and out of the expert cache (MTT's buffer.py format), FTD's GSAM
step and BatchNorm statistics, the ``eval_every`` monitor's learned lr, DATM's experts and
evaluation protocol."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_runner import run_cli
from conftest import make_task

from ddbench import engine, experts
from ddbench.cli import expert_config
from ddbench.errors import DDBenchError
from ddbench.experts import ExpertConfig, FlatModel, build_expert_model
from ddbench.method import build_method
from ddbench.methods import packaged_config
from ddbench.methods.datm import DATM
from ddbench.methods.ftd import GSAMStep
from ddbench.methods.mtt import MTT
from ddbench.models import create_model
from ddbench.protocol import protocol_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ExpertConfig(model_kwargs={"net_width": 8}, epochs=2, lr=0.05, batch_size=64)


def their_convnet(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The forward of MTT's networks.py ConvNet (depth 3, instancenorm = GroupNorm(C, C),
    ReLU, average pooling; padding 3 in the first conv of 1-channel images), written from its
    layout: per block conv weight, conv bias, norm weight, norm bias; then the classifier."""
    out = x
    for d in range(3):
        w, b, gw, gb = params[4 * d : 4 * d + 4]
        out = F.conv2d(out, w, b, padding=3 if x.shape[1] == 1 and d == 0 else 1)
        out = F.avg_pool2d(F.relu(F.group_norm(out, w.shape[0], gw, gb)), 2)
    return F.linear(out.reshape(len(x), -1), params[12], params[13])


@pytest.fixture
def tiny_experts(digits_train) -> list[torch.Tensor]:
    """Two width-8 experts trained 2 epochs by ddbench (in this test's cache)."""
    return experts.get_experts("digits", TINY, 2, "cpu", progress=False)


def _x(digits_train, n=32) -> torch.Tensor:
    return digits_train.normalize(digits_train.images[:n])


# ------------------------------------------------------------------ replay buffers


def test_export_writes_their_format_and_import_gives_back_the_same_trajectories(
    tiny_experts, digits_train, tmp_path
):
    files = experts.export_buffers("digits", TINY, 2, tmp_path / "buf", per_file=1)
    assert [f.name for f in files] == ["replay_buffer_0.pt", "replay_buffer_1.pt"]
    buf = torch.load(files[1], weights_only=True)  # what their distill.py loads
    assert isinstance(buf, list) and len(buf) == 1 and len(buf[0]) == TINY.epochs + 1
    names = [n for n, _ in build_expert_model("digits", TINY).named_parameters()]
    assert len(buf[0][0]) == len(names) == 14
    assert tuple(buf[0][0][0].shape) == (8, 1, 3, 3) and tuple(buf[0][0][13].shape) == (10,)
    # their distill.py's flat vector (torch.cat of the reshaped tensors) is ddbench's row
    for e, params in enumerate(buf[0]):
        assert torch.equal(torch.cat([p.reshape(-1) for p in params]), tiny_experts[1][e])

    cfg, written = experts.import_buffers("digits", TINY, [tmp_path / "buf"])
    assert len(written) == 2 and cfg.source.startswith("buffers-") and cfg.epochs == 2
    assert cfg.key("digits") != TINY.key("digits")  # never mistaken for ddbench's own
    back = experts.get_experts("digits", cfg, 2, "cpu", train=False, progress=False)
    for a, b in zip(back, tiny_experts):
        assert torch.equal(a, b)
    # a named source, another entry; the same files give the same default name
    named = dataclasses.replace(TINY, source="mtt-authors")
    cfg2, _ = experts.import_buffers("digits", named, [files[1], files[0]])
    assert cfg2.source == "mtt-authors"
    first = experts.get_experts("digits", cfg2, 1, "cpu", train=False, progress=False)[0]
    assert torch.equal(first, tiny_experts[1])  # the order of the files given
    assert experts.import_buffers("digits", TINY, [tmp_path / "buf"])[0] == cfg
    experts.import_buffers("digits", named, [files[0]])  # the same name, fewer experts
    assert len(list(experts.expert_dir("digits", cfg2).glob("expert_*.safetensors"))) == 1
    with pytest.raises(DDBenchError, match="not in the cache.*never trained here"):
        experts.get_experts("digits", cfg, 3, "cpu", progress=False)
    with pytest.raises(DDBenchError, match="already holds"):
        experts.export_buffers("digits", TINY, 2, tmp_path / "buf")


def test_a_network_built_from_an_imported_point_gives_the_logits_their_layout_implies(
    tiny_experts, digits_train, tmp_path
):
    (f,) = experts.export_buffers("digits", TINY, 2, tmp_path / "buf")
    cfg, _ = experts.import_buffers("digits", dataclasses.replace(TINY, source="x"), [f])
    traj = experts.get_experts("digits", cfg, 2, "cpu", train=False, progress=False)[1]
    theirs = torch.load(f, weights_only=True)[1]
    x = _x(digits_train)
    net = FlatModel(build_expert_model("digits", cfg).eval())
    for e in (0, TINY.epochs):
        ours = net(traj[e], x)
        torch.testing.assert_close(ours, their_convnet(theirs[e], x), rtol=1e-4, atol=1e-5)
    # the trained point is not the initial one: the comparison sees the parameters
    assert not torch.allclose(net(traj[0], x), net(traj[-1], x))


def test_import_refuses_buffers_of_another_network_or_shape(tiny_experts, tmp_path):
    (f,) = experts.export_buffers("digits", TINY, 2, tmp_path / "buf")
    wide = ExpertConfig(**{**dataclasses.asdict(TINY), "model_kwargs": {"net_width": 16}})
    with pytest.raises(
        DDBenchError, match=r"parameter 0 has shape \(8, 1, 3, 3\).*\(16, 1, 3, 3\)"
    ):
        experts.import_buffers("digits", wide, [f])
    buf = torch.load(f, weights_only=True)
    short = [[params[:-1] for params in t] for t in buf]
    torch.save(short, tmp_path / "short.pt")
    with pytest.raises(DDBenchError, match="13 parameter tensors, ddbench's network has 14"):
        experts.import_buffers("digits", TINY, [tmp_path / "short.pt"])
    torch.save([buf[0][:2]], tmp_path / "replay_buffer_9.pt")
    with pytest.raises(DDBenchError, match="same number"):
        experts.import_buffers("digits", TINY, [f, tmp_path / "replay_buffer_9.pt"])
    torch.save({"images": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(DDBenchError, match="not a replay buffer"):
        experts.import_buffers("digits", TINY, [tmp_path / "other.pt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DDBenchError, match="no replay_buffer"):
        experts.import_buffers("digits", TINY, [tmp_path / "empty"])
    with pytest.raises(DDBenchError, match="source must be"):
        ExpertConfig(source=" x")


def test_the_cli_exports_and_imports_and_a_run_matches_against_the_imported_experts(
    tiny_experts, digits_train, tmp_path
):
    kw = ["--model-kwarg", "net_width=8"]
    p = run_cli("expert", "export", "digits", str(tmp_path / "MNIST" / "ConvNet"), "--num", "2",
                "--epochs", "2", *kw, cwd=tmp_path)  # fmt: skip
    # the CLI's config is `method=mtt`'s: its recipe differs from TINY's, so nothing is cached
    assert p.returncode != 0 and "not cached" in p.stderr + p.stdout
    cli_cfg, _ = expert_config("digits", epochs=2, model_kwargs={"net_width": 8})
    experts.export_buffers("digits", TINY, 2, tmp_path / "MNIST" / "ConvNet")
    p = run_cli("expert", "import", "digits", str(tmp_path / "MNIST" / "ConvNet"), *kw,
                "--source", "authors", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "method.experts.source=authors method.experts.epochs=2 method.num_experts=2" in p.stdout
    node = packaged_config(
        "mtt", ["model.kwargs.net_width=8", "method.experts.source=authors",
                "method.experts.epochs=2", "method.num_experts=2", "method.max_start_epoch=1",
                "method.expert_epochs=1", "method.iterations=1", "method.syn_steps=2"],
    )  # fmt: skip
    m = build_method(node)
    assert m.experts == dataclasses.replace(cli_cfg, source="authors")
    task = make_task(digits_train, 1)
    task.model_factory = lambda: create_model("convnet", 1, 10, (8, 8), net_width=8)
    m.prepare(task)
    for a, b in zip(m.trajectories, tiny_experts):
        assert torch.equal(a, b)
    out = tmp_path / "again"
    p = run_cli("expert", "export", "digits", str(out), *kw, "--num", "2", "--epochs", "2",
                "--source", "authors", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    again = torch.load(out / "replay_buffer_0.pt", weights_only=True)
    assert len(again) == 2
    row = torch.cat([t.reshape(-1) for t in again[1][2]])
    assert torch.equal(row, tiny_experts[1][2])


# ------------------------------------------------------------------ FTD's GSAM and BatchNorm


def _bn_buffers(net: torch.nn.Module) -> list[torch.Tensor]:
    return [
        b.clone()
        for m in net.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for b in m.buffers()
    ]


def test_gsam_leaves_batchnorm_statistics_to_the_first_pass(digits_train):
    torch.manual_seed(0)
    net = create_model("convnet_bn", 1, 10, (8, 8), net_width=8).train()
    x, y = _x(digits_train, 64), digits_train.labels[:64]
    first = copy.deepcopy(net)
    with torch.no_grad():
        first(x)  # the running statistics of the first pass only
    step = GSAMStep(sam_rho=0.5, gsam_alpha=0.4, sam_adaptive=False)
    for model in (net, None):
        n = copy.deepcopy(net) if model is None else net
        opt = torch.optim.SGD(n.parameters(), lr=0.1)
        step(lambda n=n: F.cross_entropy(n(x), y), list(n.parameters()), opt, model=model and n)
        same = all(torch.equal(a, b) for a, b in zip(_bn_buffers(n), _bn_buffers(first)))
        # with the network the second pass is undone; without it both passes update them
        assert same == (model is not None)


def test_the_engine_hands_the_network_to_the_gsam_step(digits_train):
    """An expert trained by the engine with GSAM keeps the statistics of its first passes:
    one epoch of one batch gives those of one forward on that batch."""
    x, y = _x(digits_train, 64), digits_train.labels[:64]

    def build():
        return create_model("convnet_bn", 1, 10, (8, 8), net_width=8)

    recipe = engine.Recipe(epochs=1, batch_size=64, lr=0.1, momentum=0.0, weight_decay=0.0)
    step = GSAMStep(sam_rho=0.5, gsam_alpha=0.4, sam_adaptive=True)
    (trained,) = engine.train(build, [3], x, y, recipe, device="cpu", step_fn=step,
                              compile=False, distributed=False).models  # fmt: skip
    torch.manual_seed(3)
    ref = build().train()
    with torch.no_grad():
        ref(x)
    for a, b in zip(_bn_buffers(trained), _bn_buffers(ref)):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ the eval_every monitor


def _spy_recipes(monkeypatch) -> list[engine.Recipe]:
    import ddbench.distill as distill

    seen: list[engine.Recipe] = []
    real = distill.engine.train

    def spy(factory, seeds, images, labels, recipe, **kw):
        seen.append(recipe)
        return real(factory, seeds, images, labels, recipe, **kw)

    monkeypatch.setattr(distill.engine, "train", spy)
    return seen


@pytest.mark.parametrize("cls, batch", [(MTT, 256), (DATM, 128)], ids=["mtt", "datm"])
def test_the_monitor_trains_with_the_current_learned_lr(
    cls, batch, digits_train, split_cache, monkeypatch
):
    seen = _spy_recipes(monkeypatch)
    task = make_task(digits_train, 1, val=lambda: split_cache("digits", "val"))
    m = cls(eval_epochs=1)
    m.syn_lr = torch.tensor(0.0371)
    images, labels = MTT.init_images(m, task)
    acc = m.evaluate(task, images, labels)
    assert 0 <= acc <= 100
    (recipe,) = seen
    assert recipe.lr == pytest.approx(0.0371) and recipe.batch_size == batch
    m.syn_lr = torch.tensor(0.2)  # it follows the lr as it is learned
    m.evaluate(task, images, labels)
    assert seen[-1].lr == pytest.approx(0.2)


def test_the_monitor_of_a_method_without_a_learned_lr_keeps_the_protocols_lr(
    digits_train, split_cache, monkeypatch
):
    from ddbench.methods.dm import DM

    seen = _spy_recipes(monkeypatch)
    task = make_task(digits_train, 1, val=lambda: split_cache("digits", "val"))
    m = DM(eval_epochs=1)
    m.evaluate(task, *m.init_images(task))
    assert seen[0].lr == 0.01 and seen[0].batch_size == 256
    m.protocol = "learned_lr"  # a protocol that needs an lr the method does not have
    with pytest.raises(DDBenchError, match="no lr to store"):
        m.evaluate(task, *m.init_images(task))


# ------------------------------------------------------------------ DATM


def test_datm_trains_its_experts_and_evaluates_as_its_readme_and_configs():
    e = DATM().experts
    assert e.epochs == 100 and e.step == "gsam"
    assert e.step_kwargs == {"sam_rho": 0.01, "gsam_alpha": 0.3, "sam_adaptive": True}
    assert DATM.protocol == "datm" and MTT.protocol == "learned_lr"
    datm, llr = protocol_config("datm"), protocol_config("learned_lr")
    assert datm["batch_size"] == 128 and llr["batch_size"] == 256
    assert {k: v for k, v in datm.items() if llr[k] != v} == {
        "name": "datm", "description": datm["description"], "batch_size": 128
    }  # fmt: skip
    m = build_method(packaged_config("datm", ["model.kwargs.net_width=16"]))
    assert m.experts.epochs == 100 and m.experts.step_kwargs["gsam_alpha"] == 0.3


def test_expert_keys_hash_the_source_only_when_set():
    import hashlib
    import json

    plain = ExpertConfig()
    fields = dataclasses.asdict(plain)
    # milestones/gamma: hashed only under schedule: step away from their defaults
    for k in ("source", "step", "step_kwargs", "milestones", "gamma"):
        fields.pop(k)
    canon = json.dumps({"dataset": "mnist", **fields}, sort_keys=True, default=str)
    assert plain.key("mnist") == hashlib.sha256(canon.encode()).hexdigest()[:16]
    a, b = (dataclasses.replace(plain, source=n) for n in ("a", "b"))
    assert len({plain.key("mnist"), a.key("mnist"), b.key("mnist")}) == 3


def test_run_keys_change_only_for_runs_on_imported_experts():
    from omegaconf import OmegaConf

    from ddbench import cli

    node = packaged_config("mtt", ["model.kwargs.net_width=8"])
    base = {"dataset": {"name": "mnist"}, "method": node, "ipc": 1, "seed": 0}
    own = cli.config_key(OmegaConf.create(base), cli._DISTILL_KEYS)
    without = {**base, "method": {**node, "experts": {
        k: v for k, v in node["experts"].items() if k != "source"}}}  # fmt: skip
    assert own == cli.config_key(OmegaConf.create(without), cli._DISTILL_KEYS)
    imported = {**base, "method": {**node, "experts": {**node["experts"], "source": "a"}}}
    assert own != cli.config_key(OmegaConf.create(imported), cli._DISTILL_KEYS)


# ------------------------------------------------------------------ bench/parity (MTT, FTD)


def _parity_module():
    import importlib.util

    path = Path(__file__).parents[1] / "bench" / "parity" / "parity.py"
    spec = importlib.util.spec_from_file_location("ddbench_parity_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("method", ["mtt", "ftd"])
def test_the_parity_run_gives_both_sides_the_same_settings(method, monkeypatch, tmp_path):
    parity = _parity_module()
    monkeypatch.setenv("PARITY_MTT_SETTINGS", "syn_steps=3,max_start_epoch=1")
    for ipc in (1, 10):
        theirs = parity.OTHER_OFFICIAL[method]["command"]("mnist", ipc, 5, 0, tmp_path)
        ours = parity.OTHER_OFFICIAL[method]["ddbench_args"]("mnist", ipc)
        flags = dict(a[2:].split("=", 1) for a in theirs if a.startswith("--") and "=" in a)
        assert flags == {a.split("=", 1)[0].removeprefix("method."): a.split("=", 1)[1]
                         for a in ours}  # fmt: skip
        assert flags["syn_steps"] == "3" and flags["max_start_epoch"] == "1"
        assert ("ema_decay" in flags) == (method == "ftd")
        # every setting is one of ddbench's method's (a renamed setting would fail here)
        m = build_method(packaged_config(method, [*ours, "method.experts.epochs=50"]))
        assert m.syn_steps == 3 and m.lr_teacher == float(flags["lr_teacher"])
    monkeypatch.setenv("PARITY_MTT_SETTINGS", "no_such=1")
    with pytest.raises(SystemExit, match="unknown setting"):
        parity.trajectory_settings(method, 1)


def test_the_ast_parity_run_turns_on_the_same_parts_and_start_on_both_sides(monkeypatch, tmp_path):
    parity = _parity_module()
    monkeypatch.setenv("PARITY_MTT_SETTINGS", "syn_steps=4,max_start_epoch=1")
    for ipc, (their_init, our_init) in {1: ("real", None), 10: ("avg", "kmeans")}.items():
        theirs = parity.OTHER_OFFICIAL["ast"]["command"]("fashion_mnist", ipc, 5, 0, tmp_path)
        ours = parity.OTHER_OFFICIAL["ast"]["ddbench_args"]("fashion_mnist", ipc)
        assert theirs[0] == "distill.py"
        assert theirs[theirs.index("--pix_init") + 1] == their_init
        switches = {a for a in theirs if a.startswith("--") and "=" not in a}
        assert {"--balance_loss", "--agg_middle_loss", "--weight_perturb"} <= switches
        m = build_method(packaged_config("ast", [*ours, "method.experts.epochs=50"]))
        assert (m.balance_loss, m.agg_middle_loss, m.weight_perturb) == (True, True, True)
        assert m.representative_init == our_init and m.syn_steps == 4
        # --mom is left at their argparse default, which is ddbench's student momentum
        assert "--mom" not in " ".join(theirs) and m.student_momentum == 0.9
        flags = dict(a[2:].split("=", 1) for a in theirs if a.startswith("--") and "=" in a)
        assert float(flags["lr_img"]) == m.lr_img and int(flags["max_start_epoch"]) == 1


SETUP = Path(__file__).parents[1] / "bench" / "parity" / "official_mtt_setup.sh"


def _run_mtt_setup(off: Path) -> subprocess.CompletedProcess:
    """official_mtt_setup.sh on a stand-in checkout, with the networks.py ConvNet.forward lines
    it patches (M8) and the data files in place (no export); it must succeed."""
    (off / "networks.py").write_text(
        "class ConvNet:\n    def forward(self, x):\n"
        "        out = self.features(x)\n        out = out.view(out.size(0), -1)\n"
        "        out = self.classifier(out)\n        return out\n"
    )
    (off / "data").mkdir()
    for name in ("MNIST", "FashionMNIST"):
        (off / "data" / f"parity_{name}.pt").write_bytes(b"")
    out = subprocess.run(["bash", str(SETUP), str(off)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out


def test_the_ast_setup_patches_their_code_once_and_leaves_the_rest(tmp_path):
    """official_mtt_setup.sh on a stand-in of AST's files (the lines it patches, as at 8030869):
    every edit lands once, a second run changes nothing, and the import of their missing
    generator.py then succeeds (A1)."""
    off = tmp_path / "AST"
    off.mkdir()
    (off / "utils.py").write_text(
        "import os\nimport time\nimport numpy as np\nimport torch\n"
        "from torch.utils.data import TensorDataset\n\n\n"
        'def get_dataset(dataset, data_path, batch_size=1, subset="imagenette", args=None):\n'
        "    pass\n\n\n"
        "def get_network(model, channel, num_classes, im_size=(32, 32), dist=True):\n"
        "    torch.random.manual_seed(int(time.time() * 1000) % 100000)\n"
    )
    (off / "distill.py").write_text(
        "import random\nfrom generator import Generator\n\n\ndef main(args):\n"
        "    eval_it_pool = np.arange(0, args.Iteration + 1, args.eval_it).tolist()\n"
        "    def get_repre_images(ipc):\n        for c in range(3):\n"
        "            kmeans = KMeans(n_clusters=ipc_visual, random_state=0).fit(logist)\n"
        "            logist_per_class = expert_net(images_per_class)\n"
        "            kmeans_ipc = KMeans(n_clusters=ipc, random_state=0).fit(logist)\n"
        "    image_syn = image_syn.detach().to(args.device).requires_grad_(True)\n"
        "    for it in range(0, args.Iteration+1):\n"
        '        wandb.log({"Synthetic_LR": syn_lr.detach().cpu()}, step=it)\n\n\n'
        "if __name__ == '__main__':\n"
        "    parser.add_argument('--agg_middle_loss', action='store_true')\n"
        "    args = parser.parse_args()\n"
    )
    (off / "buffer.py").write_text(
        "if True:\n    args = parser.parse_args()\n"
        "    timestamps.append([p.detach().cpu() for p in teacher_net.parameters()])\n"
    )
    out = _run_mtt_setup(off)
    assert "(AST's code)" in out.stdout
    once = {f.name: f.read_text() for f in off.iterdir() if f.suffix == ".py"}
    for marker in ("M1", "M2", "M3", "M4", "M4 save", "M9 arg", "M9 start", "A2.0", "A2.1", "A3"):
        files = [n for n, s in once.items() if f"ddbench-parity {marker}" in s]
        assert len(files) == 1, marker
    assert once["distill.py"].count("n_init=10") == 2
    assert "with torch.no_grad():" in once["distill.py"]
    assert "reshape" in once["networks.py"] and "M7" in once["buffer.py"]
    assert "p.detach().cpu().clone()" in once["buffer.py"]  # B1: each epoch stored as a copy
    assert "class Generator" in once["generator.py"] and "def log" in once["wandb.py"]
    subprocess.run(["bash", str(SETUP), str(off)], check=True, capture_output=True)
    assert {f.name: f.read_text() for f in off.iterdir() if f.suffix == ".py"} == once
    gen = subprocess.run(
        [sys.executable, "-c", "from generator import Generator\nGenerator()"],
        cwd=off, capture_output=True, text=True,
    )  # fmt: skip
    assert "--pix_init gan" in gen.stderr


def test_the_datm_parity_run_gives_both_sides_the_same_settings(monkeypatch, tmp_path):
    """Their yacs config (their names, their CFG types) and ddbench's overrides say the same,
    for a fixed range (IPC 1) and a growing one (IPC 10), and ddbench builds from them."""
    import yaml

    parity = _parity_module()
    monkeypatch.setenv("PARITY_MTT_SETTINGS", "syn_steps=4")
    names = {"syn_steps": "syn_steps", "expert_epochs": "expert_epochs", "lr_img": "lr_img",
             "lr_teacher": "lr_teacher", "lr_lr": "lr_lr", "lr_y": "lr_y",
             "momentum_y": "Momentum_y", "threshold": "threshold", "batch_syn": "batch_syn",
             "min_start_epoch": "min_start_epoch", "label_epoch": "Label_Model_Timestamp"}  # fmt: skip
    for ipc in (1, 10):
        cmd = parity.OTHER_OFFICIAL["datm"]["command"]("mnist", ipc, 5, 3, tmp_path / "official")
        assert cmd[0] == "DATM.py" and cmd[cmd.index("--seed") + 1] == "3"
        theirs = yaml.safe_load(Path(cmd[cmd.index("--cfg") + 1]).read_text())
        ours = parity.OTHER_OFFICIAL["datm"]["ddbench_args"]("mnist", ipc)
        m = build_method(packaged_config("datm", [*ours, "method.experts.epochs=50"]))
        for key, their_key in names.items():
            assert float(theirs[their_key]) == float(getattr(m, key)), key
        assert type(theirs["lr_img"]) is int and theirs["Iteration"] == 5 and not theirs["zca"]
        assert m.syn_steps == 4 and m.soft_labels and m.correct_init and m.label_average
        assert theirs["pix_init"] == "samples_predicted_correctly" and theirs["parall_eva"]
        # the start-epoch range: fixed at IPC 1, DATM's growing one at IPC 10
        assert theirs["current_max_start_epoch"] == m.max_start_epoch
        assert theirs["max_start_epoch"] == m.settings.final_start_epoch
        assert theirs["Sequential_Generation"] == (ipc == 10)
        assert (m.max_start_epoch_final is None) == (ipc == 1)
        if ipc == 10:
            assert theirs["expansion_end_epoch"] == m.expansion_iterations == 1000
            assert m.upper_start_epoch(500) == 15  # their Upper_Bound at it 500: 10 + 10 * 0.5
    assert parity.OTHER_OFFICIAL["datm"]["protocol"] == "datm"
    monkeypatch.setenv("PARITY_MTT_SETTINGS", "lr_img=100.5")
    with pytest.raises(SystemExit, match="whole number"):
        parity.datm_config("mnist", 1, 5)


def test_the_datm_setup_patches_their_code_once(tmp_path):
    """official_mtt_setup.sh on a stand-in of DATM's files (the lines it patches, as at
    97ae510): D1, D2 and the shared edits land once each, a second run changes nothing, and the
    patched command line takes --cfg and then the parity flags."""
    off = tmp_path / "DATM"
    (off / "distill").mkdir(parents=True)
    (off / "utils").mkdir()
    (off / "utils" / "utils_baseline.py").write_text(
        "import os\nimport time\nimport torch\n\n\n"
        'def get_dataset(dataset, data_path, batch_size=1, subset="imagenette", args=None, '
        "baseline=False):\n    pass\n\n\n"
        "def get_network(model, channel, num_classes, im_size=(32, 32), dist=True):\n"
        "    torch.random.manual_seed(int(time.time() * 1000) % 100000)\n"
    )
    (off / "distill" / "DATM.py").write_text(
        "import argparse\n\n\ndef manual_seed(seed=0):\n    pass\n\n\ndef main(args):\n\n"
        "    manual_seed()\n"
        "    if args.skip_first_eva==False:\n"
        "        eval_it_pool = np.arange(0, args.Iteration + 1, args.eval_it).tolist()\n"
        "    else:\n"
        "        eval_it_pool = np.arange(args.eval_it, args.Iteration + 1, args.eval_it).tolist()\n"
        "    image_syn = image_syn.detach().to(args.device).requires_grad_(True)\n"
        "    for it in range(0, args.Iteration+1):\n"
        "        if it in eval_it_pool:\n"
        "            with torch.no_grad():\n"
        "                image_save = image_syn.cuda()\n"
        '        wandb.log({"Synthetic_LR": syn_lr.detach().cpu()}, step=it)\n\n\n'
        "if __name__ == '__main__':\n"
        "    parser = argparse.ArgumentParser(description='Parameter Processing')\n"
        '    parser.add_argument("--cfg", type=str, default="")\n'
        "    args = parser.parse_args()\n"
        "    cfg = {'ipc': 1}\n"
        "    for key, value in cfg.items():\n"
        "        parser.add_argument('--' + key, type=type(value), default=value)\n"
        "    args = parser.parse_args()\n"
        "    main(args)\n"
    )
    out = _run_mtt_setup(off)
    assert "(DATM's code)" in out.stdout
    files = [off / "utils" / "utils_baseline.py", off / "distill" / "DATM.py", off / "networks.py"]
    once = {f: f.read_text() for f in files}
    text = "".join(once.values())
    for marker in ("M1", "M3", "M4", "M4 save", "M5.0", "M8", "M9 arg", "M9 start", "D1: --cfg",
                   "D1: the config", "D2"):  # fmt: skip
        assert len(re.findall(rf"ddbench-parity {re.escape(marker)}(?!\w| save)", text)) == 1, (
            marker
        )
    assert "M2" not in text and "M7" not in text  # MTT's argument edit and buffer.py: not DATM's
    distill = once[off / "distill" / "DATM.py"]
    # the parity's pool comes after both of their branches, at the function's level
    assert distill.index("ddbench-parity M4\n") > distill.index("np.arange(args.eval_it")
    assert "\n    if args.parity_eval >= 0:  # ddbench-parity M4\n" in distill
    assert "manual_seed(args.seed if args.seed >= 0 else 0)" in distill
    assert (off / "distill" / "wandb.py").exists()
    subprocess.run(["bash", str(SETUP), str(off)], check=True, capture_output=True)
    assert {f: f.read_text() for f in files} == once
    # their __main__ now reads --cfg first and the parity flags with the config's keys
    main = distill.split("if __name__ == '__main__':\n", 1)[1].replace("    main(args)\n", "")
    code = "import argparse, sys\nsys.argv = ['DATM.py', '--cfg', 'c.yaml', '--seed', '4', "
    code += "'--parity_eval', '0', '--parity_init', 's.pt']\nif True:\n" + main
    code += "    print(args.cfg, args.seed, args.ipc, args.parity_init)\n"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert got.stdout.split() == ["c.yaml", "4", "1", "s.pt"], got.stderr
    # M9: the start file replaces the images their initialisation drew
    block = distill[distill.index("    if args.parity_init:") :].split("    for it in", 1)[0]
    torch.save(torch.full((2, 1, 3, 3), 7.0), tmp_path / "s.pt")
    ns = {"torch": torch, "image_syn": torch.zeros(2, 1, 3, 3),
          "args": type("A", (), {"parity_init": str(tmp_path / "s.pt"), "device": "cpu"})}  # fmt: skip
    exec(textwrap.dedent(block), ns)
    assert torch.equal(ns["image_syn"], torch.full((2, 1, 3, 3), 7.0))
    assert ns["image_syn"].requires_grad
