"""Top-k soft-label storage (SRe2L family) on the real digits dataset with a tiny BN teacher:
what it keeps, the bytes it takes (counted = stored), loading, evaluation on stored labels."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import with_teachers
from torch.utils.data import DataLoader

from ddbench import synset as synset_io
from ddbench.errors import DDBenchError
from ddbench.method import Checkpointer, Task
from ddbench.methods.sre2l import SRe2L
from ddbench.protocol import Protocol, evaluate, protocol_config
from ddbench.synset import decode_topk, encode_topk
from ddbench.teachers import TeacherConfig, get_teacher

CONF = Path(__file__).parents[1] / "conf"
IPC, K = 2, 10
TEACHER = {"model": "convnet_bn", "model_kwargs": {"net_width": 16}, "epochs": 10, "lr": 0.05}
SMALL = dict(teacher=TEACHER, crop_scale=[0.5, 1.0], jitter=1, init="real", iterations=20)


cached_teacher = with_teachers(TEACHER)


@pytest.fixture
def logits(digits_train, one_thread) -> torch.Tensor:
    """The teacher's logits on 200 real training images."""
    net = get_teacher("digits", TeacherConfig(**TEACHER), device="cpu", train=False)[0]
    with torch.no_grad():
        return net(digits_train.normalize(digits_train.images[:200])).float()


def _task(train) -> Task:
    return Task(
        train=train, ipc=IPC, model_factory=lambda: None, generator=torch.Generator().manual_seed(0),
        seed=0, device=torch.device("cpu"), checkpointer=Checkpointer(None),
    )  # fmt: skip


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor, t: float) -> float:
    lp, lq = (torch.log_softmax(x.float() / t, 1) for x in (p_logits, q_logits))
    return float((lp.exp() * (lp - lq)).sum(1).mean())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_topk_keeps_the_top_classes_in_order_and_the_rest_of_the_mass(logits, dtype):
    x = logits.to(dtype)
    ranked = torch.sort(x, dim=1, descending=True, stable=True)
    kls = []
    for k in (1, 2, 5, 9):
        t = encode_topk(x, k)
        assert t["label_values"].dtype == t["label_fill"].dtype == dtype
        assert t["label_indices"].dtype == torch.uint8
        y = decode_topk(t["label_values"], t["label_indices"], t["label_fill"], K)
        assert y.shape == x.shape and y.dtype == dtype
        # the k largest classes, their values and their order survive; the others sit below
        back = torch.sort(y, dim=1, descending=True, stable=True)
        assert torch.equal(back.indices[:, :k], ranked.indices[:, :k])
        assert torch.equal(back.values[:, :k], ranked.values[:, :k])
        assert torch.equal(y.argmax(1), x.argmax(1))
        assert (back.values[:, k:] < back.values[:, k - 1 : k]).all()
        # the dropped classes share one value: their mean (lowered only on a tie with the k-th)
        dropped_mean = ranked.values[:, k:].double().mean(1).to(dtype)
        assert (t["label_fill"] <= dropped_mean).all()
        assert (t["label_fill"] == dropped_mean).float().mean() > 0.9
        # encoding what decode gives back yields the same tensors: a loaded set re-saves as is
        again = encode_topk(y, k)
        assert all(torch.equal(again[n], t[n]) for n in t)
        kls.append(_kl(x, y, 4.0))
    assert all(a > b for a, b in zip(kls, kls[1:])), kls  # more classes kept, closer labels
    # the fill keeps the dropped classes' mass: dropping them (-inf) is far worse
    t = encode_topk(x, 2)
    dropped = torch.full_like(x, -1e4).scatter_(1, t["label_indices"].long(), t["label_values"])
    assert kls[1] < 0.1 * _kl(x, dropped, 4.0)


