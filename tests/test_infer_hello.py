"""Set extras and views, INFER and HeLlO on the real digits dataset with tiny BatchNorm teachers."""

from __future__ import annotations

import pytest
import torch
from conftest import task_maker, with_teachers
from safetensors.torch import load_file, save_file

from ddbench import synset as synset_io
from ddbench.errors import DDBenchError
from ddbench.method import Checkpointer, run_distill
from ddbench.methods.infer import INFER, budget_split
from ddbench.protocol import Protocol, evaluate, protocol_config
from ddbench.teachers import TeacherConfig, get_teacher

# Two tiny BatchNorm teachers on 8x8 digits (~95 % and ~90 % on val).
TEACHER_A = {"model": "convnet_bn", "model_kwargs": {"net_width": 16}, "epochs": 10, "lr": 0.05}
TEACHER_B = {**TEACHER_A, "model_kwargs": {"net_width": 8}, "seed": 1}
SMALL_INFER = dict(teachers=[TEACHER_A, TEACHER_B], iterations=6, jitter=1, r_bn=0.1)


cached_teachers = with_teachers(TEACHER_A, TEACHER_B)


@pytest.fixture
def make_task(digits_train):
    return task_maker(digits_train, 3)


# ------------------------------------------------------------------------------------- extras


def _with_extra(make_set, name="basis", value=None, role="test"):
    s = make_set(ipc=2)
    s.extras = {name: torch.randn(3, 4) if value is None else value}
    s.meta["extras"] = {name: {"role": role}}
    return s


def test_extras_round_trip_are_checksummed_and_counted(make_set, tmp_path):
    s = _with_extra(make_set, value=torch.arange(12, dtype=torch.float16).view(3, 4))
    plain = make_set(ipc=2)
    path = synset_io.save(s, tmp_path / "x.safetensors")
    back = synset_io.load(path, require_checksum=True)
    assert torch.equal(back.extras["basis"], s.extras["basis"])
    assert back.extras["basis"].dtype == torch.float16
    header = synset_io.read_header(path)["extras"]["basis"]
    assert header == {"role": "test", "dtype": "float16", "shape": [3, 4]}
    assert back.nbytes()["extras"] == 12 * 2 and plain.nbytes()["extras"] == 0
    assert back.nbytes()["images"] == plain.nbytes()["images"]
    assert back.meta["sha256"] != synset_io.save(plain, tmp_path / "p.safetensors") and (
        back.meta["sha256"] != plain.meta["sha256"]
    )
    # the checksum covers the extra: changing it in the file is caught
    t = load_file(str(path))
    t["extra.basis"] = t["extra.basis"] + 1
    save_file(t, str(tmp_path / "y.safetensors"), metadata={"ddbench": _meta_json(path)})
    with pytest.raises(DDBenchError, match="checksum mismatch"):
        synset_io.load(tmp_path / "y.safetensors")


def _meta_json(path) -> str:
    import json

    return json.dumps(synset_io.read_header(path))


def test_bad_extras_are_refused_with_one_line(make_set, tmp_path):
    nan = _with_extra(make_set, value=torch.tensor([1.0, float("nan")]))
    with pytest.raises(DDBenchError, match="'basis' contains NaN"):
        synset_io.save(nan, tmp_path / "a.safetensors")
    with pytest.raises(DDBenchError, match="dtype float64"):
        synset_io.save(_with_extra(make_set, value=torch.zeros(2, dtype=torch.float64)),
                       tmp_path / "b.safetensors")  # fmt: skip
    unlisted = _with_extra(make_set)
    unlisted.meta.pop("extras")
    with pytest.raises(DDBenchError, match="no (entry|role)"):
        synset_io.save(unlisted, tmp_path / "c.safetensors")
    # a header naming an extra the file lacks, or giving another shape, is refused on load
    path = synset_io.save(_with_extra(make_set), tmp_path / "d.safetensors")
    t = load_file(str(path))
    meta = synset_io.read_header(path)
    for change, match in (
        (lambda t, m: t.pop("extra.basis"), "lists extra tensor"),
        (lambda t, m: m["extras"]["basis"].update(shape=[4, 3]), r"the header says float32 \[4, 3\]"),
        (lambda t, m: t.update({"extra.other": torch.zeros(1)}), "no (entry|role)"),
    ):  # fmt: skip
        tt, mm = dict(t), {**meta, "extras": {"basis": dict(meta["extras"]["basis"])}}
        change(tt, mm)
        mm["sha256"] = synset_io.tensors_sha256(tt)
        import json

        save_file(tt, str(tmp_path / "e.safetensors"), metadata={"ddbench": json.dumps(mm)})
        with pytest.raises(DDBenchError, match=match):
            synset_io.load(tmp_path / "e.safetensors")


