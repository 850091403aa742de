"""Tests for ddbench.augment: DSA ops (DC semantics), siamese draws, groups, ZCA."""

import math

import pytest
import torch
import torch.nn.functional as F

from ddbench.augment import (
    DEFAULT_STRATEGY,
    DSA,
    OPS,
    ZCA,
    apply_op,
    default_strategy,
    identity_params,
    parse_strategy,
)
from ddbench.errors import DDBenchError


def _x(n=8, c=3, h=16, w=16, seed=0, grad=False):
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(grad)


def _g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("op", OPS)
def test_each_op_shape_grad_determinism(op):
    dsa = DSA()
    x = _x(grad=True)
    y = dsa(x, _g(1), op=op)
    assert y.shape == x.shape
    assert dsa.last_draw.ops == (op,)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    x = x.detach()
    assert torch.equal(dsa(x, _g(1), op=op), dsa(x, _g(1), op=op))
    outs = [dsa(x, _g(s), op=op) for s in range(2, 6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_op_selection_reproducible_and_uses_all_ops():
    dsa = DSA()
    x = _x(n=2)
    seen = set()
    for s in range(60):
        dsa(x, _g(s))
        seen.add(dsa.last_draw.op)
    assert seen == set(OPS)
    dsa(x, _g(7))
    a = dsa.last_draw.op
    dsa(x, _g(7))
    assert dsa.last_draw.op == a


def test_crop_is_integer_shift_with_zero_fill():
    dsa = DSA("crop")
    x = _x(n=64, h=16, w=12) + 5.0  # no zeros in the input
    y = dsa(x, _g(3))
    p = dsa.last_params
    s_h, s_w = int(16 * 0.125 + 0.5), int(12 * 0.125 + 0.5)
    assert p["tx"].abs().max() <= s_h and p["ty"].abs().max() <= s_w
    assert p["tx"].abs().max() == s_h  # the full range is drawn with 64 samples
    assert (p["tx"] != 0).any() and (p["ty"] != 0).any()
    for i in range(x.shape[0]):
        tx, ty = int(p["tx"][i]), int(p["ty"][i])
        ref = torch.roll(x[i], shifts=(-tx, -ty), dims=(1, 2))
        if tx > 0:
            ref[:, -tx:, :] = 0
        elif tx < 0:
            ref[:, :-tx, :] = 0
        if ty > 0:
            ref[:, :, -ty:] = 0
        elif ty < 0:
            ref[:, :, :-ty] = 0
        assert torch.equal(y[i], ref), (i, tx, ty)


def _dc_cutout(x, ox, oy):
    """DC's rand_cutout index arithmetic with given offsets."""
    n, _, h, w = x.shape
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(ch), torch.arange(cw), indexing="ij")
    gx = torch.clamp(gx + ox.view(n, 1, 1) - ch // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy.view(n, 1, 1) - cw // 2, min=0, max=w - 1)
    mask = torch.ones(n, h, w)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


@pytest.mark.parametrize("hw", [(16, 16), (15, 13), (28, 28)])
def test_cutout_matches_dc_and_zeroes_square(hw):
    h, w = hw
    dsa = DSA("cutout")
    x = _x(n=200, h=h, w=w) + 5.0
    y = dsa(x, _g(4))
    p = dsa.last_params
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    assert p["ox"].min() >= 0 and p["ox"].max() <= h - ch % 2
    assert torch.equal(y, _dc_cutout(x, p["ox"], p["oy"]))
    lo_r, lo_c = p["ox"] - ch // 2, p["oy"] - cw // 2
    inside = (lo_r >= 0) & (lo_r + ch <= h) & (lo_c >= 0) & (lo_c + cw <= w)
    assert inside.any()
    i = int(torch.nonzero(inside)[0])
    zero = (y[i] == 0).all(dim=0)
    assert int(zero.sum()) == ch * cw
    r, c = int(lo_r[i]), int(lo_c[i])
    assert zero[r : r + ch, c : c + cw].all()
    assert torch.equal(y[i][:, ~zero], x[i][:, ~zero])


def test_flip_about_half():
    dsa = DSA("flip")
    x = _x(n=1000, c=1, h=4, w=4)
    y = dsa(x, _g(5))
    f = dsa.last_params["flip"]
    assert 430 < int(f.sum()) < 570
    assert torch.equal(y[f], x[f].flip(3))
    assert torch.equal(y[~f], x[~f])


@pytest.mark.parametrize("op", ["scale", "rotate", "crop", "color", "flip"])
def test_identity_params_reproduce_input(op):
    x = _x()
    y = apply_op(x, op, identity_params(op, x.shape[0]))
    assert torch.allclose(y, x, atol=1e-5)


def test_scale_rotate_ranges_and_reference():
    dsa = DSA()
    x = _x(n=32)
    y = dsa(x, _g(6), op="scale")
    p = dsa.last_params
    assert p["sx"].min() >= 1 / 1.2 and p["sx"].max() <= 1.2 and not torch.equal(p["sx"], p["sy"])
    theta = torch.zeros(32, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = p["sx"], p["sy"]
    ref = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=True), align_corners=True)
    assert torch.allclose(y, ref, atol=1e-6)

    y = dsa(x, _g(6), op="rotate")
    a = dsa.last_params["angle"]
    assert a.abs().max() <= 15 * math.pi / 180 and a.abs().max() > 5 * math.pi / 180
    theta = torch.zeros(32, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(-a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    ref = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=True), align_corners=True)
    assert torch.allclose(y, ref, atol=1e-6)


def test_color_formulas():
    dsa = DSA("color")
    x = _x(n=16)
    y = dsa(x, _g(8))
    p = dsa.last_params
    assert p["brightness"].abs().max() <= 0.5
    assert p["saturation"].min() >= 0 and p["saturation"].max() <= 2
    assert p["contrast"].min() >= 0.5 and p["contrast"].max() <= 1.5
    for i in range(16):
        v = x[i : i + 1] + p["brightness"][i]
        m = v.mean(dim=1, keepdim=True)
        v = (v - m) * p["saturation"][i] + m
        m = v.mean()
        v = (v - m) * p["contrast"][i] + m
        assert torch.allclose(y[i : i + 1], v, atol=1e-5)
    assert len(set(p["brightness"].tolist())) == 16  # per-sample params


def test_shared_params_within_batch():
    dsa = DSA()
    x = _x(n=6)
    x = torch.cat([x[:1]] * 6)  # identical images -> identical outputs iff params shared
    for s in range(20):
        y = dsa(x, _g(s), shared=True)
        assert torch.allclose(y, y[:1].expand_as(y))
    y = dsa(x, _g(0), op="rotate")
    assert not torch.allclose(y, y[:1].expand_as(y))


@pytest.mark.parametrize("seed", range(12))
def test_siamese_pair_same_draw_for_different_batch_sizes(seed):
    dsa = DSA()
    x_real = _x(n=10, seed=seed)
    a_real, a_syn = dsa.pair(x_real, x_real[:3], seed)
    assert torch.allclose(a_real[:3], a_syn, atol=1e-6)
    b_real, _ = dsa.pair(x_real, x_real[:1], seed)
    assert torch.equal(a_real, b_real)
    # the drawn params are shared across the whole batch: equal images -> equal outputs
    same = torch.cat([x_real[:1]] * 4)
    s_real, s_syn = dsa.pair(same, x_real[:1], seed)
    assert torch.allclose(s_real, s_syn.expand_as(s_real), atol=1e-6)


def test_siamese_pair_differentiable_for_synthetic():
    dsa = DSA()
    syn = _x(n=2, grad=True)
    for seed in range(6):
        _, a_syn = dsa.pair(_x(n=5), syn, seed)
        a_syn.sum().backward()
        assert syn.grad.abs().sum() > 0
        syn.grad = None


def test_groups_draw_own_ops_and_match_per_group_application():
    k, b = 8, 4
    dsa = DSA()
    x = _x(n=k * b, h=8, w=8)
    opsets = []
    for s in range(5):
        y = dsa(x, _g(s), groups=k)
        d = dsa.last_draw
        assert y.shape == x.shape and len(d.ops) == k
        opsets.append(d.ops)
        for i in range(k):
            ref = apply_op(x[i * b : (i + 1) * b], d.ops[i], d.group_params(i))
            assert torch.allclose(y[i * b : (i + 1) * b], ref, atol=1e-6)
    assert any(len(set(ops)) > 1 for ops in opsets)
    assert len(set(opsets)) > 1
    # gradient flows through the gather/scatter path
    xg = x.clone().requires_grad_(True)
    dsa(xg, _g(0), groups=k).sum().backward()
    assert xg.grad.abs().sum() > 0
    # groups=1 equals the plain call
    assert torch.equal(dsa(x, _g(3), groups=1), dsa(x, _g(3)))


def test_groups_shared_params_within_group():
    k, b = 4, 3
    dsa = DSA()
    x = torch.cat([_x(n=1)] * (k * b))
    y = dsa(x, _g(2), groups=k, shared=True).view(k, b, *x.shape[1:])
    assert torch.allclose(y, y[:, :1].expand_as(y), atol=1e-6)


def test_bad_input_raises():
    with pytest.raises(DDBenchError):
        DSA("color_crop_blur")
    with pytest.raises(DDBenchError):
        DSA("color__crop")
    dsa = DSA()
    with pytest.raises(DDBenchError):
        dsa(torch.zeros(3, 8, 8))
    with pytest.raises(DDBenchError):
        dsa(torch.zeros(5, 3, 8, 8), _g(0), groups=2)
    with pytest.raises(DDBenchError):
        dsa(torch.zeros(4, 3, 8, 8), _g(0), op="blur")
    assert parse_strategy("none") == ()
    x = _x(n=2)
    assert torch.equal(DSA("none")(x, _g(0)), x)


def test_default_strategy():
    assert "flip" not in default_strategy("mnist")
    assert "flip" not in default_strategy("SVHN")
    assert "flip" in default_strategy("cifar10")
    assert default_strategy("fashion_mnist") == DEFAULT_STRATEGY
    assert default_strategy("mnist") == "color_crop_cutout_scale_rotate"


def _correlated(n=4000, seed=0):
    g = _g(seed)
    z = torch.randn(n, 12, generator=g)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    mix = q @ torch.diag(torch.linspace(1.0, 6.0, 12)) @ q.T  # covariance eigenvalues 1..36
    return (z @ mix + 3.0).view(n, 3, 2, 2)


def test_zca_whitens_and_inverts():
    x = _correlated()
    zca = ZCA.fit(x, eps=0.1)
    y = zca(x)
    assert y.shape == x.shape

    def offdiag(v):
        c = torch.cov(v.reshape(v.shape[0], -1).T)
        d = c.diag().sqrt()
        corr = c / d[:, None] / d[None, :]
        return (corr - torch.diag(corr.diag())).abs().max()

    assert offdiag(x) > 0.3
    assert offdiag(y) < 0.05
    assert y.reshape(len(y), -1).mean(0).abs().max() < 1e-3
    assert torch.allclose(zca.inverse(y), x, atol=1e-3)


def test_zca_matches_kornia_and_state_dict_roundtrip():
    import kornia

    x = _correlated(n=500)
    zca = ZCA.fit(x)
    ref = kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True).fit(x)
    assert torch.allclose(zca(x), ref(x), atol=1e-5)
    assert torch.allclose(zca.inverse(zca(x)), ref.inverse_transform(ref(x)), atol=1e-4)
    sd = zca.state_dict()
    assert all(isinstance(v, torch.Tensor) and v.is_contiguous() for v in sd.values())
    zca2 = ZCA.from_state_dict({k: v.clone() for k, v in sd.items()})
    assert torch.equal(zca2(x), zca(x)) and torch.equal(zca2.inverse(x), zca.inverse(x))
    with pytest.raises(DDBenchError):
        zca(torch.zeros(2, 3, 4, 4))


