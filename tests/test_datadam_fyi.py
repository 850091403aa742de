"""DataDAM (methods/datadam.py) and the FYI modifier (ddbench/fyi.py), on the real digits data."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import assert_valid_set, check_lowers_loss, check_resume, make_task
from torch import nn

from ddbench.data import RealDataset
from ddbench.distill import ImageDistillation
from ddbench.engine import Recipe, train
from ddbench.errors import DDBenchError
from ddbench.fyi import FlipYourImages, flip_concat, mirror_symmetry
from ddbench.method import build_method
from ddbench.methods import packaged_config
from ddbench.methods.datadam import DataDAM, attention
from ddbench.methods.dm import DM
from ddbench.methods.gradient_matching import DC, DSA
from ddbench.models import create_model
from ddbench.modifiers import Modifier, from_config

CONF = Path(__file__).parents[1] / "conf" / "method"
FLIP = "color_crop_cutout_flip_scale_rotate"  # DSA with flips: label-preserving mirrors
# Tiny 8x8 maps make p=4 attention gradients large: the paper's lr_img=1 (x100) overshoots here.
DAM = {"batch_real": 32, "lr_img": 0.1}

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ DataDAM


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"net_depth": 1},
        {"net_pooling": "none", "net_act": "sigmoid"},
        {"net_norm": "batchnorm"},
    ],
)
def test_convnet_feature_maps_are_the_block_activations(kwargs):
    torch.manual_seed(0)
    net = create_model("convnet", 1, 10, (8, 8), net_width=8, **kwargs).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        maps, emb = net.feature_maps(x)
        assert len(maps) == kwargs.get("net_depth", 3)
        torch.testing.assert_close(emb, net.embed(x))
        torch.testing.assert_close(net.classifier(emb), net(x))
        # each map is an activation output: the next block (or the final pooling) starts from it
        act_types = (nn.ReLU, nn.Sigmoid, nn.Identity)  # Identity: a ReLU fused into its norm
        acts = [m for m in net.features if isinstance(m, act_types)]
        seen = []
        hooks = [a.register_forward_hook(lambda m, i, o: seen.append(o)) for a in acts]
        net(x)
        for h in hooks:
            h.remove()
    assert len(seen) == len(maps) and all(torch.equal(a, b) for a, b in zip(seen, maps))


def test_attention_is_the_normalised_channel_sum_of_powers():
    f = torch.zeros(1, 3, 2, 2)
    f[0, 0, 0, 1], f[0, 2, 1, 0], f[0, 1, 1, 0] = 1.0, -2.0, 1.0
    for p in (1.0, 4.0):
        raw = torch.tensor([[0.0, 1.0, 2.0**p + 1.0, 0.0]])
        torch.testing.assert_close(attention(f, p), raw / raw.norm())
    g = torch.randn(5, 4, 3, 3)
    a = attention(g, 4.0)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(attention(3 * g, 4.0), a)  # scale-free


def test_datadam_loss_is_sam_plus_weighted_dm_mmd(digits_train):
    """On the same draws: loss = scale * (SAM + lambda * DM's mean-embedding loss), SAM > 0."""
    images = make_task(digits_train, 2).real_images(n=20)
    images = torch.cat([images[:2]] * 10)  # any 2 images per class

    def loss(method):
        task = make_task(digits_train, 2, seed=5)
        return float(method.matching_loss(task, method.fresh_net(task, frozen=True), images))

    full = loss(DataDAM(batch_real=16))
    sam = loss(DataDAM(batch_real=16, mmd_weight=0.0, loss_scale=1.0))
    mmd = loss(DM(batch_real=16, batched=False))
    assert sam > 0 and mmd > 0
    assert full == pytest.approx(100 * (sam + 0.01 * mmd), rel=1e-5)


@pytest.mark.parametrize("norm, same", [("instancenorm", True), ("batchnorm", False)])
def test_datadam_batched_is_the_per_class_loss_unless_batchnorm_spans_classes(
    digits_train, norm, same
):
    """One forward of all classes (the released code's) gives the per-class loss and image
    gradient with a per-image-normalised network; with BatchNorm the batch statistics span
    every class, so the loss differs (that is what the released code computes)."""
    images0 = make_task(digits_train, 2).real_images(n=20)

    def run(batched):
        task = make_task(digits_train, 2, seed=5)
        task.model_factory = lambda: create_model(
            "convnet", 1, 10, (8, 8), net_width=16, net_norm=norm
        )
        images = images0.clone().requires_grad_(True)
        m = DataDAM(batch_real=16, batched=batched)
        loss = m.matching_loss(task, m.fresh_net(task, frozen=True), images)
        loss.backward()
        return float(loss.detach()), images.grad

    (l0, g0), (l1, g1) = run(False), run(True)
    if same:
        assert l1 == pytest.approx(l0, rel=1e-5)
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)
    else:
        assert abs(l1 - l0) > 1e-3 * abs(l0)


