"""Tests for ddbench.synset: the set file format, its validation, importers and the CLI."""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from torch import nn
from torch.utils.data import DataLoader, Dataset

import ddbench
from ddbench import synset
from ddbench.data import get_spec
from ddbench.errors import DDBenchError
from ddbench.synset import SyntheticSet, read_header, tensors_sha256

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def _header(path: Path) -> tuple[int, dict]:
    """``(offset of the tensor data, header JSON)`` of a safetensors file, parsed by hand."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return 8 + n, json.loads(raw[8 : 8 + n])


def _write_raw(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """A set file written around ``synset.save`` (no validation, no checksum)."""
    from safetensors.torch import save_file

    meta = {k: v for k, v in meta.items() if k != "sha256"}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"ddbench": json.dumps(meta)})
    return path


def _denorm(s: SyntheticSet) -> torch.Tensor:
    space = s.meta["space"]
    mean = torch.tensor(space["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(space["std"]).view(1, -1, 1, 1)
    return s.images * std + mean


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=120)


class CustomPayload:
    """A non-tensor class: a weights_only load must refuse to rebuild it."""

    def __init__(self, value: int) -> None:
        self.value = value


class MkdirOnLoad:
    """Unpickling this runs ``os.mkdir(path)``: proof of whether a loader executes code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# ----------------------------------------------------------------------------- round trips


def test_save_load_round_trip(make_set, tmp_path: Path) -> None:
    s = make_set(ipc=2)
    s.lr = torch.tensor(0.0123)
    s.weights = torch.linspace(0.5, 1.5, len(s))
    images, labels = s.images.clone(), s.labels.clone()
    path = synset.save(s, tmp_path / "set.safetensors")
    assert path == tmp_path / "set.safetensors"

    raw = path.read_bytes()
    assert raw[:1] != b"\x80" and raw[:2] != b"PK"  # neither a pickle nor a torch.save zip
    offset, header = _header(path)
    assert raw[8:9] == b"{" and offset <= len(raw)
    assert header["images"]["dtype"] == "F32" and header["images"]["shape"] == list(images.shape)
    assert header["labels"]["dtype"] == "I64"
    assert json.loads(header["__metadata__"]["ddbench"]) == read_header(path)

    loaded = ddbench.load(path)
    assert isinstance(loaded, SyntheticSet)
    assert torch.equal(loaded.images, images) and loaded.images.dtype == torch.float32
    assert torch.equal(loaded.labels, labels) and loaded.labels.dtype == torch.int64
    assert loaded.lr is not None and loaded.lr.item() == pytest.approx(0.0123)
    assert torch.equal(loaded.weights, s.weights.float())
    # save() completed s.meta (sha256, num_images, ...); everything survives the JSON header.
    assert loaded.meta == json.loads(json.dumps(s.meta))
    for key, value in {
        "dataset": "digits",
        "num_classes": 10,
        "image_shape": [1, 8, 8],
        "ipc": 2,
        "protocol": "standard",
        "seed": 0,
        "num_images": 20,
        "label_kind": "hard",
        "ddbench_version": ddbench.__version__,
    }.items():
        assert loaded.meta[key] == value, key
    assert loaded.meta["method"] == {
        "name": "test_fixture",
        "config": {
            "_target_": "conftest.FixtureMethod",
            "name": "test_fixture",
            "pick": "first_ipc",
            "soft": False,
        },
    }
    assert loaded.meta["classes"] == list(get_spec("digits").classes)
    assert loaded.meta["sha256"] == tensors_sha256(loaded.tensors())
    assert len(loaded.meta["sha256"]) == 64


def test_load_feeds_a_plain_pytorch_training_loop(make_set, tmp_path: Path) -> None:
    path = synset.save(make_set(ipc=3), tmp_path / "set.safetensors")
    ds = ddbench.load(path)
    assert isinstance(ds, Dataset) and len(ds) == 30

    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x_all, y_all = ds.images, ds.labels
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(x_all), y_all).item()
    seen = 0
    for _ in range(10):
        for x, y in loader:
            assert x.shape[1:] == (1, 8, 8) and y.dtype == torch.int64
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(x)
    with torch.no_grad():
        after = nn.functional.cross_entropy(model(x_all), y_all).item()
    assert seen == 10 * 30
    assert after < 0.5 * before, (before, after)