# ------------------------------------------------------------------ DC's own augmentation


def _digits_batch(n=6):
    from ddbench.data import load_split

    d = load_split("digits", "train")
    return d.normalize(d.images[:n])


def test_dc_crop_is_a_shift_within_the_pad_filled_with_the_batch_mean():
    from ddbench.augment import DCAugment

    x = _digits_batch()
    y = DCAugment("crop")(x, torch.Generator().manual_seed(0))
    mean = float(x.mean())
    k, (h, w) = 4, x.shape[-2:]
    for i in range(len(x)):
        padded = torch.full((1, h + 2 * k, w + 2 * k), mean)
        padded[:, k : k + h, k : k + w] = x[i]
        windows = [padded[:, r : r + h, c : c + w] for r in range(2 * k) for c in range(2 * k)]
        assert any(torch.equal(y[i], win) for win in windows), i
    assert not torch.equal(y, x)


def test_dc_scale_and_rotate_follow_their_definitions():
    from scipy.ndimage import rotate

    from ddbench.augment import DCAugment

    x = _digits_batch(4)
    assert torch.equal(DCAugment("scale", scale=0.0)(x, torch.Generator()), x)  # factor 1
    g, aug = torch.Generator().manual_seed(3), DCAugment("rotate", rotate=30)
    y = aug(x, g)
    g.manual_seed(3)
    for i in range(len(x)):
        torch.randint(1, (1,), generator=g)  # the op draw (one op here)
        angle = int(torch.randint(-30, 30, (1,), generator=g))
        big = rotate(x[i].numpy(), angle=angle, axes=(-2, -1), cval=float(x.mean()))
        r, c = (big.shape[-2] - 8) // 2, (big.shape[-1] - 8) // 2
        torch.testing.assert_close(y[i], torch.from_numpy(big[:, r : r + 8, c : c + 8]).float())