def test_datadam_lowers_its_matching_loss_and_makes_a_valid_set(digits_train, tmp_path):
    method = DataDAM(iterations=12, **DAM)
    back = check_lowers_loss(method, digits_train, 2, tmp_path)
    assert back.meta["protocol"] == "datadam"
    assert back.meta["method"]["config"]["power"] == method.power


def test_datadam_resume_continues_from_the_checkpoint_exactly(digits_train, tmp_path):
    check_resume(DataDAM, dict(iterations=4, **DAM), digits_train, tmp_path)


def test_datadam_config_holds_the_paper_defaults_and_rejects_bad_values(digits_train):
    cfg = packaged_config("datadam")
    m = build_method(cfg)
    assert type(m) is DataDAM and isinstance(m, ImageDistillation) and cfg["name"] == "datadam"
    expected = {"iterations": 20000, "lr_img": 1.0, "momentum_img": 0.5, "init": "real",
                "batch_real": 64, "dsa": True, "power": 1.0, "mmd_weight": 0.01,
                "loss_scale": 100.0, "fyi": False, "eval_every": 0}  # fmt: skip
    for k, v in expected.items():
        assert getattr(m, k) == v, k
    t = type("T", (), {"ipc": 100})()
    assert m.image_lr(t) == 10.0 and DataDAM(lr_img_large_ipc=None).image_lr(t) == 1.0
    t.ipc = 50
    assert m.image_lr(t) == 1.0
    for bad in ({"power": 0}, {"mmd_weight": -1}, {"loss_scale": 0}):
        with pytest.raises(DDBenchError):
            DataDAM(**bad)
    task = make_task(digits_train, 1)
    mlp = create_model("mlp", 1, 10, (8, 8))
    with pytest.raises(DDBenchError, match="feature_maps"):
        m.matching_loss(task, mlp, torch.zeros(10, 1, 8, 8))


# ------------------------------------------------------------------------------ FYI


def test_mirror_symmetry_metric():
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(mirror_symmetry(x + x.flip(-1)), torch.ones(3), atol=1e-5)
    assert torch.allclose(mirror_symmetry(x - x.flip(-1)), -torch.ones(3), atol=1e-5)
    assert torch.allclose(mirror_symmetry(x), mirror_symmetry(x.flip(-1)))


def _pairs_with_mirrors(images: torch.Tensor, ipc: int) -> torch.Tensor:
    """Per class, its ``ipc`` images followed by their mirrors (a set of ``2 * ipc`` per class)."""
    return torch.cat([flip_concat(c) for c in images.split(ipc)])


@pytest.mark.parametrize(
    "cls, kw",
    [(DM, {"batched": False}), (DM, {"batched": True}), (DataDAM, {}), (DC, {}), (DSA, {})],
    ids=["dm", "dm-batched", "datadam", "dc", "dsa"],
)
def test_fyi_matches_the_images_together_with_their_mirrors(cls, kw, digits_train):
    """FYI's A_c = S_c u flip(S_c): the FYI loss of S is the plain loss of the set with mirrors
    (same draws: the plain method is given FYI's DSA too), and S gets the gradient of both
    halves."""
    x = make_task(digits_train, 1).real_images(n=10).requires_grad_(True)
    x2 = _pairs_with_mirrors(x.detach(), 1).requires_grad_(True)
    out = []
    for fyi, images, ipc in ((True, x, 1), (False, x2, 2)):
        method = cls(batch_real=16, fyi=fyi, **kw)
        task = make_task(digits_train, ipc, seed=7, strategy=FLIP)
        task.augment = FlipYourImages().augmentation(task.augment)  # FYI's DSA on both sides
        loss = method.matching_loss(task, method.fresh_net(task), images)
        (grad,) = torch.autograd.grad(loss, images)
        out.append((loss.detach(), grad))
    (l_fyi, g_fyi), (l_plain, g_plain) = out
    torch.testing.assert_close(l_fyi, l_plain, rtol=1e-4, atol=1e-6)
    g_back = g_plain[0::2] + g_plain[1::2].flip(-1)  # the mirror's gradient, mirrored back
    torch.testing.assert_close(g_fyi, g_back, rtol=1e-3, atol=1e-6)
    assert float(g_plain[1::2].abs().sum()) > 0


