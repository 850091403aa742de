"""Tests for ddbench.data: the catalogue, readers of the official formats, prepare and splits."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ddbench import data
from ddbench.data import get_spec, load_split, prepare, register_image_folder
from ddbench.errors import DDBenchError

# ----------------------------------------------------------------------------- helpers


def _rows(images: np.ndarray, labels: np.ndarray) -> Counter:
    """The multiset of (image bytes, label) pairs."""
    return Counter(img.tobytes() + int(y).to_bytes(2, "little") for img, y in zip(images, labels))


def _split_rows(ds) -> Counter:
    return _rows(ds.images.numpy(), ds.labels.numpy())


class _Py2Pickler(pickle._Pickler):
    """Pickles like Python 2's cPickle did (the real CIFAR files): str/bytes as BINSTRING."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        b = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _pickle(obj, style: str) -> bytes:
    if style == "py3_protocol2":
        return pickle.dumps(obj, protocol=2)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x / Python 2 wrote the module as numpy.core.multiarray
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


PICKLE_STYLES = ["py3_protocol2", "py2_cpickle"]


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.tobytes()


def _write_mnist_idx(d: Path, rng: np.random.Generator, gz: bool = True) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 7], np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 0, 4, 4, 1], np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (d / name).write_bytes(raw)
    return arrays


@pytest.fixture
def own_data_root(tmp_path: Path, monkeypatch) -> Path:
    """A private data root for tests that prepare data they wrote themselves."""
    root = tmp_path / "data-root"
    monkeypatch.setenv("DDBENCH_DATA", str(root))
    return root


# ----------------------------------------------------------------------------- digits


def test_data_root_follows_env(own_data_root: Path) -> None:
    assert data.data_root() == own_data_root
    assert data.prepared_path("digits") == own_data_root / "digits" / "data.safetensors"


def test_digits_splits_partition_the_dataset(split_cache) -> None:
    from sklearn.datasets import load_digits

    splits = {s: split_cache("digits", s) for s in ("train", "val", "test")}
    for name, ds in splits.items():
        assert ds.split == name
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (1, 8, 8)
        assert ds.labels.dtype == torch.int64 and ds.labels.shape == (len(ds.images),)
        assert len(ds) > 0
    d = load_digits()
    full = _rows(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None], d.target)
    # Same multiset and sizes adding up to 1797: every image is in exactly one split.
    assert sum(len(ds) for ds in splits.values()) == len(d.target) == 1797
    assert sum((_split_rows(ds) for ds in splits.values()), Counter()) == full
    # test is a stratified 20% of everything, val a stratified 10% of the rest
    for c in range(10):
        n_test = int((splits["test"].labels == c).sum())
        n_val = int((splits["val"].labels == c).sum())
        n_train = int((splits["train"].labels == c).sum())
        n_all = n_test + n_val + n_train
        assert abs(n_test - 0.2 * n_all) <= 0.5, (c, n_test, n_all)
        assert n_val >= 1 and abs(n_val - 0.1 * (n_val + n_train)) <= 0.5, (c, n_val, n_train)


def test_digits_val_is_seeded(split_cache) -> None:
    first = split_cache("digits", "val")
    torch.manual_seed(12345)  # the global RNG must not matter
    again = load_split("digits", "val")
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    train_again = load_split("digits", "train")
    assert torch.equal(split_cache("digits", "train").images, train_again.images)


def test_indices_of(digits_train) -> None:
    ds = digits_train
    seen = torch.zeros(len(ds), dtype=torch.int64)
    for c in range(ds.num_classes):
        idx = ds.indices_of(c)
        assert len(idx) > 0 and bool((ds.labels[idx] == c).all())
        seen[idx] += 1
    assert bool((seen == 1).all())  # every image belongs to exactly one class's list
    sub = ds.subset(ds.indices_of(4)[:5])
    assert len(sub) == 5 and bool((sub.labels == 4).all()) and len(sub.indices_of(4)) == 5


