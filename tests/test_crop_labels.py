"""FKD's per-crop stored labels (ddbench.crop_labels): made once from a teacher, replayed by the
engine, their bytes counted; on the real digits dataset with a tiny BatchNorm teacher."""

from __future__ import annotations

import math

import pytest
import torch

from ddbench import engine
from ddbench.crop_labels import CropReplay, make_crop_labels
from ddbench.errors import DDBenchError
from ddbench.models import create_model
from ddbench.protocol import Protocol, evaluate, protocol_config
from ddbench.recover import apply_crops
from ddbench.teachers import TeacherConfig, get_teacher

TEACHER = {"model": "convnet_bn", "model_kwargs": {"net_width": 8}, "epochs": 6, "lr": 0.05}


@pytest.fixture
def teacher():
    return get_teacher("digits", TeacherConfig(**TEACHER), device="cpu", progress=False)[0]


def test_stored_labels_are_the_teachers_logits_on_the_stored_mixed_crops(make_set, teacher):
    s = make_set(ipc=3)
    kw = dict(epochs=3, cutmix=1.0, seed=7, batch_size=8, dtype="float32")
    labels = make_crop_labels(s.images, teacher, **kw)
    again = make_crop_labels(s.images, teacher, **kw)
    assert torch.equal(labels.logits, again.logits) and torch.equal(labels.crops, again.crops)
    other = make_crop_labels(s.images, teacher, **{**kw, "seed": 8})
    assert not torch.equal(labels.crops, other.crops)
    n = len(s.images)
    assert labels.logits.shape == (3, n, 10) and labels.crops.shape == (3, n, 5)
    assert not torch.equal(labels.crops[0], labels.crops[1])  # new crops every epoch
    assert (labels.partners != torch.arange(n)).any() and (labels.lams < 1).any()
    rows = torch.arange(n)
    for e in range(3):
        x = labels.mixed(s.images, e, rows)
        # outside its box an image is its own crop, inside it its partner's
        own = apply_crops(s.images, labels.crops[e])
        partner = apply_crops(s.images[labels.partners[e]], labels.crops[e][labels.partners[e]])
        for r, (y0, y1, x0, x1) in enumerate(labels.boxes[e].tolist()):
            inside = torch.zeros(8, 8, dtype=torch.bool)
            inside[y0:y1, x0:x1] = True
            assert torch.equal(x[r][:, inside], partner[r][:, inside])
            assert torch.equal(x[r][:, ~inside], own[r][:, ~inside])
        with torch.no_grad():
            # BatchNorm in eval mode: a row's logits do not depend on its batch
            assert torch.allclose(labels.logits[e], teacher.eval()(x), atol=1e-5)
    # no cutmix: no partner, no box; float16 halves the logits' bytes
    plain = make_crop_labels(s.images, teacher, epochs=2, seed=7)
    assert plain.logits.dtype == torch.float16 and (plain.lams == 1).all()
    assert plain.nbytes(8) == 2 * n * (4 + 1 + 1 + 2 + 4) + 2 * n * 10 * 2
    with pytest.raises(DDBenchError, match="dtype"):
        make_crop_labels(s.images, teacher, epochs=1, dtype="int8")


def test_the_engine_replays_the_stored_epochs_in_turn(make_set, teacher):
    s = make_set(ipc=3)
    n = len(s.images)
    labels = make_crop_labels(s.images, teacher, epochs=2, cutmix=1.0, seed=0)
    replay = CropReplay(labels, s.images, s.hard_labels, models=1, batches=math.ceil(n / 8))
    served = []
    real_forward = replay.forward

    def spy(x):
        epoch, rows = replay.pending[0]
        out = real_forward(x)
        assert torch.equal(out, labels.logits[epoch, rows].float())
        served.append((epoch, rows))
        return out

    replay.forward = spy
    recipe = engine.Recipe(epochs=5, batch_size=8, optimizer="adamw", lr=0.003, loss="kd",
                           temperature=20.0)  # fmt: skip
    engine.train(
        lambda: create_model("convnet", 1, 10, (8, 8), net_width=8), [0], s.images,
        torch.arange(n), recipe, device="cpu", teacher=replay, batch_transform=replay.transform,
    )  # fmt: skip
    per_epoch = math.ceil(n / 8)
    assert len(served) == 5 * per_epoch and not replay.pending
    assert [served[i * per_epoch][0] for i in range(5)] == [0, 1, 0, 1, 0]
    for i in range(5):  # each training epoch serves every image once
        rows = torch.cat([r for _, r in served[i * per_epoch : (i + 1) * per_epoch]])
        assert sorted(rows.tolist()) == list(range(n))


def test_the_fkd_protocol_scores_on_replayed_crops_and_counts_their_bytes(make_set):
    # 40 epochs replaying 3 stored ones (lr 0.01: a few steps on 30 images)
    cfg = {**protocol_config("sre2l_fkd"), "epochs": 40, "crop_label_epochs": 3, "lr": 0.01,
           "seeds": [0, 1], "teacher": TEACHER}  # fmt: skip
    p = Protocol.from_config(cfg)
    assert p.labels == "crops" and p.crop_label_dtype == "float16" and p.crop_label_seed == 42
    s = make_set(ipc=3)
    r = evaluate(s, p, "convnet", {"net_width": 8}, device="cpu", progress=False)
    n = len(s.images)
    crop_bytes = 3 * n * (4 + 1 + 1 + 2 + 4) + 3 * n * 10 * 2
    assert r["labels"]["kind"] == "crops" and r["labels"]["teacher"]["source"] == "protocol"
    assert r["labels"]["crop_label_bytes"] == crop_bytes and r["labels"]["crop_label_epochs"] == 3
    assert r["cost"]["label_bytes"] == s.nbytes()["labels"] + crop_bytes == r["labels"]["bytes"]
    assert r["cost"]["synset_bytes"] == s.nbytes()["images"] + r["cost"]["label_bytes"]
    assert len(r["accuracy"]["per_seed"]) == 2 and r["accuracy"]["mean"] > 15  # chance: 10
    # stacked (vmapped) students replay the same crops as students trained one at a time
    stacked = evaluate(s, p, "convnet", {"net_width": 8}, device="cpu", progress=False,
                       parallel=True)  # fmt: skip
    for a, b in zip(stacked["accuracy"]["per_seed"], r["accuracy"]["per_seed"]):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1.0)
    online = Protocol.from_config({**cfg, "labels": "teacher", "crop_label_epochs": 0})
    assert online.hash != p.hash
    for bad in ({"augment": "dsa"}, {"mixup": 0.5}, {"loss": "ce"}, {"crop_label_dtype": "x"}):
        with pytest.raises(DDBenchError):
            Protocol.from_config({**protocol_config("sre2l_fkd"), **bad})