def test_fyi_doubles_the_inner_training_batches():
    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 10)
            self.seen = []

        def forward(self, x):
            self.seen.append(x.detach().clone())
            return self.lin(x.flatten(1))

    x, y = torch.randn(10, 1, 8, 8), torch.arange(10)
    for fyi in (False, True):
        net = Recorder()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        train(
            None, None, x, y, Recipe(epochs=0, batch_size=4), device="cpu", compile=False,
            models=[net], optimizers=[opt], generators=[torch.Generator()], steps=3,
            batch_transform=FlipYourImages().apply if fyi else None,
        )  # fmt: skip
        sizes = [len(b) for b in net.seen]
        assert sizes == ([8, 8, 4] if fyi else [4, 4, 2])
        if fyi:
            assert all(torch.equal(b[len(b) // 2 :], b[: len(b) // 2].flip(-1)) for b in net.seen)


@pytest.mark.parametrize(
    "cls, kw, ipc",
    [
        (DC, {"iterations": 3}, 1),
        (DSA, {"iterations": 2, "outer_loop": 2, "inner_loop": 2}, 2),
        (DM, {"iterations": 5}, 2),
        (DataDAM, {"iterations": 5, "lr_img": 0.1}, 2),
    ],
    ids=["dc", "dsa", "dm", "datadam"],
)
def test_fyi_composes_with_every_image_method(cls, kw, ipc, digits_train, tmp_path, caplog):
    sets = {}
    for fyi in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ddbench"):
            s = cls(batch_real=16, fyi=fyi, **kw).distill(make_task(digits_train, ipc))
        # digits has no flip in its DSA strategy: FYI runs there, with a warning
        assert ("no flip" in caplog.text) == fyi
        back = assert_valid_set(s, tmp_path / str(fyi), ipc, cls.name)
        assert back.meta["method"]["config"]["fyi"] is fyi
        assert back.meta["distillation"]["fyi"] is fyi
        sets[fyi] = s.images
    assert not torch.allclose(sets[True], sets[False])


def test_fyi_keeps_bilateral_equivalence_from_making_the_images_symmetric(digits_train, caplog):
    """The paper's toy: digits plus their mirrored copies (bilateral equivalence, flips then
    preserve labels). Plain distillation makes the synthetic digits more left-right symmetric
    than the real ones they start from; with FYI they stay less symmetric than without it."""
    both = RealDataset(
        digits_train.spec,
        "train",
        torch.cat([digits_train.images, digits_train.images.flip(-1)]),
        torch.cat([digits_train.labels, digits_train.labels]),
    )
    cfg = {"iterations": 40, "lr_img": 5.0, "batch_real": 16}
    init, _ = DM(**cfg).init_images(make_task(both, 1, strategy=FLIP))
    symmetry = {}
    for fyi in (False, True):
        with caplog.at_level(logging.WARNING, logger="ddbench"):
            s = DM(fyi=fyi, **cfg).distill(make_task(both, 1, strategy=FLIP))
        symmetry[fyi] = float(mirror_symmetry(s.images).mean())
    assert "no flip" not in caplog.text
    before = float(mirror_symmetry(init).mean())
    assert symmetry[False] > before, (before, symmetry)
    assert symmetry[True] < symmetry[False], (before, symmetry)


class _Recording(Modifier):
    """A modifier that appends a zero image (label 0) to every batch and records the sizes."""

    def __init__(self):
        self.sizes: list[int] = []

    def rows(self, n):
        return n + 1

    def apply(self, x, y=None):
        self.sizes.append(len(x))
        x = torch.cat([x, torch.zeros_like(x[:1])])
        return x, None if y is None else torch.cat([y, y[:1]])


def test_a_modifier_reaches_every_synthetic_batch_through_the_shared_loop(digits_train):
    """Any modifier, not only FYI's, is applied by the core: on each class's synthetic images in
    matching (DM, DC), on DC's inner-training batches, and on MTT's student batches, with DSA
    drawn for the rows it makes."""
    from ddbench.methods.mtt import MTT

    tiny = {"model_kwargs": {"net_width": 16}, "epochs": 2}
    cases = [
        (DM(iterations=1, batch_real=8), [2] * 10),
        (DC(iterations=1, batch_real=8, outer_loop=2, inner_loop=1), [2] * 10 + [20] + [2] * 10),
        (MTT(iterations=1, lr_img=100.0, syn_steps=3, expert_epochs=1, max_start_epoch=1,
             num_experts=1, experts=tiny, batch_syn=5), [5, 5, 5]),
    ]  # fmt: skip
    for method, sizes in cases:
        method.modifier = _Recording()
        method.distill(make_task(digits_train, 2))
        assert method.modifier.sizes == sizes, method.name
    assert FlipYourImages().rows(3) == len(FlipYourImages().apply(torch.zeros(3, 1, 2, 2))[0])
    x, y = torch.randn(3, 1, 2, 2), torch.arange(3)
    assert Modifier().apply(x, y) == (x, y) and Modifier().rows(3) == 3
    assert isinstance(from_config(fyi=True), FlipYourImages)
    assert type(from_config(fyi=False)) is Modifier