def test_soft_labels_round_trip(make_set, tmp_path: Path) -> None:
    s = make_set(ipc=2, soft=True)
    assert s.labels.shape == (20, 10) and s.soft_labels
    labels = s.labels.clone()
    loaded = synset.load(synset.save(s, tmp_path / "soft.safetensors"))
    assert loaded.soft_labels and loaded.labels.dtype == torch.float32
    assert torch.equal(loaded.labels, labels)
    assert loaded.meta["label_kind"] == "soft"
    assert torch.equal(loaded.hard_labels, torch.arange(10).repeat_interleave(2))
    assert loaded.nbytes()["labels"] == 20 * 10 * 4


# ----------------------------------------------------------------------------- unreadable files


def _missing(p: Path, s: SyntheticSet) -> None:
    pass


def _truncated(p: Path, s: SyntheticSet) -> None:
    synset.save(s, p)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _pickled(p: Path, s: SyntheticSet) -> None:
    with open(p, "wb") as f:
        pickle.dump({"images": s.images, "labels": s.labels}, f)


def _torch_saved(p: Path, s: SyntheticSet) -> None:
    torch.save({"images": s.images, "labels": s.labels}, p)


def _random_bytes(p: Path, s: SyntheticSet) -> None:
    p.write_bytes(random.Random(0).randbytes(4096))


def _empty(p: Path, s: SyntheticSet) -> None:
    p.write_bytes(b"")


def _no_ddbench_meta(p: Path, s: SyntheticSet) -> None:
    from safetensors.torch import save_file

    save_file({"images": s.images.contiguous(), "labels": s.labels}, str(p))


def _directory(p: Path, s: SyntheticSet) -> None:
    p.mkdir()