def _compensated(make_set, b=1, u=2, ipc=3):
    s = make_set(ipc=b)  # b real images per class, sorted by class
    k = 10
    real = s.images.view(k, b, *s.images.shape[1:]).transpose(0, 1).reshape(b * k, 1, 8, 8)
    comp = torch.randn(u, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(k).repeat(b + u)
    meta = {**s.meta, "ipc": ipc, "view": "compensated",
            "extras": {"compensators": {"role": "compensator"}}}  # fmt: skip
    return synset_io.SyntheticSet(real.contiguous(), labels, meta, extras={"compensators": comp})


def test_compensated_view_yields_clipped_compositions(make_set, tmp_path, digits_train):
    s = _compensated(make_set, b=1, u=2)
    path = synset_io.save(s, tmp_path / "c.safetensors")
    back = synset_io.load(path)
    shown = back.view_images()
    assert len(back) == 30 and shown.shape == (30, 1, 8, 8)
    assert torch.equal(shown[:10], back.images)  # the real images first
    lo, hi = digits_train.normalize(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1))
    want = (back.images + back.extras["compensators"][1]).clamp(float(lo), float(hi))
    assert torch.allclose(shown[20:30], want)  # compensator 1 on batch 0 (1 mod 1)
    x, y = back[25]
    assert torch.equal(x, shown[25]) and int(y) == 5
    nb = back.nbytes()
    assert nb["images"] == 10 * 64 * 4 and nb["extras"] == 2 * 64 * 4
    assert back.meta["num_images"] == 30


def test_the_grid_of_a_compensated_set_shows_its_composed_images(make_set, tmp_path):
    """`ddbench show` and the board's thumbnails draw the images the set yields (one per label),
    not its stored real images alone."""
    from ddbench.viz import grid, to_pixels

    back = synset_io.load(
        synset_io.save(_compensated(make_set, b=1, u=2), tmp_path / "c.safetensors")
    )
    shown = to_pixels(back)
    assert len(shown) == len(back) == 30
    g = grid(back, max_per_class=3, scale=1)
    cell = 8 + 1  # an 8x8 image and a 1-pixel line
    assert g.shape[-2:] == (10 * cell + 1, 3 * cell + 1)  # a row per class, 3 images each
    row, col = 5 * cell + 1, 2 * cell + 1  # class 5's third image: compensator 1 on its image
    assert torch.equal(g[0, row : row + 8, col : col + 8], shown[25, 0])


def test_compensated_view_refuses_a_bad_set(make_set, tmp_path):
    wrong = _compensated(make_set)
    wrong.extras["compensators"] = torch.zeros(2, 1, 4, 4)
    with pytest.raises(DDBenchError, match=r"compensators must be float \[U, 1, 8, 8\]"):
        synset_io.save(wrong, tmp_path / "a.safetensors")
    over = _compensated(make_set, b=1, u=25, ipc=3)  # 10 + 25 stored tensors > 30
    with pytest.raises(DDBenchError, match="exceed the budget of ipc 3"):
        synset_io.save(over, tmp_path / "b.safetensors")
    short = _compensated(make_set)
    short.labels = short.labels[:20]
    with pytest.raises(DDBenchError, match="30 images but 20 labels"):
        synset_io.save(short, tmp_path / "c.safetensors")
    unknown = _compensated(make_set)
    unknown.meta["view"] = "nope"
    with pytest.raises(DDBenchError, match="'view' is 'nope'"):
        synset_io.save(unknown, tmp_path / "d.safetensors")


# -------------------------------------------------------------------------------------- INFER


def test_budget_split_follows_the_authors_formula():
    assert budget_split(10, 10, 4) == (7, 28)  # 70 real images + 28 compensators <= 100
    assert budget_split(50, 10, 4) == (35, 140)
    assert budget_split(10, 100, 4) == (9, 36)  # CIFAR-100, ufc_cifar.py's ipc_init
    with pytest.raises(DDBenchError, match="INFER needs ipc >= 2"):
        budget_split(1, 10, 4)