def test_dc_augment_is_seeded_and_picks_one_op_per_image_and_refuses_unknown_ops():
    from ddbench.augment import DCAugment, make_augment

    x = _digits_batch(8)
    aug = DCAugment("crop_scale_rotate")
    a = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))
    assert a.shape == x.shape and torch.isfinite(a).all()
    with pytest.raises(DDBenchError, match="flip"):
        DCAugment("crop_flip")
    assert isinstance(make_augment("dc:crop_noise"), DCAugment)
    assert make_augment("none") is None and make_augment("flip").strategy == "flip"


def test_the_dc_protocol_is_dcs_own_recipe_per_dataset():
    from ddbench.protocol import Protocol, protocol_config

    dc = Protocol.from_config(protocol_config("dc"))
    mnist, fmnist = dc.for_dataset("mnist"), dc.for_dataset("fashion_mnist")
    assert (mnist.epochs, mnist.augment) == (1000, "dc:crop_scale_rotate")
    assert (fmnist.epochs, fmnist.augment) == (300, "none") and fmnist is dc
    assert dc.hash != Protocol.from_config(protocol_config("nodsa")).hash
    with pytest.raises(DDBenchError, match="seeds"):
        Protocol.from_config({**protocol_config("dc"), "per_dataset": {"mnist": {"seeds": [0]}}})