def test_normalize_denormalize(digits_train) -> None:
    x = digits_train.images[:10]
    z = digits_train.normalize(x)
    spec = get_spec("digits")
    assert torch.allclose(z, (x.float() / 255 - spec.mean[0]) / spec.std[0])
    assert torch.allclose(digits_train.denormalize(z) * 255, x.float(), atol=1e-4)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DDBenchError, match="unknown dataset 'imagenet_1k_typo'") as e:
        load_split("imagenet_1k_typo", "train")
    for name in data.CATALOGUE:
        assert name in str(e.value)
    with pytest.raises(DDBenchError, match="known datasets: .*digits"):
        prepare("nope")


def test_unknown_split() -> None:
    with pytest.raises(DDBenchError, match="unknown split 'validation'"):
        load_split("digits", "validation")


def test_not_prepared_without_prepare(own_data_root: Path) -> None:
    with pytest.raises(DDBenchError, match="ddbench data prepare digits"):
        load_split("digits", "train", prepare_if_missing=False)


def test_unreadable_prepared_file(own_data_root: Path) -> None:
    path = data.prepared_path("digits")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(DDBenchError, match="--force"):
        load_split("digits", "train")


def test_stale_prepared_file_is_made_again(own_data_root: Path) -> None:
    """A prepared file made from another recipe (its ``source`` is not the catalogue's) is never
    read as if it were current: without preparing, a clear error; with it, made again."""
    from safetensors.torch import load_file, save_file

    path = prepare("digits")
    fresh = load_split("digits", "train")
    tensors = load_file(str(path))
    tensors["train_x"] = torch.zeros_like(tensors["train_x"])  # what an old recipe made
    save_file(tensors, str(path), metadata={"format": "1", "dataset": "digits", "source": "old"})
    assert "source 'old'" in data.stale("digits")
    with pytest.raises(DDBenchError, match="digits was made with source 'old'.*--force"):
        load_split("digits", "train", prepare_if_missing=False)
    again = load_split("digits", "train")
    assert data.stale("digits") is None and torch.equal(again.images, fresh.images)


