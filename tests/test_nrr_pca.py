"""NRR-DD (CAM-selected patches, non-critical refinement, DBR labels) and PCA (prune, combine,
tile-preserving crops) on the real digits dataset with a tiny BatchNorm teacher."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import check_resume, task_maker, with_teachers

from ddbench import synset as synset_io
from ddbench.augment import TileCrop, make_augment, stitch
from ddbench.cam import class_activation_maps
from ddbench.dbr import distances
from ddbench.errors import DDBenchError
from ddbench.leaderboard import claim_errors, set_facts
from ddbench.methods.nrr_dd import NRRDD
from ddbench.methods.pca import PCA
from ddbench.models import create_model
from ddbench.protocol import Protocol, evaluate, protocol_config
from ddbench.teachers import TeacherConfig, get_teacher

IPC = 2
# A tiny ConvNet-BN of depth 2: its last feature map on 8x8 digits is 2x2, so its CAM has a
# spatial extent (depth 3 pools digits down to 1x1).
TEACHER = {"model": "convnet_bn", "model_kwargs": {"net_width": 16, "net_depth": 2},
           "epochs": 10, "lr": 0.05}  # fmt: skip
SMALL = dict(teacher=TEACHER, crop_scale=[0.5, 1.0], jitter=1, candidates=40, r_bn=0.1,
             dbr_epochs=3, patch_scale=[0.25, 1.0])  # fmt: skip


cached_teacher = with_teachers(TEACHER)


@pytest.fixture
def make_task(digits_train):
    return task_maker(
        digits_train, IPC, lambda: create_model("convnet", 1, 10, (8, 8), net_width=8)
    )


def _teacher() -> torch.nn.Module:
    return get_teacher("digits", TeacherConfig(**TEACHER), device="cpu", train=False)[0]


# ------------------------------------------------------------------------------ NRR-DD


def test_nrr_dd_is_deterministic_counts_and_bytes(make_task, tmp_path):
    a = NRRDD(iterations=3, **SMALL).distill(make_task())
    b = NRRDD(iterations=3, **SMALL).distill(make_task())
    n = 10 * IPC
    assert torch.equal(a.images, b.images) and torch.equal(a.distances, b.distances)
    assert not torch.equal(a.images, NRRDD(iterations=3, **SMALL).distill(make_task(1)).images)
    assert a.images.shape == (n, 1, 8, 8) and torch.equal(
        a.labels, torch.arange(10).repeat_interleave(IPC)
    )
    assert a.distances.shape == (3, n, 2) and a.distances.dtype == torch.float16
    assert a.meta["protocol"] == "nrr_dbr" and a.meta["label_storage"]["format"] == "dbr"
    # bytes: the images, the int64 classes and the float16 distances (2 per image and epoch)
    assert a.nbytes() == {"images": n * 64 * 4, "labels": n * 8 + 3 * n * 2 * 2, "extras": 0}
    path = synset_io.save(a, tmp_path / "nrr.safetensors")
    loaded = synset_io.load(path)
    assert loaded.meta["label_kind"] == "dbr"
    assert torch.equal(loaded.distances, a.distances) and torch.equal(loaded.labels, a.labels)
    assert loaded.nbytes() == a.nbytes()


def test_dbr_distances_are_the_teachers_cross_entropies(make_task):
    s = NRRDD(iterations=0, **SMALL).distill(make_task())
    from ddbench.dbr import replay_crops

    crops = replay_crops(s.images, s.meta["label_storage"], 128)
    with torch.no_grad():
        logits = _teacher()(crops.mixed(s.images, 1, torch.arange(len(s.images))))
    expect = distances(logits, s.labels, crops.partners[1])
    assert torch.allclose(s.distances[1].float(), expect, rtol=1e-2, atol=1e-3)
    mixed = crops.lams[1] < 1
    assert mixed.any() and not torch.equal(expect[mixed, 0], expect[mixed, 1])


def test_refinement_leaves_the_critical_pixels_untouched(make_task):
    method = NRRDD(iterations=5, labels="logits", **SMALL)
    s = method.distill(make_task())
    init_method = NRRDD(iterations=0, labels="logits", **SMALL)
    s0 = init_method.distill(make_task())  # the same draws: the initial stitched patches
    mask = method.mask.cpu()
    critical = (mask == 0).expand_as(s.images)
    assert 0 < float(critical.float().mean()) < 1
    assert torch.equal(s.images[critical], s0.images[critical])
    assert not torch.equal(s.images[~critical], s0.images[~critical])  # the rest was refined
    assert s.meta["protocol"] == "sre2l" and s.labels.shape == (10 * IPC, 10)


def test_cam_and_patch_selection(make_task, digits_train):
    net = _teacher()
    x = digits_train.normalize(digits_train.images[:6])
    cam = class_activation_maps(net, x, digits_train.labels[:6])
    assert cam.shape == (6, 8, 8) and float(cam.min()) >= 0
    assert torch.allclose(cam.flatten(1).amax(1), torch.ones(6))
    low = NRRDD(iterations=0, select="low", **SMALL).distill(make_task())
    high = NRRDD(iterations=0, select="high", **SMALL).distill(make_task())
    assert low.meta["patches"]["confidence"] < high.meta["patches"]["confidence"]
    with pytest.raises(DDBenchError, match="features"):
        class_activation_maps(create_model("mlp", 1, 10, (8, 8)), x, digits_train.labels[:6])
    with pytest.raises(DDBenchError, match="fewer than"):
        NRRDD(iterations=0, **{**SMALL, "candidates": 10}).distill(make_task())
    with pytest.raises(DDBenchError, match="select"):
        NRRDD(select="middle")


def test_dbr_labels_bad_input_is_refused(make_task, tmp_path):
    s = NRRDD(iterations=0, **SMALL).distill(make_task())
    good = s.distances
    for bad, why in (
        (good[:, :-1], r"\[E, N, 2\]"),
        (-good.float(), "finite and >= 0"),
        (good.float().masked_fill(torch.ones_like(good, dtype=torch.bool), float("nan")),
         "finite"),
        (good.long(), "floats"),
        (None, "without its label distances"),
    ):  # fmt: skip
        s.distances = bad
        with pytest.raises(DDBenchError, match=why):
            synset_io.save(s, tmp_path / "bad.safetensors")
    s.distances = good
    # a file whose distances were changed (no checksum to catch it) is refused on load
    from safetensors.torch import load_file, save_file

    path = synset_io.save(s, tmp_path / "good.safetensors")
    meta = synset_io.read_header(path)
    meta.pop("sha256")
    tensors = load_file(str(path))
    tensors["label_distances"] = tensors["label_distances"][:, :5].contiguous()
    save_file(tensors, str(tmp_path / "cut.safetensors"), metadata={"ddbench": json.dumps(meta)})
    with pytest.raises(DDBenchError, match=r"\[E, N, 2\]"):
        synset_io.load(tmp_path / "cut.safetensors")
    del tensors["label_distances"]
    save_file(tensors, str(tmp_path / "none.safetensors"), metadata={"ddbench": json.dumps(meta)})
    with pytest.raises(DDBenchError, match="lacks the tensor"):
        synset_io.load(tmp_path / "none.safetensors")
    s.meta["label_storage"] = {"format": "dbr", "epochs": 3}
    with pytest.raises(DDBenchError, match="DBR label storage needs"):
        synset_io.save(s, tmp_path / "bad.safetensors")


def test_nrr_dbr_protocol_trains_and_scores(make_task, tmp_path):
    s = NRRDD(iterations=2, **SMALL).distill(make_task())
    s = synset_io.load(synset_io.save(s, tmp_path / "nrr.safetensors"))
    p = Protocol.from_config({**protocol_config("nrr_dbr"), "epochs": 2, "seeds": [0]})
    r = evaluate(s, p, "convnet", {"net_width": 8}, device="cpu", progress=False)
    assert 0 <= r["accuracy"]["mean"] <= 100 and r["labels"]["kind"] == "dbr"
    assert r["cost"]["label_bytes"] == s.nbytes()["labels"]
    # what FKD-style storage of the same crops would add: boxes, flip, partner, lam, cut box
    assert r["labels"]["replayed_crop_bytes"] == 3 * 20 * (4 + 1 + 1 + 2 + 4)
    # the leaderboard's check of a result against its set accepts it, and only for a DBR set
    facts = set_facts(s)
    assert claim_errors(r, facts, "dbr") == []
    assert "stores no DBR labels" in " ".join(
        claim_errors(r, {**facts, "label_storage": "dense"}, "dbr")
    )
    again = evaluate(s, p, "convnet", {"net_width": 8}, device="cpu", progress=False)
    assert again["accuracy"]["mean"] == r["accuracy"]["mean"]
    heavier = Protocol.from_config({**protocol_config("nrr_dbr"), "epochs": 2, "seeds": [0],
                                    "dbr_weight": 5.0})  # fmt: skip
    assert heavier.hash != p.hash
    other = evaluate(s, heavier, "convnet", {"net_width": 8}, device="cpu", progress=False)
    assert other["train_loss_final"] != r["train_loss_final"]
    # a set without DBR labels is refused, and the protocol's keys are checked
    plain = NRRDD(iterations=0, labels="logits", **SMALL).distill(make_task())
    with pytest.raises(DDBenchError, match="DBR labels"):
        evaluate(plain, p, "convnet", {"net_width": 8}, device="cpu", progress=False)
    with pytest.raises(DDBenchError, match="go together"):
        Protocol.from_config({**protocol_config("nrr_dbr"), "loss": "kd"})


# ------------------------------------------------------------------------------ PCA


def test_pca_prunes_combines_and_is_deterministic(make_task):
    task = make_task()
    a = PCA(prune="el2n", scorer={"models": 1, "epochs": 1}).distill(task)
    b = PCA(prune="el2n", scorer={"models": 1, "epochs": 1}).distill(make_task())
    assert torch.equal(a.images, b.images)
    assert a.images.shape == (10 * IPC, 1, 8, 8) and a.meta["protocol"] == "pca_hard"
    assert torch.equal(a.labels, torch.arange(10).repeat_interleave(IPC))
    idx = torch.tensor(a.meta["tiles"]["indices"])
    assert len(idx) == 10 * IPC * 4 and len(idx.unique()) == len(idx)
    train = task.train
    assert torch.equal(train.labels[idx], torch.arange(10).repeat_interleave(IPC * 4))
    assert torch.allclose(a.images, stitch(train.normalize(train.images[idx]), 2))
    # the kept images are the easiest of their class by the (cached) EL2N scores
    from ddbench.methods.el2n import EL2N

    scores = EL2N(models=1, epochs=1).score(make_task())["score"].cpu()
    for c in range(10):
        own = train.indices_of(c)
        kept = scores[idx[train.labels[idx] == c]]
        assert float(kept.max()) <= float(scores[own].sort().values[IPC * 4 - 1]) + 1e-6
    assert a.nbytes()["images"] == 10 * IPC * 64 * 4  # the bytes of IPC real images per class
    hard = PCA(prune="el2n", keep="hardest", scorer={"models": 1, "epochs": 1}).distill(make_task())
    assert not torch.equal(hard.images, a.images)
    with pytest.raises(DDBenchError, match="smallest class"):
        PCA(prune="random").distill(make_task(ipc=60))
    with pytest.raises(DDBenchError, match="prune"):
        PCA(prune="herding")


def test_tile_crop_keeps_every_sub_image_whole():
    aug = make_augment("tiles:2:flip")
    assert isinstance(aug, TileCrop) and aug.factor == 2 and aug.flip
    # 4 constant tiles per image, 1, 10, 100, 1000: no bilinear blend of some equals another
    values = torch.tensor([1.0, 10.0, 100.0, 1000.0]).repeat(6)
    x = stitch(values.view(-1, 1, 1, 1).expand(-1, 1, 8, 8), 2)
    g = torch.Generator().manual_seed(0)
    boxes = aug.draw(len(x) * 50, g)
    assert ((boxes[:, 0] + boxes[:, 2]) <= 2).all() and ((boxes[:, 1] + boxes[:, 3]) <= 2).all()
    assert len({tuple(b) for b in boxes[:, :4].tolist()}) == 9  # every rectangle of tiles
    assert 0 < int(boxes[:, 4].sum()) < len(boxes)  # some mirrored
    src = x.repeat(50, 1, 1, 1)
    out = aug.apply(src, boxes)
    for img, s_img, (r0, c0, rows, cols, _) in zip(out, src, boxes.tolist()):
        inside = s_img[0, r0 * 4 : (r0 + rows) * 4, c0 * 4 : (c0 + cols) * 4].unique()
        outside = [v for v in values[:4] if v not in inside]
        near = [torch.isclose(img[0], v, rtol=1e-5) for v in values[:4]]
        for v, m in zip(values[:4], near):
            if v in inside:  # whole: its share of the output, less a blended border row/column
                assert int(m.sum()) >= 64 // (rows * cols) - 2 * 8 + 4
            else:  # no other tile cut in
                assert not m.any(), (v, outside)
        lo, hi = float(inside.min()), float(inside.max())
        assert lo - 1e-3 <= float(img.min()) and float(img.max()) <= hi + 1e-3
    with pytest.raises(DDBenchError, match="tiles"):
        make_augment("tiles:two")


def test_pca_hard_protocol_trains_and_scores(make_task, tmp_path):
    s = PCA(prune="random").distill(make_task())
    s = synset_io.load(synset_io.save(s, tmp_path / "pca.safetensors"))
    p = Protocol.from_config({**protocol_config("pca_hard"), "epochs": 2, "seeds": [0]})
    r = evaluate(s, p, "convnet", {"net_width": 8}, device="cpu", progress=False)
    assert 0 <= r["accuracy"]["mean"] <= 100 and r["labels"]["kind"] == "hard"
    assert p.hash != Protocol.from_config(protocol_config("hard_rrc")).hash


def test_nrr_dd_resumes_exactly(digits_train, tmp_path):
    cfg = {**SMALL, "iterations": 4, "r_bn": 0.1}
    check_resume(NRRDD, cfg, digits_train, tmp_path)