UNREADABLE = {
    "missing": (_missing, r"no such file"),
    "truncated": (_truncated, r"truncated"),
    "pickle": (_pickled, r"Python pickle, not a safetensors file"),
    "torch_save": (_torch_saved, r"zip archive .*not a safetensors file"),
    "random_bytes": (_random_bytes, r"not a safetensors file"),
    "empty": (_empty, r"empty or truncated"),
    "no_ddbench_metadata": (_no_ddbench_meta, r"without ddbench metadata"),
    "directory": (_directory, r"is a directory"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_file_is_a_clear_error(case: str, make_set, tmp_path: Path) -> None:
    write, message = UNREADABLE[case]
    path = tmp_path / "x.safetensors"
    write(path, make_set(ipc=1))
    with pytest.raises(DDBenchError, match=message) as e:
        synset.load(path)
    assert str(path) in str(e.value)
    with pytest.raises(DDBenchError, match=message):
        read_header(path)


def test_truncated_file_message_gives_sizes(make_set, tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    synset.save(make_set(ipc=1), path)
    size = path.stat().st_size
    _truncated(path, make_set(ipc=1))
    with pytest.raises(DDBenchError, match=rf"{size // 2} bytes, the header promises {size}"):
        synset.load(path)


@pytest.mark.parametrize("header", [b"[]", b'{"images": 5}'])
def test_malformed_header_json_is_a_clear_error(header: bytes, tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(DDBenchError):
        synset.load(path)


# ----------------------------------------------------------------------------- invalid contents


def _bad_contents(case: str, s: SyntheticSet) -> tuple[torch.Tensor, torch.Tensor, dict]:
    x, y, meta = s.images.clone(), s.labels.clone(), dict(s.meta)
    if case == "nan":
        x[3, 0, 2, 2] = float("nan")
    elif case == "inf":
        x[0, 0, 0, 0] = float("inf")
        x[5, 0, 7, 7] = float("-inf")
    elif case == "wrong_shape":
        x = x.expand(-1, 3, -1, -1).clone()
    elif case == "label_too_big":
        y[0] = 10
    elif case == "label_negative":
        y[-1] = -1
    elif case == "over_ipc":
        y[2] = 0  # [0, 0, 1, 1, ...] -> three images of class 0 with ipc 2
    elif case == "soft_columns":
        y = torch.full((len(y), 9), 1 / 9)
    elif case == "count_mismatch":
        y = y[:-1]
    elif case == "float_hard_labels":
        y = y.float()
    return x, y, meta


BAD_CONTENTS = {
    "nan": r"1 image\(s\) contain NaN or Inf",
    "inf": r"2 image\(s\) contain NaN or Inf",
    "wrong_shape": r"\(3, 8, 8\) but digits images are \(1, 8, 8\)",
    "label_too_big": r"labels outside the 10 classes \(min 0, max 10\)",
    "label_negative": r"labels outside the 10 classes \(min -1, max 9\)",
    "over_ipc": r"a class has 3 images, more than the set's ipc of 2",
    "soft_columns": r"soft labels have 9 columns for 10 classes",
    "count_mismatch": r"20 images but 19 labels",
    "float_hard_labels": r"hard labels must be integers",
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENTS))
def test_save_refuses_invalid_contents(case: str, make_set, tmp_path: Path) -> None:
    x, y, meta = _bad_contents(case, make_set(ipc=2))
    path = tmp_path / "bad.safetensors"
    with pytest.raises(DDBenchError, match=BAD_CONTENTS[case]):
        synset.save(SyntheticSet(x, y, meta), path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", sorted(BAD_CONTENTS))
def test_load_refuses_invalid_contents(case: str, make_set, tmp_path: Path) -> None:
    s = make_set(ipc=2)
    good = _write_raw(
        tmp_path / "good.safetensors", {"images": s.images, "labels": s.labels}, s.meta
    )
    assert torch.equal(synset.load(good).images, s.images)  # the raw writer itself is fine
    x, y, meta = _bad_contents(case, s)
    path = _write_raw(tmp_path / "bad.safetensors", {"images": x, "labels": y}, meta)
    with pytest.raises(DDBenchError, match=BAD_CONTENTS[case]) as e:
        synset.load(path)
    assert str(path) in str(e.value)


def test_checksum_mismatch(make_set, tmp_path: Path) -> None:
    s = make_set(ipc=2)
    path = synset.save(s, tmp_path / "set.safetensors")
    offset, header = _header(path)
    start = offset + header["images"]["data_offsets"][0]
    raw = bytearray(path.read_bytes())
    size = len(raw)
    raw[start] ^= 0x01  # lowest mantissa bit of the first pixel: still a finite float
    path.write_bytes(bytes(raw))
    assert path.stat().st_size == size and _header(path)[1] == header

    with pytest.raises(DDBenchError, match="checksum mismatch"):
        synset.load(path)
    changed = synset.load(path, verify=False)
    diff = (changed.images != s.images).nonzero()
    assert diff.tolist() == [[0, 0, 0, 0]]


def test_failed_save_leaves_the_old_file(make_set, tmp_path: Path, monkeypatch) -> None:
    path = synset.save(make_set(ipc=2), tmp_path / "set.safetensors")
    before = path.read_bytes()

    x, y, meta = _bad_contents("nan", make_set(ipc=2))
    with pytest.raises(DDBenchError, match="NaN"):
        synset.save(SyntheticSet(x, y, meta), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.safetensors"]

    # A failure in the middle of writing (disk full...) after validation passed.
    import safetensors.torch

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    other = make_set(ipc=1)
    with pytest.raises(OSError, match="No space left"):
        synset.save(other, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.safetensors"]


# ----------------------------------------------------------------------------- importers


def test_import_dc(make_set, tmp_path: Path) -> None:
    s = make_set(ipc=2)
    res = tmp_path / "res_DC_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[s.images, s.labels]], "accs_all_exps": {"ConvNet": [0.5]}}, res)

    imp = synset.import_dc(res, "digits")
    assert torch.equal(imp.images, s.images) and torch.equal(imp.labels, s.labels)
    assert imp.meta["dataset"] == "digits" and imp.meta["ipc"] == 2
    assert imp.meta["method"]["name"] == "imported:dc"
    assert imp.meta["protocol"] == "dc" and imp.lr is None  # DC's own recipe, from the name
    spec = get_spec("digits")
    assert imp.meta["space"] == {
        "normalized": True,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "zca": False,
    }
    loaded = synset.load(synset.save(imp, tmp_path / "dc.safetensors"))
    assert torch.equal(loaded.images, s.images) and torch.equal(loaded.labels, s.labels)

    with pytest.raises(DDBenchError, match=r"not a DC/DSA/DM result file"):
        synset.import_dc(res, "digits", experiment=1)


def test_import_dc_reads_the_authors_numpy_accuracies(make_set, tmp_path: Path) -> None:
    """The authors' res_*.pt keeps evaluate_synset's accuracies as numpy floats: they load; a
    pickled object of any other class is still refused."""
    import numpy as np

    s = make_set(ipc=1)
    res = tmp_path / "res_DC_MNIST_ConvNet_1ipc.pt"
    accs = {"ConvNet": [np.float64(0.6868), np.float32(0.5)]}
    torch.save({"data": [[s.images, s.labels]], "accs_all_exps": accs}, res)
    assert torch.equal(synset.import_dc(res, "digits").images, s.images)
    torch.save({"data": [[s.images, s.labels]], "accs_all_exps": {"x": Path("p")}}, res)
    with pytest.raises(DDBenchError, match="holds Python objects besides tensors"):
        synset.import_dc(res, "digits")


@pytest.mark.parametrize(
    "name, protocol",
    [
        ("res_DC_MNIST_ConvNet_2ipc.pt", "dc"),
        ("res_DSA_MNIST_ConvNet_2ipc.pt", "standard"),
        ("res_DM_MNIST_ConvNet_2ipc.pt", "standard"),
        ("renamed.pt", "standard"),
    ],
)
def test_import_dc_declares_the_protocol_of_its_method(
    make_set, tmp_path: Path, name: str, protocol: str
) -> None:
    s = make_set(ipc=1)
    res = tmp_path / name
    torch.save({"data": [[s.images, s.labels]], "accs_all_exps": {}}, res)
    assert synset.import_dc(res, "digits").meta["protocol"] == protocol
    assert synset.import_dc(res, "digits", protocol="nodsa").meta["protocol"] == "nodsa"
    with pytest.raises(DDBenchError, match=r"unknown protocol 'nope'"):
        synset.import_dc(res, "digits", protocol="nope")


def test_import_mtt_with_learned_lr(make_set, tmp_path: Path) -> None:
    s = make_set(ipc=1)
    torch.save(s.images, tmp_path / "images_best.pt")
    torch.save(s.labels, tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.01).requires_grad_(), tmp_path / "lr_best.pt")

    imp = synset.import_mtt(tmp_path / "images_best.pt", "digits")
    assert torch.equal(imp.images, s.images) and torch.equal(imp.labels, s.labels)
    assert imp.lr is not None and imp.lr.item() == pytest.approx(0.01)
    assert imp.meta["protocol"] == "learned_lr"
    assert imp.meta["method"]["name"] == "imported:mtt" and imp.meta["ipc"] == 1

    loaded = synset.load(synset.save(imp, tmp_path / "mtt.safetensors"))
    assert loaded.lr.item() == pytest.approx(0.01)
    assert loaded.meta["protocol"] == "learned_lr"

    (tmp_path / "lr_best.pt").unlink()
    plain = synset.import_mtt(tmp_path / "images_best.pt", "digits")
    assert plain.lr is None and plain.meta["protocol"] == "standard"

    (tmp_path / "labels_best.pt").unlink()
    with pytest.raises(DDBenchError, match=r"labels_best\.pt: no such file"):
        synset.import_mtt(tmp_path / "images_best.pt", "digits")


def test_import_mtt_reads_datm_learned_logits_as_their_softmax(make_set, tmp_path: Path) -> None:
    """DATM saves its learned label logits (label_syn) and trains on their softmax; the set
    must hold that softmax, declare DATM's protocol, and keep each image's class."""
    s = make_set(ipc=2)
    k = int(s.labels.max()) + 1
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(s.labels), k, generator=g) * 3
    logits[torch.arange(len(s.labels)), s.labels] += 20  # each row favours its class
    torch.save(s.images, tmp_path / "images_7.pt")
    torch.save(logits, tmp_path / "labels_7.pt")
    torch.save(torch.tensor(0.02), tmp_path / "lr_7.pt")

    imp = synset.import_mtt(tmp_path / "images_7.pt", "digits")
    assert torch.allclose(imp.labels, torch.softmax(logits, 1))
    assert torch.allclose(imp.labels.sum(1), torch.ones(len(s.labels)))
    assert torch.equal(imp.hard_labels, s.labels)
    assert imp.meta["protocol"] == "datm" and imp.meta["method"]["name"] == "imported:datm"

    probs = torch.softmax(logits, 1)  # rows that are distributions are kept: not DATM's logits
    torch.save(probs, tmp_path / "labels_7.pt")
    kept = synset.import_mtt(tmp_path / "images_7.pt", "digits")
    assert torch.allclose(kept.labels, probs) and kept.meta["protocol"] == "learned_lr"
    assert kept.meta["method"]["name"] == "imported:mtt"

    bad = logits.clone()
    bad[0, 0] = float("nan")
    torch.save(bad, tmp_path / "labels_7.pt")
    with pytest.raises(DDBenchError, match="NaN or Inf"):
        synset.import_mtt(tmp_path / "images_7.pt", "digits")


@pytest.mark.parametrize("payload", ["custom_class", "code_on_load"])
def test_import_refuses_pickled_objects(payload: str, make_set, tmp_path: Path) -> None:
    s = make_set(ipc=1)
    marker = tmp_path / "code_ran"
    obj = CustomPayload(3) if payload == "custom_class" else MkdirOnLoad(str(marker))
    res = tmp_path / "res.pt"
    torch.save({"data": [[s.images, s.labels, obj]], "accs_all_exps": {}}, res)
    with pytest.raises(DDBenchError, match="weights_only"):
        synset.import_dc(res, "digits")
    torch.save(obj, tmp_path / "images_best.pt")
    with pytest.raises(DDBenchError, match="weights_only"):
        synset.import_mtt(tmp_path / "images_best.pt", "digits")
    assert not marker.exists()


def test_image_folder_export_import_round_trip(make_set, tmp_path: Path) -> None:
    s = make_set(ipc=3)
    g = torch.Generator().manual_seed(1)
    # Off-grid pixel values (not multiples of 1/255) so quantisation really happens.
    pixels = (_denorm(s) + (torch.rand(s.images.shape, generator=g) - 0.5) / 255).clamp(0, 1)
    spec = get_spec("digits")
    s.images = (pixels - spec.mean[0]) / spec.std[0]
    perm = torch.randperm(len(s), generator=g)
    s.images, s.labels, pixels = s.images[perm], s.labels[perm], pixels[perm]

    out = synset.export_image_folder(s, tmp_path / "folder")
    assert sorted(p.name for p in out.iterdir()) == sorted(spec.classes)
    assert all(len(list((out / c).glob("*.png"))) == 3 for c in spec.classes)

    imp = synset.import_image_folder(out, "digits")
    order = torch.sort(s.labels, stable=True).indices  # class folders, then file names
    assert torch.equal(imp.labels, s.labels[order])
    err = (_denorm(imp) - pixels[order]).abs().max().item()
    assert err <= 0.5 / 255 + 1e-5, err
    assert imp.meta["ipc"] == 3 and imp.meta["method"]["name"] == "imported:imagefolder"


def test_zca_set_has_no_png_export(make_set, tmp_path: Path) -> None:
    s = make_set(ipc=1)
    s.meta["space"] = dict(s.meta["space"], zca=True)
    with pytest.raises(DDBenchError, match="ZCA"):
        synset.export_image_folder(s, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- CLI


def test_cli_import_dc_writes_a_set(make_set, tmp_path: Path) -> None:
    s = make_set(ipc=2)
    res = tmp_path / "res.pt"
    torch.save({"data": [[s.images, s.labels]], "accs_all_exps": {"ConvNet": [0.5]}}, res)
    out = tmp_path / "out.safetensors"
    proc = _cli("import", "dc", str(res), "--dataset", "digits", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out} (20 images, ipc 2" in proc.stdout
    loaded = synset.load(out)
    assert torch.equal(loaded.images, s.images) and torch.equal(loaded.labels, s.labels)
    assert loaded.meta["method"]["name"] == "imported:dc"


@pytest.mark.parametrize(
    "command",
    [
        "show",
        "import",
    ],
)
def test_cli_bad_file_is_one_error_line(command: str, tmp_path: Path) -> None:
    if command == "show":
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(random.Random(1).randbytes(512))
        args = ["show", str(bad)]
    else:
        bad = tmp_path / "res.pt"
        torch.save({"data": [[CustomPayload(1), torch.zeros(1)]]}, bad)
        args = ["import", "dc", str(bad), "--dataset", "digits", "--out", str(tmp_path / "o.st")]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ddbench: error: ") and str(bad) in lines[0]
    assert not (tmp_path / "o.st").exists()