def test_digits28_is_digits_in_mnist_layout(split_cache) -> None:
    """digits28: each 8x8 digit resized into a 20x20 box centred in 28x28 (MNIST's layout), the
    same splits as digits."""
    import torch.nn.functional as F

    for split in ("train", "test"):
        small, big = split_cache("digits", split), split_cache("digits28", split)
        assert torch.equal(small.labels, big.labels) and big.images.shape[1:] == (1, 28, 28)
        assert big.images[..., :4, :].eq(0).all() and big.images[..., 24:, :].eq(0).all()
        assert big.images[..., :4].eq(0).all() and big.images[..., 24:].eq(0).all()
        box = F.interpolate(small.images.float(), size=(20, 20), mode="bilinear")
        diff = (big.images[..., 4:24, 4:24].float() - box).abs()
        assert diff.max() <= 0.5  # rounding only
    spec = get_spec("digits28")
    x = split_cache("digits28", "train").images.float() / 255
    # the catalogue's mean/std were measured on the whole prepared train split; the train part
    # (val held out) agrees to within a few thousandths
    assert abs(x.mean().item() - spec.mean[0]) < 0.01 and abs(x.std().item() - spec.std[0]) < 0.01


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(
    not data.FASHION_MNIST_DEBIAN.is_dir(),
    reason=f"{data.FASHION_MNIST_DEBIAN} missing (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian(split_cache) -> None:
    tr, va, te = (split_cache("fashion_mnist", s) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (54000, 6000, 10000)
    for ds in (tr, va, te):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(va.labels, minlength=10).tolist() == [600] * 10
    # The first few hundred images and labels, parsed independently from the Debian files.
    n = 300
    with gzip.open(data.FASHION_MNIST_DEBIAN / "t10k-images-idx3-ubyte.gz", "rb") as f:
        images = np.frombuffer(f.read(16 + n * 784)[16:], np.uint8).reshape(n, 1, 28, 28)
    with gzip.open(data.FASHION_MNIST_DEBIAN / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(8 + n)[8:], np.uint8).astype(np.int64)
    assert np.array_equal(te.images[:n].numpy(), images)
    assert np.array_equal(te.labels[:n].numpy(), labels)
    with gzip.open(data.FASHION_MNIST_DEBIAN / "train-images-idx3-ubyte.gz", "rb") as f:
        train_head = np.frombuffer(f.read(16 + n * 784)[16:], np.uint8).reshape(n, 1, 28, 28)
    assert _rows(train_head, np.zeros(n)) <= _rows(
        torch.cat([tr.images, va.images]).numpy(), np.zeros(len(tr) + len(va))
    )


# ----------------------------------------------------------------------------- CIFAR / SVHN


def _cifar_batch(rng, n: int, label_key: bytes, num_classes: int) -> tuple[dict, np.ndarray, list]:
    x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    y = [int(v) for v in rng.integers(0, num_classes, n)]
    d = {b"batch_label": b"testing batch", label_key: y, b"data": x, b"filenames": [b"a.png"] * n}
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = [v // 5 for v in y]
    return d, x, y


def _write_cifar10(d: Path, style: str, rng) -> tuple[np.ndarray, list, np.ndarray, list]:
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        batch, x, y = _cifar_batch(rng, 3, b"labels", 10)
        (d / f"data_batch_{i}").write_bytes(_pickle(batch, style))
        xs.append(x)
        ys += y
    batch, tx, ty = _cifar_batch(rng, 4, b"labels", 10)
    (d / "test_batch").write_bytes(_pickle(batch, style))
    meta = {b"label_names": [c.encode() for c in get_spec("cifar10").classes]}
    (d / "batches.meta").write_bytes(_pickle(meta, style))
    return np.concatenate(xs), ys, tx, ty


@pytest.mark.parametrize("style", PICKLE_STYLES)
def test_read_cifar10(style: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y, tx, ty = _write_cifar10(tmp_path / "cifar-10-batches-py", style, rng)
    out = data.read_cifar10(get_spec("cifar10"), tmp_path)
    assert out["train_x"].dtype == torch.uint8 and out["train_x"].shape == (15, 3, 32, 32)
    assert np.array_equal(out["train_x"].numpy(), x.reshape(-1, 3, 32, 32))
    assert out["train_y"].tolist() == y and out["test_y"].tolist() == ty
    assert np.array_equal(out["test_x"].numpy(), tx.reshape(-1, 3, 32, 32))
    # The official layout: 1024 red, then green, then blue values, each row-major.
    assert out["train_x"][4, 1, 2, 3] == x[4, 1024 + 2 * 32 + 3]
    assert out["train_x"][7, 2, 31, 0] == x[7, 2048 + 31 * 32]


def test_cifar10_tar_gz_is_extracted_and_prepared(own_data_root: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    x, y, tx, ty = _write_cifar10(src / "cifar-10-batches-py", "py2_cpickle", rng)
    raw = own_data_root / "cifar10" / "raw"
    raw.mkdir(parents=True)
    with tarfile.open(raw / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")

    out = prepare("cifar10")
    assert out == own_data_root / "cifar10" / "data.safetensors" and out.exists()
    assert (raw / "cifar-10-batches-py" / "data_batch_5").exists()
    test = load_split("cifar10", "test")
    assert np.array_equal(test.images.numpy(), tx.reshape(-1, 3, 32, 32))
    assert test.labels.tolist() == ty
    train, val = load_split("cifar10", "train"), load_split("cifar10", "val")
    assert len(train) + len(val) == 15
    assert _split_rows(train) + _split_rows(val) == _rows(x.reshape(-1, 3, 32, 32), np.array(y))


def test_cifar_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DDBenchError, match="CIFAR-10 not found"):
        data.read_cifar10(get_spec("cifar10"), tmp_path)


@pytest.mark.parametrize("style", PICKLE_STYLES)
def test_read_cifar100_fine_labels(style: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    train, x, y = _cifar_batch(rng, 6, b"fine_labels", 100)
    test, tx, ty = _cifar_batch(rng, 3, b"fine_labels", 100)
    assert max(y) >= 20  # the fine and coarse labels differ
    (d / "train").write_bytes(_pickle(train, style))
    (d / "test").write_bytes(_pickle(test, style))
    out = data.read_cifar100(get_spec("cifar100"), tmp_path)
    assert out["train_y"].tolist() == y and out["test_y"].tolist() == ty
    assert np.array_equal(out["train_x"].numpy(), x.reshape(-1, 3, 32, 32))
    assert np.array_equal(out["test_x"].numpy(), tx.reshape(-1, 3, 32, 32))


def test_read_svhn(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    expected = {}
    for split, n in (("train", 7), ("test", 4)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        expected[split] = (x, y)
    out = data.read_svhn(get_spec("svhn"), tmp_path)
    for split, (x, y) in expected.items():
        imgs, labels = out[f"{split}_x"], out[f"{split}_y"]
        assert imgs.dtype == torch.uint8 and imgs.shape == (x.shape[3], 3, 32, 32)
        for i in range(x.shape[3]):
            hwc = x[:, :, :, i]  # one image, height x width x channel
            assert np.array_equal(imgs[i].permute(1, 2, 0).numpy(), hwc)
        assert labels[0] == 0
        assert labels.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]]


def test_svhn_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DDBenchError, match="SVHN not found"):
        data.read_svhn(get_spec("svhn"), tmp_path)


# ----------------------------------------------------------------------------- image folders


def test_image_folder_dataset(own_data_root: Path, tmp_path: Path) -> None:
    from PIL import Image

    colours = {"ant": (200, 30, 30), "bee": (20, 180, 40), "cat": (10, 20, 230)}
    counts = {"train": {"ant": 10, "bee": 10, "cat": 10}, "test": {"ant": 2, "bee": 3, "cat": 4}}
    root = tmp_path / "tiny"
    for split, per_class in counts.items():
        for c, n in per_class.items():
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (24, 20), colours[c]).save(d / f"{i}.png")
            (d / "notes.txt").write_text("not an image")
    name = "tiny_test"
    try:
        spec = register_image_folder(name, root, im_size=(16, 16))
        assert spec.classes == ("ant", "bee", "cat") and spec.shape == (3, 16, 16)
        assert get_spec(name) is spec
        prepare(name)
        assert data.prepared_path(name).parent == own_data_root / name
        splits = {s: load_split(name, s) for s in ("train", "val", "test")}
        assert {s: len(ds) for s, ds in splits.items()} == {"train": 27, "val": 3, "test": 9}
        assert torch.bincount(splits["test"].labels).tolist() == [2, 3, 4]
        assert torch.bincount(splits["val"].labels).tolist() == [1, 1, 1]
        for ds in splits.values():
            assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 16, 16)
            assert ds.classes == ("ant", "bee", "cat")
            for img, label in zip(ds.images, ds.labels.tolist()):
                want = torch.tensor(colours[spec.classes[label]], dtype=torch.uint8)
                assert torch.equal(img, want.view(3, 1, 1).expand(3, 16, 16))
    finally:
        data.CATALOGUE.pop(name, None)
        data._READERS.pop(name, None)


def test_image_folder_without_train_dir(tmp_path: Path) -> None:
    with pytest.raises(DDBenchError, match="no train/ directory"):
        register_image_folder("tiny_missing", tmp_path)
    assert "tiny_missing" not in data.CATALOGUE


# ----------------------------------------------------------------------------- restricted unpickling


class _RunsCommand:
    def __reduce__(self):
        return (os.system, ("true",))


class _MakesDir:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_unpickler_refuses_code(tmp_path: Path) -> None:
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_RunsCommand()]})
    with pytest.raises(DDBenchError, match=r"refusing to unpickle \w+\.system"):
        data.safe_unpickle(raw, encoding="bytes")

    marker = tmp_path / "code_ran"
    evil = pickle.dumps({b"data": _MakesDir(str(marker)), b"labels": [0]}, protocol=2)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / f).write_bytes(evil)
    with pytest.raises(DDBenchError, match=r"refusing to unpickle \w+\.mkdir"):
        data.read_cifar10(get_spec("cifar10"), tmp_path)
    assert not marker.exists()


