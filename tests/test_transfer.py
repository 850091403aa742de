"""The transfer track on digits: the label-free set file, the transfer protocol, the encoder
cache, KRR-ST and DP4TL (docs/transfer.md)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from ddbench import data, engine, synset, transfer
from ddbench.augment import DSA
from ddbench.encoders import EncoderConfig, encoder_path, get_encoder
from ddbench.errors import DDBenchError
from ddbench.method import Task, run_distill
from ddbench.methods.dp4tl import DP4TL, centroid_counts, rank_classes
from ddbench.methods.krr_st import KRRST, krr_loss
from ddbench.methods.subset import Random
from ddbench.models import create_model
from ddbench.protocol import Protocol, evaluate, protocol_config
from ddbench.synset import REPRESENTATION, SyntheticSet
from ddbench.teachers import TeacherConfig, get_teacher

SMALL = {"net_width": 16}
ENCODER = {"epochs": 1, "batch_size": 256, "model_kwargs": SMALL}


def _task(train, ipc: int, seed: int = 0) -> Task:
    spec = train.spec
    return Task(
        train=train, ipc=ipc, seed=seed, device=torch.device("cpu"),
        model_factory=lambda: create_model("convnet", 1, 10, spec.im_size, **SMALL),
        generator=torch.Generator().manual_seed(seed), augment=DSA(spec.dsa_strategy),
    )  # fmt: skip


def _tiny_protocol(**over) -> transfer.TransferProtocol:
    cfg = transfer.transfer_protocol_config("transfer_quick")
    cfg["pretrain_labels"]["epochs"] = 2
    cfg["pretrain_representation"]["epochs"] = 2
    cfg["finetune"]["epochs"] = 2
    cfg["label_fraction"] = 0.2
    cfg.update(over)
    return transfer.TransferProtocol.from_config(cfg)


def _representation_set(train, n: int = 12, d: int = 7) -> SyntheticSet:
    images = train.normalize(train.images[:n])
    targets = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    meta = {"dataset": "digits", "space": train.space(), "ipc": 1, "label_kind": REPRESENTATION}
    return SyntheticSet(images, targets, meta)


# ----------------------------------------------------------------------------- the set file


def test_representation_set_round_trip(digits_train, tmp_path):
    s = _representation_set(digits_train)
    path = synset.save(s, tmp_path / "rep.safetensors")
    back = synset.load(path)
    assert back.representation and back.meta["label_kind"] == REPRESENTATION
    assert torch.equal(back.images, s.images) and torch.equal(back.labels, s.labels)
    assert back.nbytes()["labels"] == 12 * 7 * 4  # the targets count toward the set
    x, y = next(iter(DataLoader(back, batch_size=5)))  # a plain DataLoader works
    assert x.shape == (5, 1, 8, 8) and y.shape == (5, 7) and torch.equal(y, s.labels[:5])
    with pytest.raises(DDBenchError, match="representation targets, not class labels"):
        _ = back.hard_labels
    with pytest.raises(DDBenchError, match="transfer protocol"):  # never a class protocol
        evaluate(back, Protocol.from_config(protocol_config("quick")), device="cpu")


@pytest.mark.parametrize(
    "targets, match",
    [
        (torch.full((12, 7), math.nan), "NaN or Inf"),
        (torch.zeros(12), r"floats \[N, D\] with D > 0"),
        (torch.zeros(12, 0), r"floats \[N, D\] with D > 0"),
        (torch.zeros(12, 7, dtype=torch.long), r"floats \[N, D\]"),
        (torch.zeros(11, 7), "12 images but 11 representation targets"),
    ],
)
def test_bad_representation_targets_are_refused(digits_train, tmp_path, targets, match):
    s = _representation_set(digits_train)
    s.labels = targets
    with pytest.raises(DDBenchError, match=match):
        synset.save(s, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_unknown_label_kind_is_refused(digits_train, tmp_path):
    s = _representation_set(digits_train)
    s.meta["label_kind"] = "embedding"
    with pytest.raises(DDBenchError, match="label_kind"):
        synset.save(s, tmp_path / "bad.safetensors")


# ----------------------------------------------------------------------------- the protocol


def test_shipped_transfer_protocols_load_and_differ():
    hashes = {
        n: transfer.load_protocol(n).hash for n in ("transfer", "transfer_quick", "transfer_probe")
    }
    assert len(set(hashes.values())) == 3
    full = transfer.load_protocol("transfer")
    assert full.comparable and full.seeds == [0, 1, 2] and full.mode == "finetune"
    assert full.pretrain_representation.lr == 0.1 and full.pretrain_labels.lr == 0.01
    assert full.label_fraction == 0.05 and full.for_target("digits28").label_fraction == 0.2
    assert full.for_target("mnist") is full
    moved = transfer.transfer_protocol_config("transfer")
    moved["per_target"]["digits28"]["label_fraction"] = 0.3  # per_target is hashed
    assert transfer.TransferProtocol.from_config(moved).hash != full.hash
    with pytest.raises(DDBenchError, match="unknown transfer protocol"):
        transfer.load_protocol("nope")
    bad = transfer.transfer_protocol_config("transfer")
    bad["mode"] = "distill"
    with pytest.raises(DDBenchError, match="mode must be one of"):
        transfer.TransferProtocol.from_config(bad)
    bad = transfer.transfer_protocol_config("transfer")
    bad["finetune"]["epochs"] = 0
    with pytest.raises(DDBenchError, match="finetune: epochs must be a whole number >= 1"):
        transfer.TransferProtocol.from_config(bad)
    for key, value, why in (("batch_size", 0, "a whole number >= 1"), ("lr", True, "a positive")):
        bad = transfer.transfer_protocol_config("transfer")
        bad["pretrain_labels"][key] = value
        with pytest.raises(DDBenchError, match=f"pretrain_labels: {key} must be {why}"):
            transfer.TransferProtocol.from_config(bad)
    # a stage's engine recipe: the YAML's training fields, the stage's loss and augmentation
    r = full.pretrain_representation.recipe("mse", None)
    assert (r.epochs, r.lr, r.weight_decay, r.schedule, r.milestones) == (
        1000, 0.1, 0.001, "constant", (0.5,)
    )  # fmt: skip
    assert (r.loss, r.augment) == ("mse", None)
    bad = transfer.transfer_protocol_config("transfer")
    bad["per_target"] = {"digits28": {"seeds": [0]}}
    with pytest.raises(DDBenchError, match=r"per_target.digits28 cannot set \['seeds'\]"):
        transfer.TransferProtocol.from_config(bad)


def test_pairs_registry():
    assert transfer.get_pair("mnist_fashion20_to_digits28").target == "digits28"
    assert data.get_spec("digits28").shape == data.get_spec("mnist").shape
    with pytest.raises(DDBenchError, match="images are"):
        transfer.register_pair("bad", "digits", "mnist")


def test_transfer_trains_and_scores_deterministically(digits_train):
    s = Random().distill(_task(digits_train, ipc=5))
    p = _tiny_protocol(seeds=[0, 1])
    first = transfer.evaluate(s, p, "digits", model_kwargs=SMALL, device="cpu")
    again = transfer.evaluate(s, p, "digits", model_kwargs=SMALL, device="cpu")
    assert first["accuracy"]["per_seed"] == again["accuracy"]["per_seed"]
    assert first["pretrained_on"] == "labels" and first["protocol"]["hash"] == p.hash
    fraction = data.stratified_holdout(digits_train.labels, 0.2, 0)
    assert first["target_train_images"] == len(fraction) < len(digits_train)
    scratch = transfer.evaluate(None, p, "digits", model_kwargs=SMALL, device="cpu")
    assert scratch["pretrained_on"] == "none" and scratch["num_images"] == 0
    probe = transfer.evaluate(s, _tiny_protocol(mode="linear_probe"), "digits",
                              model_kwargs=SMALL, device="cpu")  # fmt: skip
    assert 0 <= probe["accuracy"]["mean"] <= 100


def test_transplant_keeps_the_pretrained_body(digits_train):
    s = Random().distill(_task(digits_train, ipc=3))
    (pre,), kind = transfer.pretrain(s, _tiny_protocol(), [0], "convnet", SMALL)
    net = transfer.transplant(
        pre, lambda: create_model("convnet", 1, 10, (8, 8), **SMALL), 0, "cpu"
    )
    body = [k for k in pre.state_dict() if not k.startswith("classifier.")]
    assert kind == "labels" and body
    assert all(torch.equal(pre.state_dict()[k], net.state_dict()[k]) for k in body)
    assert not torch.equal(pre.classifier.weight, net.classifier.weight)  # a fresh last layer


# ----------------------------------------------------------------------------- the encoder


def test_encoder_cache_second_call_hits(digits_train):
    cfg = EncoderConfig(**ENCODER)
    net, meta = get_encoder("digits", cfg, device="cpu", progress=False)
    assert not meta["cache_hit"] and encoder_path("digits", cfg).exists()
    assert len(meta["loss_history"]) == 1 and math.isfinite(meta["loss_history"][0])
    again, meta2 = get_encoder("digits", cfg, device="cpu", progress=False)
    assert meta2["cache_hit"] and meta2["key"] == meta["key"]
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other = EncoderConfig(**{**ENCODER, "temperature": 0.2})
    assert other.key("digits") != cfg.key("digits")


# ----------------------------------------------------------------------------- KRR-ST


def test_krr_loss_is_zero_when_the_set_is_the_real_batch():
    f = torch.randn(4, 8, dtype=torch.float64)  # fewer rows than features: K_ss invertible
    y = torch.randn(4, 3, dtype=torch.float64)
    assert float(krr_loss(f, y, f, y)) < 1e-6
    assert float(krr_loss(f, y, f, y + 1)) > 0.5


def test_krr_st_makes_a_label_free_set_deterministically(digits_train, tmp_path):
    def make():
        method = KRRST(iterations=3, num_models=2, online_iteration=3, batch_real=64,
                       encoder=ENCODER)  # fmt: skip
        return run_distill(method, _task(digits_train, ipc=2))

    s = make()
    assert s.images.shape == (20, 1, 8, 8) and s.labels.shape == (20, 16)  # ipc * classes, D
    assert s.representation and s.meta["encoder"]["config"]["proj_dim"] == 128
    again = make()
    assert torch.equal(s.images, again.images) and torch.equal(s.labels, again.labels)
    loaded = synset.load(synset.save(s, tmp_path / "krr.safetensors"))
    result = transfer.evaluate(loaded, _tiny_protocol(), "digits", model_kwargs=SMALL, device="cpu")
    assert result["pretrained_on"] == "representation" and result["method"] == "krr_st"


# ----------------------------------------------------------------------------- DP4TL


def test_rank_and_centroid_counts():
    assert rank_classes(torch.tensor([3, 5, 5, 0])) == [1, 2, 0, 3]
    src = torch.tensor([[0.0, 0], [0, 1], [10, 0], [10, 1]])
    counts = centroid_counts(src, torch.tensor([0, 0, 2, 2]), torch.tensor([[9.0, 0], [1, 1]]), 3)
    assert counts.tolist() == [1, 0, 1]  # class 1 has no images, no centroid


@pytest.mark.parametrize("mapping", ["lm", "fm", "random"])
def test_dp4tl_counts_and_determinism(digits_train, mapping):
    def make():
        method = DP4TL(target="digits", mapping=mapping, keep_classes=0.3, encoder=ENCODER,
                       surrogate={"epochs": 1, "model_kwargs": SMALL})  # fmt: skip
        return run_distill(method, _task(digits_train, ipc=4))

    s = make()
    kept = s.meta["kept_classes"]
    assert len(kept) == 3 and sorted(set(s.labels.tolist())) == kept and len(s) == 12
    counts = s.meta["class_counts"]
    assert min(counts[c] for c in kept) >= max(c for i, c in enumerate(counts) if i not in kept)
    if mapping != "random":
        assert sum(counts) == len(data.load_split("digits", "train"))
    assert torch.equal(s.images, make().images)


def _digits_low(spec, raw):  # digits of classes 0-4 only: a target that hits half the classes
    out = data.read_digits(data.get_spec("digits"), raw)
    for split in ("train", "test"):
        keep = out[f"{split}_y"] < 5
        out[f"{split}_x"], out[f"{split}_y"] = out[f"{split}_x"][keep], out[f"{split}_y"][keep]
    return out


def test_label_mapping_keeps_the_classes_the_target_hits(digits_train, monkeypatch, tmp_path):
    spec = data.get_spec("digits")
    low = data.DatasetSpec("digits_low", 1, (8, 8), spec.classes[:5], spec.mean, spec.std, "test")
    monkeypatch.setitem(data.CATALOGUE, "digits_low", low)
    monkeypatch.setitem(data._READERS, "digits_low", _digits_low)
    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path))
    surrogate = {"epochs": 15, "lr": 0.05, "model_kwargs": SMALL}
    s = run_distill(DP4TL(target="digits_low", mapping="lm", surrogate=surrogate),
                    _task(digits_train, ipc=2))  # fmt: skip
    assert s.meta["kept_classes"] == [0, 1, 2, 3, 4]
    # the counts are the surrogate's predictions on the target, read in the source's space
    net, _ = get_teacher("digits", TeacherConfig(**surrogate), device="cpu")
    target = data.load_split("digits_low", "train")
    pred = engine.predict([net], target.images, transform=digits_train.standardize)[0].argmax(1)
    assert s.meta["class_counts"] == torch.bincount(pred, minlength=10).tolist()


def test_transfer_command(digits_train, tmp_path, capsys):
    from ddbench import cli

    path = synset.save(Random().distill(_task(digits_train, ipc=2)), tmp_path / "r.safetensors")
    out = tmp_path / "result.json"
    args = ["transfer", str(path), "--target", "digits", "--protocol", "transfer_quick"]
    cli.main([*args, "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["protocol"]["name"] == "transfer_quick" and not result["protocol"]["comparable"]
    assert result["source"] == result["target"] == "digits" and result["num_images"] == 20
    assert "random digits -> digits" in capsys.readouterr().out
    with pytest.raises(DDBenchError, match="pair mnist_to_digits28 pre-trains on mnist"):
        transfer.main([str(path), "--pair", "mnist_to_digits28"])


def test_the_engines_mse_loss_fits_representation_targets(digits_train):
    logits = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    targets = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1))
    recipe = engine.Recipe(epochs=1, loss="mse")
    expected = sum(torch.nn.functional.mse_loss(logits[k], targets[k]) for k in range(2))
    assert torch.allclose(engine._loss(logits, targets, recipe, None), expected)
    s = _representation_set(digits_train, n=40, d=5)
    recipe = engine.Recipe(epochs=80, batch_size=40, loss="mse", lr=0.1, schedule="constant")
    build = lambda: create_model("convnet", 1, 5, (8, 8), **SMALL)  # noqa: E731
    losses = engine.train(build, [0], s.images, s.labels, recipe, device="cpu").losses
    assert losses[-1] < 0.5 * losses[0]


def test_krr_st_resumes_images_and_targets(digits_train, tmp_path, caplog):
    from ddbench.method import Checkpointer

    def run(iterations: int, every: int):
        t = _task(digits_train, ipc=1)
        t.checkpointer = Checkpointer(tmp_path, "key", every)
        method = KRRST(iterations=iterations, num_models=1, online_iteration=3, batch_real=32,
                       encoder=ENCODER)  # fmt: skip
        return run_distill(method, t)

    first = run(2, every=2)  # leaves its checkpoint at iteration 2
    saved = synset.load(synset.save(first, tmp_path / "first.safetensors"))
    with caplog.at_level("INFO", logger="ddbench"):
        resumed = run(2, every=0)  # nothing left to do: the checkpoint's set comes back
    assert "resuming from iteration 2" in caplog.text
    assert torch.equal(resumed.images, saved.images) and torch.equal(resumed.labels, saved.labels)


def test_fine_tuning_learns_the_target(digits_train):
    p = _tiny_protocol(seeds=[0])
    p.finetune.epochs, p.finetune.batch_size, p.finetune.augment = 30, 32, "none"
    result = transfer.evaluate(None, p, "digits", model_kwargs=SMALL, device="cpu")
    assert result["accuracy"]["mean"] > 60  # chance is 10 %


def test_run_refuses_a_representation_method_before_any_work(tmp_path):
    """`ddbench run method=krr_st` would distil for hours and then find no class protocol that
    scores representation targets: it is refused at once, naming the commands to use."""
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "ddbench.cli", "run", "method=krr_st", "dataset=digits", "ipc=1",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode != 0
    assert "representation targets" in p.stderr and "ddbench transfer" in p.stderr
    assert not (tmp_path / "run" / "synset.safetensors").exists()


# ----------------------------------------------------------------------------- the board


def _digits_transposed(spec, raw):  # digits with rows and columns swapped: another 8x8 dataset
    out = data.read_digits(data.get_spec("digits"), raw)
    for split in ("train", "test"):
        out[f"{split}_x"] = out[f"{split}_x"].transpose(-1, -2).contiguous()
    return out


def test_transfer_entries_are_checked_verified_and_tamper_flagged(digits_train, tmp_path):
    from ddbench import leaderboard
    from ddbench.protocol import write_result

    s = run_distill(Random(), _task(digits_train, ipc=2))
    set_path = synset.save(s, tmp_path / "r.safetensors")
    s = synset.load(set_path)
    s.meta["_path"] = str(set_path)
    r = transfer.evaluate(s, transfer.load_protocol("transfer_quick"), "digits", device="cpu")
    write_result(r, tmp_path / "result.json")
    board = tmp_path / "board"
    entry = leaderboard.submit(tmp_path / "result.json", set_path, board)
    assert entry.parent.relative_to(board / "submissions").as_posix() == (
        "digits/ipc2_to_digits/transfer_quick"
    )
    stored = json.loads(entry.read_text())
    assert stored["submission"]["checks"]["near_copies"]["target"]["copies"] == []
    lines = []
    (rep,) = leaderboard.verify(board, out=lines.append)
    assert rep["flags"] == [] and rep["difference"] == 0.0, lines  # deterministic on CPU
    assert lines[0].startswith("OK")
    leaderboard.build(board)
    page = (board / "index.html").read_text()
    assert "IPC 2 → digits (transfer" in page and "transfer_quick" in page
    # a better score than the set gives is flagged; so is a changed claim about the set
    stored["accuracy"]["per_seed"][0]["accuracy"] += 5.0
    stored["accuracy"]["mean"] += 5.0
    entry.write_text(json.dumps(stored))
    (rep,) = leaderboard.verify(board, out=lines.append)
    assert any("re-evaluated" in f for f in rep["flags"])
    stored["num_images"] += 1
    entry.write_text(json.dumps(stored))
    (rep,) = leaderboard.verify(board, out=lines.append)
    assert any("'num_images' is 21, the set's is 20" in f for f in rep["flags"])
    # a result whose protocol is not the pinned one, or whose target fraction is not, is refused
    for key, value, match in (("hash", "0" * 16, "hash"), ("label_fraction", 1.0, "gives 0.05")):
        bad = json.loads((tmp_path / "result.json").read_text())
        bad["protocol"][key] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(DDBenchError, match=match):
            leaderboard.check_submission(tmp_path / "bad.json", set_path)


def test_one_set_has_one_entry_per_track_image_and_transfer(digits_train, tmp_path):
    """A random subset may be both a transfer entry and an image entry (the reference of each
    track); a second entry of the same set in one track is still refused."""
    from ddbench import leaderboard
    from ddbench.protocol import Protocol, evaluate, protocol_config, write_result

    s = run_distill(Random(), _task(digits_train, ipc=2))
    set_path = synset.save(s, tmp_path / "r.safetensors")
    s = synset.load(set_path)
    s.meta["_path"] = str(set_path)
    board = tmp_path / "board"
    r = transfer.evaluate(s, transfer.load_protocol("transfer_quick"), "digits", device="cpu")
    write_result(r, tmp_path / "transfer.json")
    t_entry = leaderboard.submit(tmp_path / "transfer.json", set_path, board)
    quick = Protocol.from_config(protocol_config("quick"))
    img = evaluate(s, quick, "mlp", {}, device="cpu", progress=False)
    write_result(img, tmp_path / "image.json")
    i_entry = leaderboard.submit(tmp_path / "image.json", set_path, board)
    assert i_entry != t_entry and i_entry.parent.name == "quick"
    good, bad = leaderboard.scan(board)
    assert bad == [] and sorted(f for f, _, _ in good) == sorted([t_entry, i_entry])
    for again in ("image.json", "transfer.json"):  # a second entry of the set in one track
        with pytest.raises(DDBenchError, match="already on the board"):
            leaderboard.submit(tmp_path / again, set_path, board)


def test_a_set_holding_a_target_test_image_is_refused(digits_train, monkeypatch, tmp_path):
    from ddbench import leaderboard, transfer_board
    from ddbench.protocol import write_result

    spec = data.get_spec("digits")
    monkeypatch.setitem(data.CATALOGUE, "digits_t",
                        data.DatasetSpec("digits_t", 1, (8, 8), spec.classes, spec.mean, spec.std,
                                         "test"))  # fmt: skip
    monkeypatch.setitem(data._READERS, "digits_t", _digits_transposed)
    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path / "data"))
    s = run_distill(Random(), _task(digits_train, ipc=2))
    clean = transfer_board.copies(s, "digits_t")
    assert clean["source"]["copies"] == [] and clean["target"]["copies"] == []
    test_t = data.load_split("digits_t", "test")
    same = int((test_t.labels == s.labels[0]).nonzero()[0])  # one target test image, its class
    s.images[0] = test_t.normalize(test_t.images[same : same + 1])[0]
    found = transfer_board.copies(s, "digits_t")
    assert found["source"]["copies"] == []  # not a copy of a source test image
    assert [c["image"] for c in found["target"]["copies"]] == [0]
    set_path = synset.save(s, tmp_path / "s.safetensors")
    s = synset.load(set_path)
    r = transfer.evaluate(s, transfer.load_protocol("transfer_quick"), "digits_t", device="cpu")
    write_result(r, tmp_path / "result.json")
    with pytest.raises(DDBenchError, match="target test split: 1 synthetic image"):
        leaderboard.submit(tmp_path / "result.json", set_path, tmp_path / "board")


def test_target_data_is_the_catalogues_recipe_slash_and_all(digits_train, monkeypatch, tmp_path):
    """A result records how its target's images were made (``target_data``, the catalogue's
    text, which may name a folder, as MNIST's does): the board takes it, and refuses a result
    scored on images made another way, or whose text hides a control character."""
    from ddbench import leaderboard
    from ddbench.protocol import write_result

    spec = data.get_spec("digits")
    recipe = "scikit-learn digits, or IDX files in raw/"
    monkeypatch.setitem(data.CATALOGUE, "digits_r",
                        data.DatasetSpec("digits_r", 1, (8, 8), spec.classes, spec.mean, spec.std,
                                         recipe))  # fmt: skip
    monkeypatch.setitem(data._READERS, "digits_r", lambda spec, raw: data.read_digits(spec, raw))
    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path / "data"))
    s = run_distill(Random(), _task(digits_train, ipc=1))
    set_path = synset.save(s, tmp_path / "s.safetensors")
    s = synset.load(set_path)
    r = transfer.evaluate(s, transfer.load_protocol("transfer_quick"), "digits_r", device="cpu")
    assert r["target_data"] == recipe
    for value, match in (("stretched over 28x28", "scored on other target images"),
                         (recipe + "\u202e", "control character")):  # fmt: skip
        bad = dict(r, target_data=value)
        write_result(bad, tmp_path / "bad.json")
        with pytest.raises(DDBenchError, match=match):
            leaderboard.submit(tmp_path / "bad.json", set_path, tmp_path / "board")
    write_result(r, tmp_path / "result.json")
    entry = leaderboard.submit(tmp_path / "result.json", set_path, tmp_path / "board")
    assert json.loads(entry.read_text())["target_data"] == recipe
    good, bad = leaderboard.scan(tmp_path / "board")
    assert [f for f, _, _ in good] == [entry] and bad == []


def test_krr_st_augments_the_real_batch_as_the_authors(digits_train):
    """crop_flip (the default): kornia's RandomCrop(padding=4), no flip on digits; seeded from
    the task, so a rerun draws the same crops; none leaves the batch as it is."""
    real = digits_train.normalize(digits_train.images[:64])
    outs = []
    for _ in range(2):
        m, task = KRRST(), _task(digits_train, ipc=1, seed=3)
        outs.append(m.augment_real(task, real))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], real)

    # a crop moves content: each output image is its input shifted by at most 4 pixels (the
    # overlap equal), never mirrored on digits
    def shifted(x, y, dy, dx):
        h, w = x.shape
        a = y[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
        b = x[max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)]
        return torch.equal(a, b)

    for x, y in zip(real[:, 0], outs[0][:, 0]):
        assert any(shifted(x, y, dy, dx) for dy in range(-4, 5) for dx in range(-4, 5))
    m = KRRST(real_augment="none")
    assert torch.equal(m.augment_real(_task(digits_train, ipc=1), real), real)
    with pytest.raises(DDBenchError, match="real_augment must be one of"):
        KRRST(real_augment="mixup")


def test_import_krr_st_reads_the_authors_files(digits_train, tmp_path, capsys):
    """x_syn.pt / y_syn.pt as the authors' Logger saves them (tensors with requires_grad):
    imported as a label-free set marked as the authors' KRR-ST set; bad files are refused."""
    from ddbench import cli

    x = digits_train.normalize(digits_train.images[:20]).clone().requires_grad_(True)
    y = torch.randn(20, 9, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    run = tmp_path / "results" / "exp"
    run.mkdir(parents=True)
    torch.save(x, run / "x_syn.pt")
    torch.save(y, run / "y_syn.pt")
    out = tmp_path / "ref.safetensors"
    cli.main(["import", "krr_st", str(run), "--dataset", "digits", "--out", str(out),
              "--method", "krr_st", "--code", "db-Lee/selfsup_dd@4beb4b1"])  # fmt: skip
    s = synset.load(out)
    assert s.representation and torch.equal(s.labels, y.detach()) and torch.equal(s.images, x)
    assert s.meta["method"] == {"name": "imported:krr_st",
                                "config": {"code": "db-Lee/selfsup_dd@4beb4b1"}}  # fmt: skip
    assert s.meta["protocol"] == "transfer" and s.ipc == 2
    r = transfer.evaluate(s, _tiny_protocol(), "digits", model_kwargs=SMALL, device="cpu")
    assert r["pretrained_on"] == "representation" and r["method"] == "imported:krr_st"
    # a label-free file is not another method's set; targets of the wrong shape are refused
    with pytest.raises(DDBenchError, match="mtt sets are labelled; the imported set is label-free"):
        cli.cmd_import(["krr_st", str(run), "--dataset", "digits", "--out", str(out),
                        "--method", "mtt"])  # fmt: skip
    torch.save(y[:5], run / "y_syn.pt")
    with pytest.raises(DDBenchError, match=r"expected representation targets \[N, D\] = \[20, D\]"):
        synset.import_krr_st(run, "digits")
    torch.save(y.detach().long(), run / "y_syn.pt")
    with pytest.raises(DDBenchError, match="finite floats"):
        synset.import_krr_st(run / "x_syn.pt", "digits")


# ----------------------------------------------------------------------------- bench/transfer.py


def test_the_transfer_bench_resumes_set_by_set_and_row_by_row(digits_train, tmp_path, monkeypatch):
    """A rerun loads every saved set and row; a row scored under another protocol, or a set made
    with other settings, is made again (bench/transfer.py)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "bench" / "transfer.py"
    spec = importlib.util.spec_from_file_location("ddbench_bench_transfer", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(transfer.PAIRS, "digits_to_digits",
                        transfer.Pair("digits_to_digits", "digits", "digits"))  # fmt: skip
    argv = ["transfer.py", "krr", "--smoke", "--pairs", "digits_to_digits", "--iterations", "2",
            "--ipc", "2", "--out", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    out = tmp_path / "krr_ipc2_smoke"
    rows = sorted(p.name for p in (out / "rows").iterdir())
    assert rows == [
        f"digits_to_digits_{k}.json" for k in ("herding", "krr_st", "random", "scratch")
    ]
    table = (out / "table.md").read_text()
    stamps = {
        p: p.stat().st_mtime_ns for p in [*(out / "rows").iterdir(), *(out / "sets").iterdir()]
    }
    bench.main()  # everything reused: no file rewritten, the same table
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "table.md").read_text() == table
    # a row of another protocol is scored again; a set of other settings is made again
    row = out / "rows" / "digits_to_digits_random.json"
    r = json.loads(row.read_text())
    r["protocol"]["hash"] = "0" * 16
    row.write_text(json.dumps(r))
    s = synset.load(out / "sets" / "digits_to_digits_herding.safetensors")
    s.meta["bench_key"] = "another"
    synset.save(s, out / "sets" / "digits_to_digits_herding.safetensors")
    bench.main()
    assert json.loads(row.read_text())["protocol"]["hash"] != "0" * 16
    changed = {p.name for p in stamps if p.stat().st_mtime_ns != stamps[p]}
    # the remade herding set has the same tensors (a seeded selection), so its row still holds
    assert changed == {"digits_to_digits_random.json", "digits_to_digits_herding.safetensors"}
    # a set identical to another row's takes that row's scores (LM and FM keeping one class set)
    h = out / "sets" / "digits_to_digits_herding.safetensors"
    twin = synset.load(out / "sets" / "digits_to_digits_random.safetensors")
    twin.meta["bench_key"] = synset.load(h).meta["bench_key"]
    synset.save(twin, h)
    (out / "rows" / "digits_to_digits_herding.json").unlink()
    bench.main()
    r_h = json.loads((out / "rows" / "digits_to_digits_herding.json").read_text())
    assert r_h["same_set_as"] == "digits_to_digits_random"
    assert r_h["accuracy"] == json.loads(row.read_text())["accuracy"]
    # a row scored on the target's images made by another recipe is scored again
    r = json.loads(row.read_text())
    r["target_data"] = "an older recipe"
    row.write_text(json.dumps(r))
    # --rows: only those rows are made; the others are looked up, and a missing one is left out
    (out / "rows" / "digits_to_digits_scratch.json").unlink()
    (out / "sets" / "digits_to_digits_herding.safetensors").unlink()
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", "random"])
    bench.main()
    assert json.loads(row.read_text())["target_data"] == data.get_spec("digits").source
    assert not (out / "rows" / "digits_to_digits_scratch.json").exists()
    assert not (out / "sets" / "digits_to_digits_herding.safetensors").exists()
    listed = (out / "table.md").read_text()
    assert "| random |" in listed and "| krr_st |" in listed
    assert "| herding |" not in listed and "no pre-training" not in listed  # set / row missing
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()  # without --rows: every row again, the same table as the first run's
    assert (out / "table.md").read_text().count("\n|") == table.count("\n|")
    # a run of another pair keeps this pair's stored rows in the table, only looked up
    monkeypatch.setitem(transfer.PAIRS, "digits_to_digits_2",
                        transfer.Pair("digits_to_digits_2", "digits", "digits"))  # fmt: skip
    stamps = {p: p.stat().st_mtime_ns for p in (out / "rows").iterdir()}
    monkeypatch.setattr(
        sys, "argv", [*argv[:4], "digits_to_digits_2", *argv[5:], "--rows", "scratch"]
    )
    bench.main()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "rows" / "digits_to_digits_2_scratch.json").exists()
    both = json.loads((out / "results.json").read_text())["results"]
    assert set(both) == {"digits_to_digits", "digits_to_digits_2"}
    assert len(both["digits_to_digits"]) == 4 and list(both["digits_to_digits_2"]) == [
        "no pre-training"
    ]
    assert (out / "table.md").read_text().count("## ") == 2


def test_a_label_free_set_has_a_thumbnail(digits_train, tmp_path):
    """No classes to make rows of: the images in order, ipc of them a row (the board's page)."""
    from PIL import Image

    from ddbench.viz import save_thumbnail, to_pixels

    s = _representation_set(digits_train, n=12)
    s.meta.update(num_classes=10, ipc=4)
    import numpy as np

    png = Image.open(save_thumbnail(s, tmp_path / "t.png"))
    assert png.size == (1 + 4 * 9, 1 + 3 * 9)  # 3 rows of 4 cells
    cells = torch.from_numpy(np.asarray(png.convert("L")).copy()).long()  # grey
    want = (to_pixels(s)[5, 0] * 255).round()  # image 5: row 1, column 1
    assert torch.equal(cells[1 + 9 : 1 + 9 + 8, 1 + 9 : 1 + 9 + 8].float(), want)