def test_infer_makes_a_composed_set_with_static_labels(make_task, tmp_path):
    s = run_distill(INFER(**SMALL_INFER), make_task(ipc=3))
    b, u = budget_split(3, 10, 2)
    assert (b, u) == (2, 4)
    assert s.images.shape == (b * 10, 1, 8, 8) and s.extras["compensators"].shape == (u, 1, 8, 8)
    assert s.extras["compensators"].abs().sum() > 0  # the compensators were learned
    assert len(s) == (b + u) * 10 and s.labels.shape == (60, 10)
    assert s.labels.dtype == torch.float16
    # one static label per composed image: argmax = its class, the teachers' mean logits
    assert torch.equal(s.hard_labels, torch.arange(10).repeat(b + u))
    back = synset_io.load(synset_io.save(s, tmp_path / "infer.safetensors"))
    assert back.meta["view"] == "compensated" and back.meta["protocol"] == "infer"
    assert torch.equal(back.view_images(), s.view_images())
    nb = back.nbytes()
    assert nb == {"images": 20 * 64 * 4, "labels": 60 * 10 * 2, "extras": 4 * 64 * 4}
    # the teachers' mean logits on the composed images are the labels (up to float16)
    from ddbench.methods.infer import static_logits
    from ddbench.recover import load_members

    members = load_members(make_task(), [TeacherConfig(**TEACHER_A), TeacherConfig(**TEACHER_B)])
    logits = static_logits(members, back.view_images())
    agree = logits.argmax(1) == back.hard_labels
    assert torch.allclose(back.labels.float()[agree], logits[agree].half().float())


def test_infer_is_deterministic_for_a_seed(make_task):
    a = INFER(**SMALL_INFER).distill(make_task(seed=1))
    b = INFER(**SMALL_INFER).distill(make_task(seed=1))
    c = INFER(**SMALL_INFER).distill(make_task(seed=2))
    assert torch.equal(a.extras["compensators"], b.extras["compensators"])
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_infer_resumes_as_an_uninterrupted_run(make_task, tmp_path):
    class Killed(Exception):
        pass

    class Killable(INFER):
        kill_at = None

        def step(self, task, images, labels, it):
            if it == self.kill_at:
                raise Killed
            return super().step(task, images, labels, it)

    reference = INFER(**SMALL_INFER).distill(make_task())
    killed = Killable(**SMALL_INFER)
    killed.kill_at = 4
    with pytest.raises(Killed):
        killed.distill(make_task(checkpointer=Checkpointer(tmp_path, "k", 2)))
    resumed = INFER(**SMALL_INFER).distill(make_task(checkpointer=Checkpointer(tmp_path, "k", 2)))
    assert resumed.meta["distillation"]["resumed_from"] == 4
    assert torch.allclose(resumed.extras["compensators"], reference.extras["compensators"],
                          atol=1e-6)  # fmt: skip


def test_infer_settings_are_checked():
    with pytest.raises(DDBenchError, match="not `teacher`"):
        INFER(teacher=TEACHER_A)
    with pytest.raises(DDBenchError, match="crop: false"):
        INFER(crop=True)


def test_infer_protocol_trains_on_the_composed_images(make_task, tmp_path):
    from ddbench.leaderboard import claim_errors, set_facts

    made = run_distill(INFER(**SMALL_INFER), make_task(ipc=3))
    s = synset_io.load(synset_io.save(made, tmp_path / "infer.safetensors"))
    cfg = {**protocol_config("infer"), "epochs": 2, "seeds": [0], "batch_size": 16}
    p = Protocol.from_config(cfg)
    assert p.mixup == 0.8 and p.temperature == 30.0 and p.labels == "set"
    r = evaluate(s, p, model="convnet", model_kwargs={"net_width": 8}, device="cpu",
                 progress=False)  # fmt: skip
    cost = r["cost"]
    assert cost["extra_bytes"] == 4 * 64 * 4
    assert cost["synset_bytes"] == cost["image_bytes"] + cost["label_bytes"] + cost["extra_bytes"]
    assert r["labels"]["kind"] == "soft"
    # the leaderboard's checks recompute the same bytes and take the view's budget
    assert claim_errors(r, set_facts(s), p.labels) == []
    assert claim_errors({**r, "cost": {**cost, "extra_bytes": 0,
                                       "synset_bytes": cost["synset_bytes"] - 1}},
                        set_facts(s), p.labels)  # fmt: skip


# -------------------------------------------------------------------------------------- HeLlO

# the projector: TEACHER_B's trunk as the frozen extractor, fitted to TEACHER_A's soft labels
SMALL_HELLO = dict(
    teacher=TEACHER_A, epochs=2, batch_size=128, lr=0.01,
    extractor={"name": "teacher_cache", "dataset": "digits", "teacher": TEACHER_B},
)  # fmt: skip


def _hello(**kw):
    from ddbench.methods.hello import HeLlO

    return HeLlO(**{**SMALL_HELLO, **kw})