def test_unpickler_still_reads_plain_values() -> None:
    obj = {b"a": [1, 2.5, None, True], b"b": (b"x", "y"), b"c": np.arange(6, dtype=np.int64)}
    back = data.safe_unpickle(pickle.dumps(obj, protocol=2), encoding="bytes")
    assert back[b"a"] == [1, 2.5, None, True] and back[b"b"] == (b"x", "y")
    assert np.array_equal(back[b"c"], obj[b"c"]) and back[b"c"].dtype == np.int64


# ----------------------------------------------------------------------------- IDX / MNIST


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_read_mnist_from_idx_files(gz: bool, tmp_path: Path) -> None:
    arrays = _write_mnist_idx(tmp_path, np.random.default_rng(4), gz=gz)
    out = data.read_mnist(get_spec("mnist"), tmp_path)
    assert not list(tmp_path.glob("*.whl"))  # the IDX files were used, no wheel fetched
    assert out["train_x"].dtype == torch.uint8 and out["train_x"].shape == (12, 1, 28, 28)
    assert np.array_equal(out["train_x"][:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(out["test_x"][:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert out["train_y"].dtype == torch.int64
    assert out["train_y"].tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert out["test_y"].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_prepare_mnist_from_idx_in_raw(own_data_root: Path) -> None:
    arrays = _write_mnist_idx(own_data_root / "mnist" / "raw", np.random.default_rng(5))
    prepare("mnist")
    test = load_split("mnist", "test")
    assert np.array_equal(test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    train, val = load_split("mnist", "train"), load_split("mnist", "val")
    assert len(train) + len(val) == 12


def test_missing_idx_file(tmp_path: Path) -> None:
    _write_mnist_idx(tmp_path, np.random.default_rng(6))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DDBenchError, match="missing IDX file t10k-labels-idx1-ubyte"):
        data.read_mnist(get_spec("mnist"), tmp_path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("plain_in_data", "is truncated: expected 9408 values, got 9308"),
        ("gz_of_truncated_data", "is truncated: expected 9408 values, got 9308"),
        ("not_idx", "not an unsigned-byte IDX file"),
        ("plain_in_header", "truncated"),
        ("gz_stream_cut", "truncated"),
    ],
)
def test_truncated_idx_file(case: str, message: str, tmp_path: Path) -> None:
    arrays = _write_mnist_idx(tmp_path, np.random.default_rng(7), gz=False)
    raw = _idx_bytes(arrays["train-images-idx3-ubyte"])
    (tmp_path / "train-images-idx3-ubyte").unlink()
    target = tmp_path / "train-images-idx3-ubyte"
    if case == "plain_in_data":
        target.write_bytes(raw[:-100])
    elif case == "gz_of_truncated_data":
        target = target.with_name(target.name + ".gz")
        target.write_bytes(gzip.compress(raw[:-100]))
    elif case == "not_idx":
        target.write_bytes(b"\x1f\x00" + raw[2:])
    elif case == "plain_in_header":
        target.write_bytes(raw[:10])
    elif case == "gz_stream_cut":
        target = target.with_name(target.name + ".gz")
        packed = gzip.compress(raw)
        target.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DDBenchError, match=message) as e:
        data.read_mnist(get_spec("mnist"), tmp_path)
    assert str(target) in str(e.value)