def test_label_bytes_are_the_stored_bytes_and_shrink_as_declared(make_set, tmp_path):
    s = make_set(ipc=IPC, soft=True)
    s.labels = torch.log(s.labels)  # logits, as the SRe2L family stores
    n = len(s)
    cases = {
        "fp32": (torch.float32, None, n * K * 4),
        "fp16": (torch.float16, None, n * K * 2),
        **{f"top{k}": (torch.float16, k, n * (k * (2 + 1) + 2)) for k in (5, 2, 1)},
    }
    sizes = []
    for name, (dtype, k, expected) in cases.items():
        s.labels = s.labels.to(dtype)
        s.meta.pop("label_storage", None)
        if k is not None:
            s.meta["label_storage"] = {"format": "topk", "k": k}
        assert s.nbytes()["labels"] == expected, name
        path = synset_io.save(s, tmp_path / f"{name}.safetensors")
        # the counted bytes are the label tensors' bytes in the file
        raw = path.read_bytes()
        (hlen,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + hlen])
        stored = sum(
            v["data_offsets"][1] - v["data_offsets"][0] for key, v in header.items()
            if key == "labels" or key.startswith("label_")
        )  # fmt: skip
        assert stored == expected, name
        loaded = synset_io.load(path)
        assert loaded.nbytes() == s.nbytes() and loaded.labels.shape == (n, K)
        assert torch.equal(loaded.hard_labels, s.hard_labels)
        sizes.append(expected)
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_sre2l_topk_set_loads_and_trains_on_its_stored_labels(digits_train, tmp_path):
    dense = SRe2L(**SMALL).distill(_task(digits_train))
    s = SRe2L(label_topk=2, **SMALL).distill(_task(digits_train))
    n = IPC * K
    assert torch.equal(s.images, dense.images)  # the same recovery; only the labels differ
    assert s.meta["label_storage"] == {"format": "topk", "k": 2}
    assert s.meta["relabel"]["topk"] == 2 and dense.meta["relabel"]["topk"] is None
    path = synset_io.save(s, tmp_path / "top2.safetensors")
    loaded = synset_io.load(path)
    assert loaded.labels.shape == (n, K) and loaded.labels.dtype == torch.float16
    assert torch.equal(loaded.labels, s.labels)
    assert torch.equal(loaded.hard_labels, torch.arange(K).repeat_interleave(IPC))
    top = dense.labels.topk(2, dim=1)
    assert torch.equal(loaded.labels.gather(1, top.indices), top.values)  # the teacher's top 2
    assert loaded.nbytes()["labels"] == n * (2 * 3 + 2) < dense.nbytes()["labels"] == n * K * 2
    xb, yb = next(iter(DataLoader(loaded, batch_size=8)))  # a stock DataLoader serves it
    assert yb.shape == (8, K) and xb.shape == (8, 1, 8, 8)
    # evaluation on the stored labels (kd_set, shortened): storage and bytes in result.json
    p = Protocol.from_config({**protocol_config("kd_set"), "epochs": 2, "seeds": [0]})
    r = evaluate(loaded, p, "convnet", {"net_width": 16}, device="cpu", progress=False)
    assert r["labels"]["kind"] == "soft" and r["labels"]["bytes"] == n * 8
    assert r["labels"]["storage"] == {"format": "topk", "k": 2, "dtype": "float16"}
    assert r["cost"]["label_bytes"] == n * 8 and r["cost"]["image_bytes"] == n * 64 * 4
    assert r["cost"]["synset_bytes"] == r["cost"]["label_bytes"] + r["cost"]["image_bytes"]
    # the stored labels are what the students learn: top-2 and dense labels train differently
    rd = evaluate(dense, p, "convnet", {"net_width": 16}, device="cpu", progress=False)
    assert rd["labels"]["storage"] == {"format": "dense", "dtype": "float16"}
    assert rd["train_loss_final"] != r["train_loss_final"]
    # logits are no probabilities: a cross-entropy protocol on them is refused
    with pytest.raises(DDBenchError, match="logits"):
        evaluate(loaded, Protocol(name="ce_set", epochs=1, labels="set", seeds=[0]), device="cpu")


@pytest.mark.parametrize("bad", [0, -1, 2.5, "two", True])
def test_a_bad_label_topk_is_a_clear_error(bad):
    with pytest.raises(DDBenchError, match="label_topk"):
        SRe2L(label_topk=bad, **SMALL)


def test_bad_label_storage_is_refused_before_work_and_on_load(digits_train, make_set, tmp_path):
    with pytest.raises(DDBenchError, match="keeps all 10 classes"):
        SRe2L(label_topk=K, **SMALL).distill(_task(digits_train))
    with pytest.raises(DDBenchError, match="label_dtype"):
        SRe2L(label_dtype="int8", **SMALL)
    hard = make_set(ipc=IPC)
    hard.meta["label_storage"] = {"format": "topk", "k": 2}
    with pytest.raises(DDBenchError, match="soft labels"):
        synset_io.save(hard, tmp_path / "hard.safetensors")
    soft = make_set(ipc=IPC, soft=True)
    soft.meta["label_storage"] = {"format": "zip"}
    with pytest.raises(DDBenchError, match="unknown label storage"):
        synset_io.save(soft, tmp_path / "zip.safetensors")
    # a file whose top-k tensors are not a valid encoding is refused on load
    from safetensors.torch import save_file

    soft.meta["label_storage"] = {"format": "topk", "k": 2}
    path = synset_io.save(soft, tmp_path / "ok.safetensors")
    meta = synset_io.read_header(path)
    t = dict(soft.tensors())
    t["label_indices"] = t["label_indices"].clone()
    t["label_indices"][0] = torch.tensor([3, 3], dtype=torch.uint8)
    meta["sha256"] = synset_io.tensors_sha256(t)
    bad = tmp_path / "bad.safetensors"
    save_file(t, str(bad), metadata={"ddbench": json.dumps(meta)})
    with pytest.raises(DDBenchError, match="repeat a class"):
        synset_io.load(bad)