def _val_kl(projector, teacher, val, normalize, temperature=4.0) -> float:
    from ddbench import engine

    out = engine.predict([projector, teacher], val.images, transform=normalize)
    log_p = torch.log_softmax(out[0] / temperature, 1)
    q = torch.softmax(out[1] / temperature, 1)
    return float((q * (torch.log(q) - log_p)).sum(1).mean())


def test_hello_stores_a_small_projector_that_learns_the_teachers_labels(make_task, tmp_path,
                                                                       split_cache):  # fmt: skip
    from ddbench.projector import projector_from_set

    task = make_task(ipc=10)
    task.val_loader = lambda: split_cache("digits", "val")
    s = run_distill(_hello(), task)
    assert s.images.shape == (100, 1, 8, 8) and s.labels.dtype == torch.int64
    assert torch.bincount(s.labels, minlength=10).tolist() == [10] * 10
    # only the low-rank matrices and the head are stored, as float16 extras
    shapes = {k: list(v.shape) for k, v in s.extras.items()}
    assert shapes == {"projector.lora_a": [2, 72], "projector.lora_b": [8, 2],
                      "projector.head_weight": [10, 8], "projector.head_bias": [10]}  # fmt: skip
    assert all(v.dtype == torch.float16 for v in s.extras.values())
    back = synset_io.load(synset_io.save(s, tmp_path / "hello.safetensors"))
    nb = back.nbytes()
    assert nb["extras"] == (144 + 16 + 80 + 10) * 2 and nb["labels"] == 100 * 8
    proj = back.meta["relabel"]["projector"]
    assert proj["projector_bytes"] == nb["extras"]
    assert proj["fkd_ratio"] >= 100 and proj["fkd_label_bytes"] >= 100 * proj["label_bytes"]
    assert "CLIP" in proj["substitution"] and proj["extractor"]["dataset"] == "digits"
    # the stored projector is rebuilt from the file and the cache: the fit lowered its KL to
    # the teacher on val below the projector's before the fit (epochs 0, same seed)
    teacher = get_teacher("digits", TeacherConfig(**TEACHER_A), device="cpu", train=False)[0]
    val = split_cache("digits", "val")
    fitted, desc = projector_from_set(back, "cpu")
    unfitted, _ = projector_from_set(run_distill(_hello(epochs=0), make_task(ipc=10)), "cpu")
    norm = make_task().normalize
    assert _val_kl(fitted, teacher, val, norm) < 0.8 * _val_kl(unfitted, teacher, val, norm)
    assert desc["projector"]["bytes"] == nb["extras"] and desc["source"] == "set"


def test_hello_is_deterministic_and_resumes(make_task, tmp_path):
    class Killed(Exception):
        pass

    class KillAfterFirst(Checkpointer):
        def save(self, step, tensors, state=None):
            super().save(step, tensors, state)
            if step == 1:
                raise Killed

    a = _hello(epochs=3).distill(make_task(seed=3))
    b = _hello(epochs=3).distill(make_task(seed=3))
    assert all(torch.equal(a.extras[k], b.extras[k]) for k in a.extras)
    with pytest.raises(Killed):
        _hello(epochs=3).distill(make_task(seed=3, checkpointer=KillAfterFirst(tmp_path, "h", 1)))
    resumed = _hello(epochs=3).distill(
        make_task(seed=3, checkpointer=Checkpointer(tmp_path, "h", 1))
    )
    assert resumed.meta["distillation"]["resumed_from"] == 1
    assert all(torch.equal(a.extras[k], resumed.extras[k]) for k in a.extras)


def test_hello_protocol_labels_with_the_sets_projector(make_task):
    s = run_distill(_hello(epochs=1), make_task(ipc=2))
    cfg = {**protocol_config("hello"), "epochs": 1, "seeds": [0], "batch_size": 16}
    r = evaluate(s, Protocol.from_config(cfg), model="convnet", model_kwargs={"net_width": 8},
                 device="cpu", progress=False)  # fmt: skip
    used = r["labels"]
    assert used["kind"] == "teacher" and used["teacher"]["source"] == "set"
    assert "CLIP" in used["teacher"]["projector"]["substitution"]
    assert r["cost"]["extra_bytes"] == used["teacher"]["projector"]["bytes"] > 0
    plain = synset_io.SyntheticSet(s.images, s.labels, {**s.meta, "relabel": None})
    with pytest.raises(DDBenchError, match="no teacher"):
        evaluate(plain, Protocol.from_config(cfg), model="convnet", device="cpu", progress=False)
