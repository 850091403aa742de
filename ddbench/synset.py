"""The synthetic-set file: one ``.safetensors`` file, no pickle, that says how it must be evaluated.

Tensors: ``images`` (float32 ``[N,C,H,W]``), ``labels`` (int64 ``[N]`` hard, float ``[N,K]``
soft, or float ``[N,D]`` representation targets, see below), optionally ``lr`` (a learned
learning rate, ``[1]``) and ``weights`` (``[N]``).
The JSON metadata sits in the safetensors header under the key ``ddbench``.

A set in a ZCA-whitened space (``meta["space"]["zca"]``) also stores its whitening:
``zca_mean`` (``[1, D]``) and ``zca_transform`` (``[D, D]``, ``D = C*H*W``), whitening being
``(x.flatten(1) - zca_mean) @ zca_transform``. Evaluation maps the test images with exactly these
(:func:`ddbench.protocol.set_space_transform`); ``SyntheticSet.pixels()`` undoes it for viewing.
Sets imported without them (MTT ``--zca`` files) fall back to the dataset's cached fit
(:func:`ddbench.data.fit_zca`).

Extras: a set may carry named extra tensors (``SyntheticSet.extras``), stored as
``extra.<name>`` and listed in the header (``meta["extras"][name] = {"role", "dtype",
"shape"}``): e.g. INFER's compensators or HeLlO's label projector. They are validated (a listed
dtype, finite floats, the header's shape, each listed one present), covered by the checksum and
counted as a third byte category (``nbytes()["extras"]``). A set whose header names a ``view``
(a key of :data:`VIEWS`, added by :func:`register_view`) yields, as a Dataset, the images that
view makes from the stored tensors (``view_images()``; the labels describe those images): the
``compensated`` view adds INFER's compensators to the stored real images.

Soft labels may be stored top-k (``meta["label_storage"] = {"format": "topk", "k": k}``): in
place of ``labels``, ``label_values`` (the k largest of each row, ``[N,k]``, in the labels'
dtype, descending), ``label_indices`` (their classes, ``[N,k]``, uint8 up to 256 classes, int16
up to 32768) and ``label_fill`` (``[N]``, the mean of the row's other K - k values, kept
strictly below the k-th). ``load`` rebuilds the dense ``[N,K]`` labels: the kept values at their
classes, the fill everywhere else (see :func:`encode_topk`).

Distance-based representative labels (NRR-DD's DBR, :mod:`ddbench.dbr`;
``meta["label_storage"] = {"format": "dbr", ...}``) keep the hard ``labels`` (int64 ``[N]``) and
add ``label_distances`` (``[E, N, 2]``, float16 or float32, finite and >= 0): per stored epoch
and image, two cross entropies of the teacher's prediction on a replayed crop. The storage entry
names what replays the crops (``epochs``, ``seed``, ``scale``, ``flip``, ``cutmix``).

A set without class labels (KRR-ST's) carries representation targets in ``labels``: float
``[N,D]`` (``D`` > 0, finite), one target vector per image, marked by
``meta["label_kind"] = "representation"``; such a set has no classes and no per-class budget
(its ``ipc`` is the budget it was made for, ``N = ipc * classes of its dataset``). It is
evaluated by pre-training on the targets (:mod:`ddbench.transfer`), never by a class protocol.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import stat
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import ddbench
from ddbench.augment import ZCA
from ddbench.data import CATALOGUE, ZCA_EPS, fit_zca, get_spec, read_image_folder
from ddbench.errors import DDBenchError

SCHEMA_VERSION = 1
TOPK_KEYS = ("label_values", "label_indices", "label_fill")
DBR_KEYS = ("label_distances",)
ZCA_KEYS = ("zca_mean", "zca_transform")
_TENSOR_KEYS = ("images", "labels", "lr", "weights", *TOPK_KEYS, *DBR_KEYS, *ZCA_KEYS)
EXTRA_PREFIX = "extra."
EXTRA_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.uint8)
}  # fmt: skip
_EXTRA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
MAX_HEADER_BYTES = 100 * 1024 * 1024
# The largest pixel magnitude a set may hold: normalised and ZCA-whitened images stay orders of
# magnitude below it; a larger value is a broken or hostile file, whose training would diverge.
MAX_PIXEL = 1e4
LABEL_STORAGES = ("dense", "topk", "dbr")
REPRESENTATION = "representation"  # meta["label_kind"] of a set of representation targets
LABEL_KINDS = ("hard", "soft", "dbr", REPRESENTATION)
log = logging.getLogger("ddbench")


@dataclass
class SyntheticSet(Dataset):
    """A distilled (or selected) set: a ``torch.utils.data.Dataset`` of ``(image, label)``.

    ``meta`` says which dataset and image space the images live in (``space``: normalised or
    raw [0,1], ZCA or not), how they were made (``method``, ``seed``, ``cost``) and how they
    must be evaluated (``protocol``). ``zca``: the :class:`ddbench.augment.ZCA` of a ZCA space
    (stored in the file); :meth:`pixels` gives the images in [0,1] for viewing.
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    lr: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    zca: Any = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    distances: torch.Tensor | None = None  # DBR labels' [E, N, 2] (label_storage format dbr)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view_images()[i], self.labels[i]

    @property
    def view(self) -> str | None:
        """The registered view (:data:`VIEWS`) the header names, or None (the stored images)."""
        return self.meta.get("view")

    def view_images(self) -> torch.Tensor:
        """The images the set yields as a Dataset, one per label: the stored ``images``, or
        what the set's :attr:`view` makes of its stored tensors."""
        if self.view is None:
            return self.images
        key = (self.view, id(self.images), self.images._version,
               *((k, id(v), v._version) for k, v in sorted(self.extras.items())))  # fmt: skip
        cached = self.__dict__.get("_view_cache")
        if cached is None or cached[0] != key:
            view = _view(self.view, "set")
            cached = (key, view(self.images, self.extras, self.meta, "set"))
            self.__dict__["_view_cache"] = cached
        return cached[1]

    @property
    def soft_labels(self) -> bool:
        return self.labels.dim() == 2

    @property
    def representation(self) -> bool:
        """Whether ``labels`` are representation targets ``[N,D]``, not class labels."""
        return self.meta.get("label_kind") == REPRESENTATION

    @property
    def hard_labels(self) -> torch.Tensor:
        """Class index per image (argmax for soft labels)."""
        if self.representation:
            raise DDBenchError("this set carries representation targets, not class labels")
        return self.labels.argmax(1) if self.soft_labels else self.labels

    @property
    def ipc(self) -> int:
        return int(self.meta.get("ipc", 0))

    @property
    def label_storage(self) -> dict[str, Any]:
        """How the labels are stored: ``{"format": "dense"}`` or ``{"format": "topk", "k": k}``."""
        return dict(self.meta.get("label_storage") or {"format": "dense"})

    def label_tensors(self) -> dict[str, torch.Tensor]:
        """The labels as the file stores them (``labels``, or the top-k tensors)."""
        storage = self.label_storage
        if storage["format"] == "dense":
            return {"labels": self.labels}
        if storage["format"] == "topk":
            return encode_topk(self.labels, int(storage["k"]))
        if storage["format"] == "dbr":
            if self.distances is None:
                raise DDBenchError("a set with DBR label storage needs its label distances")
            return {"labels": self.labels, "label_distances": self.distances}
        raise DDBenchError(
            f"unknown label storage {storage['format']!r}; use {', '.join(LABEL_STORAGES)}"
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"images": self.images.float(), **self.label_tensors()}
        if self.lr is not None:
            out["lr"] = self.lr.detach().float().reshape(1)
        if self.weights is not None:
            out["weights"] = self.weights.detach().float()
        if self.zca is not None:
            out["zca_mean"] = self.zca.mean.float()
            out["zca_transform"] = self.zca.transform.float()
        out.update({EXTRA_PREFIX + k: v for k, v in self.extras.items()})
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def unwhitened(self) -> torch.Tensor:
        """The images with the set's ZCA undone (the dataset's normalised space); the images
        themselves for a set without ZCA. A ZCA set imported without its transform uses the
        dataset's cached fit (:func:`ddbench.data.fit_zca`)."""
        space = self.meta.get("space") or {}
        if not space.get("zca"):
            return self.images.float()
        zca = self.zca
        if zca is None:
            zca = fit_zca(self.meta.get("dataset"), float(space.get("zca_eps", ZCA_EPS)))
        return zca.inverse(self.images.float())

    def pixels(self) -> torch.Tensor:
        """The images in [0,1] pixel space for viewing: ZCA undone, then the normalisation
        (clamped; a set optimised in ZCA space may leave [0,1] once un-whitened)."""
        space = self.meta.get("space") or {}
        x = self.unwhitened()
        if space.get("normalized", True):
            mean = torch.tensor(space.get("mean", [0.0])).view(1, -1, 1, 1)
            std = torch.tensor(space.get("std", [1.0])).view(1, -1, 1, 1)
            x = x * std + mean
        return x.clamp(0, 1)

    def nbytes(self) -> dict[str, int]:
        """Bytes of images, of labels and of extras as stored (soft labels count toward the set;
        top-k labels count their values, indices and fills; DBR labels their classes and
        distances; ``extras``: every extra tensor)."""
        t = self.tensors()
        return {
            "images": t["images"].numel() * t["images"].element_size(),
            "labels": sum(
                v.numel() * v.element_size()
                for k, v in t.items()
                if k in ("labels", *TOPK_KEYS, *DBR_KEYS)
            ),
            "extras": sum(
                v.numel() * v.element_size() for k, v in t.items() if k.startswith(EXTRA_PREFIX)
            ),
        }


def _index_dtype(num_classes: int) -> torch.dtype:
    if num_classes <= 256:
        return torch.uint8
    return torch.int16 if num_classes <= 32768 else torch.int32


def encode_topk(labels: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Soft labels ``[N,K]`` (logits) -> ``label_values`` ``[N,k]`` (the k largest per row,
    descending; ties go to the lower class), ``label_indices`` ``[N,k]`` (their classes) and
    ``label_fill`` ``[N]``: the mean of the other K - k values, lowered where needed to just
    below the k-th value so that the kept classes stay the top k.

    The fill keeps the dropped classes' share of the distribution at every temperature: the
    missing logits as their mean, not as -inf (which drops that mass and, at k = 1, turns the
    labels into one-hot ones). Encoding :func:`decode_topk`'s output gives back the same
    tensors, so a loaded set saves to the same bytes.
    """
    if labels.dim() != 2 or not labels.is_floating_point():
        raise DDBenchError(
            f"top-k label storage needs soft labels [N,K], got {tuple(labels.shape)}"
        )
    num_classes = labels.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < num_classes:
        raise DDBenchError(
            f"top-k label storage keeps 1 to {num_classes - 1} of the {num_classes} classes, "
            f"not {k!r} (dense storage keeps all)"
        )
    x = labels.detach().cpu()
    values, order = torch.sort(x, dim=1, descending=True, stable=True)
    kept = values[:, :k]
    fill = values[:, k:].double().mean(1).to(x.dtype)
    fill = torch.minimum(fill, torch.nextafter(kept[:, -1], torch.full_like(fill, -math.inf)))
    return {
        "label_values": kept.contiguous(),
        "label_indices": order[:, :k].to(_index_dtype(num_classes)).contiguous(),
        "label_fill": fill.contiguous(),
    }


def decode_topk(
    values: torch.Tensor,
    indices: torch.Tensor,
    fill: torch.Tensor,
    num_classes: int,
    where: str = "",
) -> torch.Tensor:
    """Dense ``[N,K]`` labels (``values``' dtype) from top-k tensors: ``values`` at ``indices``,
    ``fill`` elsewhere. Checks that the tensors are a valid top-k encoding."""
    where = f"{where}: " if where else ""
    n = len(values)
    if values.dim() != 2 or indices.shape != values.shape or fill.shape != (n,):
        raise DDBenchError(
            f"{where}top-k labels need values and indices [N,k] and fill [N], got "
            f"{tuple(values.shape)}, {tuple(indices.shape)}, {tuple(fill.shape)}"
        )
    k = values.shape[1]
    if not values.is_floating_point() or fill.dtype != values.dtype:
        raise DDBenchError(f"{where}top-k label values and fill must share a float dtype")
    if indices.is_floating_point() or indices.dtype == torch.bool:
        raise DDBenchError(f"{where}top-k label indices must be integers, got {indices.dtype}")
    if not 1 <= k < num_classes:
        raise DDBenchError(f"{where}top-k labels keep {k} of {num_classes} classes")
    if not (torch.isfinite(values).all() and torch.isfinite(fill).all()):
        raise DDBenchError(f"{where}top-k labels contain NaN or Inf")
    idx = indices.long()
    if n and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise DDBenchError(f"{where}top-k label indices outside the {num_classes} classes")
    if n and k > 1 and not (idx.sort(1).values.diff(dim=1) > 0).all():
        raise DDBenchError(f"{where}top-k label indices repeat a class within a row")
    if n and not (fill < values[:, -1]).all():
        raise DDBenchError(f"{where}top-k label fill is not below the kept values")
    out = fill[:, None].expand(n, num_classes).clone()
    return out.scatter_(1, idx, values)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A checksum over names, dtypes, shapes and bytes of the tensors (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(synset: SyntheticSet, path: str | Path) -> Path:
    """Validate and write ``synset`` to ``path`` atomically; returns the path. The checks are
    :func:`load`'s (an empty set, for one, is never written); a set whose metadata gives no
    ipc (or 0) records its largest class's count."""
    from safetensors.torch import save_file

    _check_meta(synset.meta, str(path))
    meta = dict(synset.meta)
    if synset.extras or meta.get("extras"):
        meta["extras"] = _extras_header(synset.extras, meta.get("extras"), str(path))
    _validate_set(synset.images, synset.labels, synset.extras, meta, str(path))
    _check_extras(synset.lr, synset.weights, len(synset.labels), str(path))
    _check_zca(synset.images, synset.zca, meta, str(path))
    if synset.label_storage["format"] == "dbr":
        check_distances(synset.distances, synset.labels, str(path))
    tensors = synset.tensors()
    if not meta.get("ipc") and not meta.get("full_dataset") and not synset.representation:
        meta["ipc"] = _largest_class(synset.labels)
    meta.setdefault("schema_version", SCHEMA_VERSION)
    meta.setdefault("ddbench_version", ddbench.__version__)
    meta["num_images"] = len(synset)
    if not synset.representation:
        meta["label_kind"] = (
            "dbr"
            if synset.label_storage["format"] == "dbr"
            else "soft"
            if synset.soft_labels
            else "hard"
        )
    meta["sha256"] = tensors_sha256(tensors)
    header = {"ddbench": json.dumps(meta, sort_keys=True, default=str)}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=header)
        except OSError:
            raise
        except Exception as e:  # safetensors' own error type: an OSError when it carries one
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from e

    atomic_write(Path(path), write)
    synset.meta = meta  # only once the file is in place
    return Path(path)


def _sniff(path: Path, raw: bytes) -> str | None:
    """Name what a non-safetensors file looks like, for the error message."""
    if raw[:2] == b"PK":
        return "a zip archive (a torch.save file?)"
    if raw[:1] == b"\x80":
        return "a Python pickle"
    if raw[:6] == b"\x93NUMPY":
        return "a NumPy .npy file"
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    return None


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_file(path: str | Path) -> Path:
    """``path`` if it is a regular file this process may read; else a :class:`DDBenchError`
    naming what it is (missing, a broken link, a symlink loop, a directory, a FIFO or device,
    unreadable). Checked before opening: opening a FIFO would block until a writer comes."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DDBenchError(f"{path}: symlink loop (the link resolves back to itself)") from e
        if e.errno == errno.ENOENT and os.path.islink(path):
            raise DDBenchError(
                f"{path}: broken symlink (its target {os.readlink(path)} does not exist)"
            ) from e
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DDBenchError(f"{path}: no such file") from e
        raise DDBenchError(f"{path}: cannot access it ({e.strerror})") from e
    if stat.S_ISDIR(st.st_mode):
        raise DDBenchError(f"{path} is a directory, not a file")
    for test, kind in _FILE_KINDS:
        if test(st.st_mode):
            raise DDBenchError(f"{path} is {kind}, not a regular file")
    if not os.access(path, os.R_OK):
        raise DDBenchError(f"{path}: permission denied (the file is not readable)")
    return path


def _open(path: Path):
    """``open(path, "rb")`` after :func:`check_file`, its failures as one clear error."""
    check_file(path)
    try:
        return open(path, "rb")
    except OSError as e:
        why = "permission denied" if e.errno == errno.EACCES else e.strerror
        raise DDBenchError(f"{path}: cannot read it ({why})") from e


def parse_json(text: str | bytes, where: str, what: str = "JSON") -> Any:
    """``json.loads(text)``; invalid or too deeply nested JSON is a :class:`DDBenchError`."""
    try:
        return json.loads(text)
    except RecursionError as e:
        raise DDBenchError(f"{where}: the {what} is nested too deeply to read") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise DDBenchError(f"{where}: the {what} is not valid JSON ({e})") from e


def read_header(path: str | Path) -> dict[str, Any]:
    """The ddbench metadata of a set file, checking that it is a complete safetensors file
    (see :func:`check_file` for what is refused before the file is opened)."""
    path = Path(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise DDBenchError(
                f"{path} is empty or truncated ({size} bytes): not a safetensors file"
            )
        # a safetensors header is JSON: its length's first byte may be 0x80 (a length of 128
        # mod 256) or "PK" without the file being a pickle or a zip
        json_next = f.read(1) == b"{"
        f.seek(8)
        kind = None if json_next else _sniff(path, head)
        if kind:
            raise DDBenchError(
                f"{path} is {kind}, not a safetensors file; ddbench never unpickles set files. "
                "Convert published formats with `ddbench import`"
            )
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise DDBenchError(
                f"{path} is not a safetensors file, or it is truncated (bad header length)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except RecursionError as e:
        raise DDBenchError(f"{path}: the safetensors header is nested too deeply to read") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DDBenchError(f"{path} is not a safetensors file (unreadable header)") from e
    try:
        entries = [v for k, v in header.items() if k != "__metadata__"]
        end = max((int(v["data_offsets"][1]) for v in entries), default=0)
        meta = header.get("__metadata__", {}) or {}
        if not isinstance(meta, dict):
            raise TypeError("__metadata__ is not an object")
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
        raise DDBenchError(f"{path} is not a safetensors file (malformed header)") from e
    if 8 + n + end > size:
        raise DDBenchError(f"{path} is truncated: {size} bytes, the header promises {8 + n + end}")
    if "ddbench" not in meta:
        raise DDBenchError(
            f"{path} is a safetensors file without ddbench metadata (not a synthetic set)"
        )
    if not isinstance(meta["ddbench"], str):
        raise DDBenchError(f"{path}: the ddbench metadata is not a JSON string")
    out = parse_json(meta["ddbench"], str(path), "ddbench metadata")
    if not isinstance(out, dict):
        raise DDBenchError(
            f"{path}: the ddbench metadata is a JSON {_json_kind(out)}, not an object"
        )
    return out


def _json_kind(value: Any) -> str:
    kinds = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"))
    kinds += ((list, "list"), (dict, "object"), (type(None), "null"))
    return next((name for t, name in kinds if isinstance(value, t)), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta(meta: Any, where: str) -> None:
    """The types of the metadata fields that loading and evaluating a set read."""
    if not isinstance(meta, dict):
        raise DDBenchError(f"{where}: the metadata is a {_json_kind(meta)}, not an object")

    def bad(key: str, want: str) -> DDBenchError:
        return DDBenchError(f"{where}: metadata {key!r} must be {want}, got {meta[key]!r}")

    ipc = meta.get("ipc")
    if ipc is not None and not (_is_int(ipc) and ipc >= 0):
        raise bad("ipc", "a positive integer (images per class)")
    for key in ("dataset", "protocol", "sha256"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(key, "a string")
    if meta.get("num_classes") is not None and not (
        _is_int(meta["num_classes"]) and meta["num_classes"] >= 1
    ):
        raise bad("num_classes", "a positive integer")
    shape = meta.get("image_shape")
    if shape is not None and not (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and all(_is_int(v) and v > 0 for v in shape)
    ):
        raise bad("image_shape", "[C, H, W] (three positive integers)")
    classes = meta.get("classes")
    if classes is not None and not (
        isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)
    ):
        raise bad("classes", "a list of class names")
    for key in ("method", "space", "relabel", "label_storage", "extras"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(key, "an object")
    view = meta.get("view")
    if view is not None and (not isinstance(view, str) or view not in VIEWS):
        raise DDBenchError(
            f"{where}: metadata 'view' is {view!r}, not a known view ({', '.join(sorted(VIEWS))})"
        )
    for name, entry in (meta.get("extras") or {}).items():
        if not (isinstance(entry, dict) and isinstance(entry.get("role"), str)):
            raise DDBenchError(
                f"{where}: metadata extras.{name} must be an object with a 'role' string, "
                f"got {entry!r:.80}"
            )
    space = meta.get("space") or {}
    for key in ("mean", "std"):
        v = space.get(key)
        if v is not None and not (
            isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v)
        ):
            raise DDBenchError(
                f"{where}: metadata space.{key} must be a list of numbers, got {v!r}"
            )
    if space.get("zca_eps") is not None and not isinstance(space["zca_eps"], (int, float)):
        raise DDBenchError(f"{where}: metadata space.zca_eps must be a number")
    name = (meta.get("method") or {}).get("name")
    if name is not None and not isinstance(name, str):
        raise DDBenchError(f"{where}: metadata method.name must be a string, got {name!r}")
    storage = meta.get("label_storage") or {"format": "dense"}
    if storage.get("format") not in LABEL_STORAGES:
        raise DDBenchError(
            f"{where}: unknown label storage {storage.get('format')!r}; "
            f"known: {', '.join(LABEL_STORAGES)}"
        )
    if storage["format"] == "topk" and not _is_int(storage.get("k")):
        raise DDBenchError(f"{where}: top-k label storage needs an integer k, got {storage!r}")
    if storage["format"] == "dbr":
        ok = (
            _is_int(storage.get("epochs"))
            and storage["epochs"] >= 1
            and _is_int(storage.get("seed"))
            and isinstance(storage.get("scale"), (list, tuple))
            and len(storage["scale"]) == 2
            and all(isinstance(v, (int, float)) for v in storage["scale"])
            and isinstance(storage.get("flip"), bool)
            and isinstance(storage.get("cutmix"), (int, float))
            and storage["cutmix"] >= 0
        )
        if not ok:
            raise DDBenchError(
                f"{where}: DBR label storage needs epochs >= 1, an integer seed, a [low, high] "
                f"scale, a boolean flip and cutmix >= 0, got {storage!r}"
            )

    kind = meta.get("label_kind")
    if kind is not None and kind not in LABEL_KINDS:
        raise bad("label_kind", f"one of {', '.join(LABEL_KINDS)}")
    if kind == REPRESENTATION and storage["format"] != "dense":
        raise DDBenchError(f"{where}: representation targets are stored dense, not {storage!r}")


def check_distances(distances: Any, labels: torch.Tensor, where: str) -> None:
    """DBR label distances: a float tensor ``[E, N, 2]`` (N = the number of hard ``labels``),
    finite and >= 0 (cross entropies), beside hard labels."""
    if labels.dim() != 1:
        raise DDBenchError(f"{where}: DBR labels keep hard labels [N], got {tuple(labels.shape)}")
    if not isinstance(distances, torch.Tensor):
        raise DDBenchError(f"{where}: DBR label storage without its label distances")
    n = len(labels)
    if distances.dim() != 3 or distances.shape[1:] != (n, 2) or not distances.is_floating_point():
        raise DDBenchError(
            f"{where}: DBR label distances must be floats [E, N, 2] = [E, {n}, 2], got "
            f"{tuple(distances.shape)} {distances.dtype}"
        )
    if not torch.isfinite(distances).all() or bool((distances < 0).any()):
        raise DDBenchError(f"{where}: DBR label distances must be finite and >= 0")


def _check_extras(
    lr: torch.Tensor | None, weights: torch.Tensor | None, n: int, where: str
) -> None:
    """A learned lr is one positive finite number; weights are ``[N]``, finite, >= 0."""
    if lr is not None:
        if not isinstance(lr, torch.Tensor) or lr.numel() != 1 or not lr.is_floating_point():
            what = f"shape {tuple(lr.shape)} {lr.dtype}" if isinstance(lr, torch.Tensor) else lr
            raise DDBenchError(f"{where}: the learned lr must be one float number, got {what}")
        value = float(lr.reshape(-1)[0])
        if not (math.isfinite(value) and value > 0):
            raise DDBenchError(f"{where}: the learned lr must be positive and finite, got {value}")
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (n,):
            what = tuple(weights.shape) if isinstance(weights, torch.Tensor) else weights
            raise DDBenchError(f"{where}: weights must be [N] = [{n}] (one per image), got {what}")
        if not weights.is_floating_point():
            raise DDBenchError(f"{where}: weights must be floats, got {weights.dtype}")
        if not torch.isfinite(weights).all():
            raise DDBenchError(f"{where}: NaN/inf weights")
        if n and (bool((weights < 0).any()) or not bool((weights > 0).any())):
            raise DDBenchError(f"{where}: weights must be >= 0 and not all zero")


def _extras_header(
    extras: dict[str, torch.Tensor], listed: dict | None, where: str
) -> dict[str, dict[str, Any]]:
    """The header's ``extras`` entry of ``extras`` (each listed with its role in ``listed``):
    role, dtype and shape of each; the tensors are checked (:func:`_check_extra_tensors`)."""
    listed = dict(listed or {})
    header = {
        name: {**dict(listed.get(name) or {}), "dtype": str(t.dtype).removeprefix("torch."),
               "shape": list(t.shape)}
        for name, t in extras.items() if isinstance(t, torch.Tensor)
    }  # fmt: skip
    header.update({k: v for k, v in listed.items() if k not in header})
    _check_extra_tensors(extras, header, where)
    return header


def _check_extra_tensors(extras: dict[str, Any], listed: dict, where: str) -> None:
    """Each extra tensor listed in the header (``listed``: name -> role, dtype, shape) and each
    listed one present, with a valid name, a known dtype, the listed dtype and shape, and finite
    values."""
    missing = sorted(set(listed) - set(extras))
    if missing:
        raise DDBenchError(f"{where}: the header lists extra tensor(s) {missing} the set lacks")
    unlisted = sorted(set(extras) - set(listed))
    if unlisted:
        raise DDBenchError(
            f"{where}: extra tensor(s) {unlisted} have no entry (role) in meta['extras']"
        )
    for name, t in extras.items():
        if not _EXTRA_NAME.fullmatch(name):
            raise DDBenchError(f"{where}: bad extra tensor name {name!r} (letters, digits, _.-)")
        entry = listed[name]
        if not isinstance(entry, dict) or not isinstance(entry.get("role"), str):
            raise DDBenchError(f"{where}: extra tensor {name!r} has no role in meta['extras']")
        if not isinstance(t, torch.Tensor):
            raise DDBenchError(f"{where}: extra {name!r} is a {type(t).__name__}, not a tensor")
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in EXTRA_DTYPES:
            raise DDBenchError(
                f"{where}: extra tensor {name!r} has dtype {dtype}; allowed: "
                f"{', '.join(EXTRA_DTYPES)}"
            )
        if entry.get("dtype", dtype) != dtype or entry.get("shape", list(t.shape)) != list(t.shape):
            raise DDBenchError(
                f"{where}: extra tensor {name!r} is {dtype} {list(t.shape)}, the header says "
                f"{entry.get('dtype')} {entry.get('shape')}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise DDBenchError(f"{where}: extra tensor {name!r} contains NaN or Inf")


def _validate_set(
    images: torch.Tensor, labels: torch.Tensor, extras: dict, meta: dict, where: str
) -> None:
    """:func:`_validate_tensors` on the images the labels describe: the stored images, or the
    view's (whose own checks cover the shapes of the stored tensors and the ipc budget)."""
    if "view" not in meta or meta["view"] is None:
        _validate_tensors(images, labels, meta, where)
        return
    shown = _view(meta["view"], where)(images, extras, meta, where)
    _validate_tensors(shown, labels, meta, where, budget=False)


def load(path: str | Path, *, verify: bool = True, require_checksum: bool = False) -> SyntheticSet:
    """Read a set file into a :class:`SyntheticSet` (a ``torch.utils.data.Dataset``).

    Fails with a :class:`DDBenchError` naming the problem on a file that is not a readable
    regular file (:func:`check_file`), a truncated or non-safetensors file, malformed metadata,
    an empty set, NaN/Inf or out-of-range pixels, a wrong image shape for its dataset, labels
    outside its classes, more images per class than its ipc, a learned lr or weights of the
    wrong shape or NaN/inf, DBR label distances of the wrong shape or sign
    (:func:`check_distances`), or a checksum mismatch. A file without a checksum loads with a
    warning, or is refused with ``require_checksum=True``. A set whose metadata gives no ipc
    (or 0) takes its largest class's count as its ipc.
    """
    from safetensors.torch import load_file

    meta = read_header(path)
    _check_meta(meta, str(path))
    try:
        t = load_file(str(path))
    except Exception as e:
        raise DDBenchError(f"{path} could not be read as safetensors: {e}") from e
    storage = (meta.get("label_storage") or {"format": "dense"})["format"]
    label_keys = {"topk": TOPK_KEYS, "dbr": ("labels", *DBR_KEYS)}.get(storage, ("labels",))
    missing = [k for k in ("images", *label_keys) if k not in t]
    if missing:
        raise DDBenchError(f"{path} lacks the tensor(s) {missing}")
    extras = {k[len(EXTRA_PREFIX) :]: v for k, v in t.items() if k.startswith(EXTRA_PREFIX)}
    unknown = sorted(
        set(t) - {"images", *label_keys, "lr", "weights", *ZCA_KEYS}
        - {EXTRA_PREFIX + k for k in extras}
    )  # fmt: skip
    if unknown:
        raise DDBenchError(f"{path} holds unexpected tensors {unknown}")
    _check_extra_tensors(extras, meta.get("extras") or {}, str(path))
    if not meta.get("sha256"):
        if require_checksum:
            raise DDBenchError(f"{path} has no checksum (sha256); a checksummed set is required")
        log.warning(
            "WARNING: %s has no checksum (sha256): its tensors cannot be verified. Every set "
            "ddbench writes has one; re-save it with ddbench.save to add one",
            path,
        )
    elif verify and tensors_sha256(t) != meta["sha256"]:
        raise DDBenchError(f"{path}: checksum mismatch, the tensors were changed after saving")
    labels = t.get("labels")
    if storage == "topk":
        spec = CATALOGUE.get(meta.get("dataset"))
        num_classes = int(meta.get("num_classes") or (spec.num_classes if spec else 0))
        labels = decode_topk(*(t[k] for k in TOPK_KEYS), num_classes, str(path))
    _validate_set(t["images"], labels, extras, meta, str(path))
    _check_extras(t.get("lr"), t.get("weights"), len(labels), str(path))
    if (
        not meta.get("ipc")
        and not meta.get("full_dataset")
        and meta.get("label_kind") != REPRESENTATION
    ):
        meta["ipc"] = _largest_class(labels)
        log.warning("%s gives no ipc; counting it as ipc %d (its largest class)", path, meta["ipc"])
    zca = _load_zca(t, meta, str(path))
    _check_zca(t["images"], zca, meta, str(path))
    distances = t.get("label_distances")
    if storage == "dbr":
        check_distances(distances, labels, str(path))
    return SyntheticSet(
        t["images"], labels, meta, t.get("lr"), t.get("weights"), zca, extras, distances
    )


def _largest_class(labels: torch.Tensor) -> int:
    hard = labels.argmax(1) if labels.dim() == 2 else labels.long()
    return int(torch.bincount(hard).max()) if len(hard) else 0


def _load_zca(t: dict[str, torch.Tensor], meta: dict, where: str) -> Any:
    """The stored ZCA of a set file (None if it stores none); its inverse is computed here."""
    present = [k for k in ZCA_KEYS if k in t]
    if not present:
        return None
    if len(present) != len(ZCA_KEYS):
        raise DDBenchError(f"{where}: stores {present} but not all of {list(ZCA_KEYS)}")
    mean, transform = t["zca_mean"].float(), t["zca_transform"].float()
    d = mean.numel()
    if mean.shape != (1, d) or transform.shape != (d, d):
        raise DDBenchError(
            f"{where}: ZCA tensors of shapes {tuple(mean.shape)} and {tuple(transform.shape)}, "
            f"expected [1, D] and [D, D]"
        )
    if not (torch.isfinite(mean).all() and torch.isfinite(transform).all()):
        raise DDBenchError(f"{where}: the stored ZCA contains NaN or Inf")
    try:
        inverse = torch.linalg.inv(transform.double()).float()
    except RuntimeError as e:
        raise DDBenchError(f"{where}: the stored ZCA transform is not invertible") from e
    eps = float((meta.get("space") or {}).get("zca_eps", 0.1))
    return ZCA(mean, transform, inverse, eps)


def _check_zca(images: torch.Tensor, zca: Any, meta: dict, where: str) -> None:
    """A stored ZCA needs a ZCA space in the metadata and as many features as a set image."""
    if zca is None:
        return
    if not (meta.get("space") or {}).get("zca"):
        raise DDBenchError(
            f"{where}: carries a ZCA transform but its metadata says the images are not in ZCA "
            "space (meta['space']['zca'] is false)"
        )
    d = images[0].numel() if images.dim() == 4 and len(images) else zca.num_features
    if zca.num_features != d:
        raise DDBenchError(
            f"{where}: the ZCA was fitted on {zca.num_features} features per image, the images "
            f"have {d}"
        )


def _validate_tensors(
    images: torch.Tensor, labels: torch.Tensor, meta: dict, where: str, budget: bool = True
) -> None:
    """The checks shared by save and load: finiteness, shapes, label range, per-class budget
    (``budget``: a view checks its own, on the stored tensors)."""
    if images.dim() != 4:
        raise DDBenchError(f"{where}: images must be [N,C,H,W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise DDBenchError(f"{where}: images must be float, got {images.dtype}")
    n = len(images)
    if n == 0:
        raise DDBenchError(f"{where}: the set is empty (0 images)")
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise DDBenchError(f"{where}: {bad} image(s) contain NaN or Inf pixels")
    peak = float(images.abs().max())
    if peak > MAX_PIXEL:
        raise DDBenchError(
            f"{where}: huge pixel values (|x| up to {peak:.3g}, the limit is {MAX_PIXEL:g}): "
            "not images in a normalised or whitened space"
        )
    ds = meta.get("dataset")
    spec = CATALOGUE.get(ds)
    num_classes = int(meta.get("num_classes") or (spec.num_classes if spec else 0))
    if spec is not None and tuple(images.shape[1:]) != spec.shape:
        raise DDBenchError(
            f"{where}: images have shape {tuple(images.shape[1:])} but {ds} images are {spec.shape}"
        )
    if "image_shape" in meta and tuple(images.shape[1:]) != tuple(meta["image_shape"]):
        raise DDBenchError(
            f"{where}: images have shape {tuple(images.shape[1:])}, metadata says {meta['image_shape']}"
        )
    if meta.get("label_kind") == REPRESENTATION:
        _check_representation(labels, n, where)
        return
    if labels.dim() == 1:
        if labels.dtype not in (torch.int64, torch.int32):
            raise DDBenchError(f"{where}: hard labels must be integers, got {labels.dtype}")
        hard = labels.long()
    elif labels.dim() == 2:
        if not labels.is_floating_point():
            raise DDBenchError(f"{where}: soft labels must be floats, got {labels.dtype}")
        if not torch.isfinite(labels).all():
            raise DDBenchError(f"{where}: soft labels contain NaN or Inf")
        if num_classes and labels.shape[1] != num_classes:
            raise DDBenchError(
                f"{where}: soft labels have {labels.shape[1]} columns for {num_classes} classes"
            )
        hard = labels.argmax(1)
    else:
        raise DDBenchError(f"{where}: labels must be [N] or [N,K], got shape {tuple(labels.shape)}")
    if len(labels) != n:
        raise DDBenchError(f"{where}: {n} images but {len(labels)} labels")
    low, high = int(hard.min()), int(hard.max())
    if low < 0 or (num_classes and high >= num_classes):
        span = f"the {num_classes} classes" if num_classes else "the class indices (>= 0)"
        raise DDBenchError(f"{where}: labels outside {span} (min {low}, max {high})")
    ipc = meta.get("ipc")
    if budget and ipc and not meta.get("full_dataset"):
        most = int(torch.bincount(hard).max())
        if most > int(ipc):
            raise DDBenchError(
                f"{where}: a class has {most} images, more than the set's ipc of {ipc}"
            )


def _check_representation(targets: torch.Tensor, n: int, where: str) -> None:
    """Representation targets: float ``[N,D]`` with ``D`` > 0, one row per image, finite."""
    if targets.dim() != 2 or targets.shape[1] == 0 or not targets.is_floating_point():
        raise DDBenchError(
            f"{where}: representation targets must be floats [N, D] with D > 0, got shape "
            f"{tuple(targets.shape)} {targets.dtype}"
        )
    if len(targets) != n:
        raise DDBenchError(f"{where}: {n} images but {len(targets)} representation targets")
    if not torch.isfinite(targets).all():
        bad = int((~torch.isfinite(targets)).any(1).sum())
        raise DDBenchError(f"{where}: {bad} representation target(s) contain NaN or Inf")


# ----------------------------------------------------------------------------- views

# name -> view(images, extras, meta, where): the images a set of that view yields, one per label
VIEWS: dict[str, Callable[[torch.Tensor, dict, dict, str], torch.Tensor]] = {}


def register_view(name: str) -> Callable:
    """Register a view under ``name`` (the value of a set's ``meta["view"]``): a function
    ``(images, extras, meta, where) -> images [M, C, H, W]`` that checks the stored tensors (a
    :class:`DDBenchError` naming ``where`` on bad ones, the ipc budget included) and returns the
    images the set yields, one per label."""

    def add(fn: Callable) -> Callable:
        if name in VIEWS:
            raise DDBenchError(f"view {name!r} is already registered")
        VIEWS[name] = fn
        return fn

    return add


def _view(name: str, where: str) -> Callable:
    if name not in VIEWS:
        raise DDBenchError(f"{where}: unknown view {name!r} ({', '.join(sorted(VIEWS))})")
    return VIEWS[name]


@register_view("compensated")
def compensated_view(images: torch.Tensor, extras: dict, meta: dict, where: str) -> torch.Tensor:
    """INFER's composition (Zhang et al., ICLR 2025): the stored ``images`` are ``B`` batches of
    one real image per class (row ``b K + c``: class ``c`` in batch ``b``), the extra
    ``compensators`` ``[U, C, H, W]`` (``U`` a multiple of ``B``) shared additive perturbations,
    compensator ``j`` belonging to batch ``j mod B``. Yields the ``B K`` real images, then for
    each compensator its batch plus the compensator, clipped to the valid pixel range
    (``(B + U) K`` images, in that order). Budget: ``B <= ipc`` real images per class and
    ``B K + U <= ipc K`` stored image-sized tensors."""
    k = int(meta.get("num_classes") or 0)
    u = extras.get("compensators")
    if u is None or images.dim() != 4 or k < 1 or len(images) % k:
        raise DDBenchError(
            f"{where}: the compensated view needs images [B*K, C, H, W] (K = num_classes) and an "
            "extra tensor 'compensators'"
        )
    b = len(images) // k
    if u.dim() != 4 or tuple(u.shape[1:]) != tuple(images.shape[1:]) or not u.is_floating_point():
        raise DDBenchError(
            f"{where}: compensators must be float [U, {', '.join(map(str, images.shape[1:]))}], "
            f"got {u.dtype} {list(u.shape)}"
        )
    if b == 0 or len(u) % b:
        raise DDBenchError(f"{where}: {len(u)} compensators for {b} batches (not a multiple)")
    ipc = int(meta.get("ipc") or 0)
    if ipc and (b > ipc or b * k + len(u) > ipc * k):
        raise DDBenchError(
            f"{where}: {b} real images per class and {len(u)} compensators exceed the budget "
            f"of ipc {ipc} ({ipc * k} image-sized tensors)"
        )
    space = meta.get("space") or {}
    if space.get("zca"):
        raise DDBenchError(f"{where}: the compensated view clips pixels; ZCA space is refused")
    x = images.float()
    lo, hi = torch.zeros(1, x.shape[1], 1, 1), torch.ones(1, x.shape[1], 1, 1)
    if space.get("normalized", True):
        mean = torch.tensor(space.get("mean", [0.0]), dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(space.get("std", [1.0]), dtype=x.dtype).view(1, -1, 1, 1)
        lo, hi = (lo - mean) / std, (hi - mean) / std
    lo, hi = lo.to(x.device), hi.to(x.device)
    batches = x.view(b, k, *x.shape[1:])
    composed = batches[torch.arange(len(u)) % b] + u.float().to(x.device)[:, None]
    composed = torch.maximum(torch.minimum(composed, hi), lo)
    return torch.cat([x, composed.reshape(-1, *x.shape[1:])])


# ----------------------------------------------------------------------------- importers


def _numpy_scalars() -> list:
    """What a numpy scalar unpickles with (DC's ``res_*.pt`` keeps its evaluation accuracies as
    numpy floats): the scalar constructor and the dtypes, which rebuild numbers from bytes and
    run no code; every other Python object stays refused."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    kinds = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
    return [scalar, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def _torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, containers and numbers only; a file
    holding other Python objects (whose unpickling could run code) and a truncated or corrupt
    file are each one clear error."""
    check_file(path)
    try:
        with torch.serialization.safe_globals(_numpy_scalars()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        refused = "Weights only load failed" in text and "Unsupported operand" not in text
        if refused:
            keys = ("WeightsUnpickler error", "unsupported GLOBAL", "Unsupported global")
            lines = [ln.strip() for ln in text.splitlines() if any(k in ln for k in keys)]
            why = (lines or ["an object that is not a tensor"])[0].split(" was not an allowed")[0]
            raise DDBenchError(
                f"{path} holds Python objects besides tensors; refused by "
                f"torch.load(weights_only=True) ({why[:200]})"
            ) from e
        lines = [ln.strip() for ln in text.splitlines() if "WeightsUnpickler error" in ln]
        why = (lines or text.splitlines() or [type(e).__name__])[0][:200]
        raise DDBenchError(
            f"{path} is truncated or corrupt: not a complete torch.save file ({why or type(e).__name__})"
        ) from e


def _space(dataset: str, zca: bool) -> dict:
    spec = get_spec(dataset)
    out = {"normalized": True, "mean": list(spec.mean), "std": list(spec.std), "zca": zca}
    if zca:  # MTT/FTD/DATM whiten with kornia's ZCAWhitening(eps=0.1) fitted on their train set
        out["zca_eps"] = 0.1
    return out


def _imported_images(images: Any, spec: Any, zca: bool, where: str) -> torch.Tensor:
    """Float images ``[N,C,H,W]`` of ``spec``'s shape, taken as they are (in the dataset's
    normalised space), or uint8 pixels (0-255), scaled to [0,1] and normalised as the dataset
    is (``(x / 255 - mean) / std``)."""
    if not isinstance(images, torch.Tensor):
        raise DDBenchError(f"{where}: the images are a {type(images).__name__}, not a tensor")
    images = images.detach().cpu()
    if images.dim() != 4 or tuple(images.shape[1:]) != spec.shape:
        raise DDBenchError(
            f"{where}: images of shape {tuple(images.shape)}, but {spec.name} images are "
            f"[N, {', '.join(map(str, spec.shape))}]"
        )
    if len(images) == 0:
        raise DDBenchError(f"{where}: the set is empty (0 images)")
    if images.dtype == torch.uint8:
        if zca:
            raise DDBenchError(f"{where}: uint8 images cannot be ZCA-whitened ones (drop --zca)")
        log.info("%s: uint8 images, scaled from 0-255 pixels to %s's normalised space", where,
                 spec.name)  # fmt: skip
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std
    if not images.is_floating_point():
        raise DDBenchError(
            f"{where}: images must be floats (normalised) or uint8 (0-255 pixels), got "
            f"{images.dtype}"
        )
    return images.float()


def _imported_labels(labels: Any, num_classes: int, n: int, where: str) -> torch.Tensor:
    """Hard labels ``[N]`` (integer class indices) as int64, or soft labels ``[N,K]`` (floats)
    as float32. Float hard labels are refused, whole numbers or not: a label file of floats is
    not one this importer knows, and casting could hide a wrong file."""
    if not isinstance(labels, torch.Tensor):
        raise DDBenchError(f"{where}: the labels are a {type(labels).__name__}, not a tensor")
    labels = labels.detach().cpu()
    if labels.dim() == 2:
        if not labels.is_floating_point() or tuple(labels.shape) != (n, num_classes):
            raise DDBenchError(
                f"{where}: soft labels must be floats [N, K] = [{n}, {num_classes}], got "
                f"{tuple(labels.shape)} {labels.dtype}"
            )
        if not torch.isfinite(labels).all():
            raise DDBenchError(f"{where}: soft labels contain NaN or Inf")
        return labels.float()
    if labels.dim() != 1 or len(labels) != n:
        raise DDBenchError(
            f"{where}: expected {n} integer labels (one per image), got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DDBenchError(
            f"{where}: expected {n} integer labels (class indices), got {labels.dtype}"
        )
    labels = labels.long()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DDBenchError(
            f"{where}: labels outside the {num_classes} classes (min {low}, max {high})"
        )
    return labels


def _imported_lr(lr: Any, where: str) -> torch.Tensor | None:
    """A learned lr: one positive finite number (a tensor of one element, or a Python number)."""
    if lr is None:
        return None
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        lr = torch.tensor(float(lr))
    if not isinstance(lr, torch.Tensor):
        raise DDBenchError(f"{where}: the learned lr is a {type(lr).__name__}, not a number")
    if lr.numel() != 1 or lr.is_complex() or lr.dtype == torch.bool:
        raise DDBenchError(
            f"{where}: the learned lr must be one number, got shape {tuple(lr.shape)} {lr.dtype}"
        )
    lr = lr.detach().float().reshape(1)
    _check_extras(lr, None, 0, where)
    return lr


def _imported(
    images, labels, dataset, origin, lr=None, zca=False, protocol="standard", where=None
) -> SyntheticSet:
    """A set from another code's tensors, checked (:func:`_imported_images`,
    :func:`_imported_labels`, :func:`_imported_lr`); ``where`` names the source in errors."""
    spec = get_spec(dataset)
    where = where or f"imported {origin} set"
    images = _imported_images(images, spec, zca, where)
    labels = _imported_labels(labels, spec.num_classes, len(images), where)
    lr = _imported_lr(lr, where)
    hard = labels.argmax(1) if labels.dim() == 2 else labels
    ipc = int(torch.bincount(hard, minlength=spec.num_classes).max())
    return SyntheticSet(
        images, labels, _imported_meta(spec, images, zca, ipc, origin, protocol), lr
    )


def _imported_meta(spec: Any, images, zca: bool, ipc: int, origin: str, protocol: str) -> dict:
    return {
        "dataset": spec.name,
        "classes": list(spec.classes),
        "num_classes": spec.num_classes,
        "image_shape": list(images.shape[1:]),
        "space": _space(spec.name, zca),
        "ipc": ipc,
        "method": {"name": f"imported:{origin}", "config": {}},
        "protocol": protocol,
        "seed": None,
    }


def as_authors_set(
    s: SyntheticSet, method: str, protocol: str, code: str | None = None
) -> SyntheticSet:
    """An imported set marked as the authors' set of ``method`` (a reference row of the board):
    its method becomes ``imported:<method>``, it declares ``protocol`` (the method's own), and
    ``code`` (where it came from, e.g. ``VILA-Lab/SRe2L@8d00cba``) is kept in ``method.config``."""
    name = (s.meta.get("method") or {}).get("name", "")
    if not str(name).startswith("imported:"):
        raise DDBenchError(f"only an imported set can be marked as the authors' set, not {name!r}")
    if not re.fullmatch(r"[a-z0-9_]+", method):
        raise DDBenchError(f"--method {method!r}: a method name of conf/method/ is expected")
    if code is not None and (
        not code.strip() or len(code) > 200 or not all(c.isprintable() for c in code)
    ):
        raise DDBenchError("--code: one line of at most 200 printable characters is expected")
    config = dict(s.meta["method"].get("config") or {})
    if code is not None:
        config["code"] = code
    meta = {**s.meta, "method": {"name": f"imported:{method}", "config": config},
            "protocol": protocol}  # fmt: skip
    return replace(s, meta=meta)


# The protocol a DC/DSA/DM set declares, by the method in its file name
# (``res_<METHOD>_<Dataset>_<model>_<n>ipc.pt``): the one ddbench's own method of that name declares.
_DC_PROTOCOLS = {"DC": "dc", "DSA": "standard", "DM": "standard"}
# The method a ``res_<METHOD>_*.pt`` file names, as the imported set's ``imported:<method>``.
_DC_METHODS = {"DC": "dc", "DSA": "dsa", "DM": "dm", "DataDAM": "datadam"}


def dc_method(path: str | Path) -> str:
    """The method a ``res_<METHOD>_*.pt`` file's name gives (DC, DSA, DM, DataDAM, as
    ``dc``, ``dsa``, ``dm``, ``datadam``); ``dc``, the file format, when the name does not say."""
    name = Path(path).name
    method = name[4:].split("_")[0] if name.startswith("res_") else ""
    return _DC_METHODS.get(method, "dc")


def dc_protocol(path: str | Path) -> str:
    """The protocol of a ``res_<METHOD>_*.pt`` file: DC's own recipe (``dc``) for DC sets, the
    ``standard`` DSA recipe for DSA and DM sets (as ddbench's methods declare); ``standard`` when the
    name does not say (renamed files)."""
    name = Path(path).name
    method = name[4:].split("_")[0] if name.startswith("res_") else ""
    return _DC_PROTOCOLS.get(method, "standard")


def import_dc(
    path: str | Path, dataset: str, experiment: int = 0, protocol: str | None = None
) -> SyntheticSet:
    """A DC/DSA/DM ``res_*.pt``: ``{'data': [[images, labels], ...], 'accs_all_exps': ...}``.
    ``protocol``: the one the set declares; by default read from the file name (:func:`dc_protocol`).
    The set's method is ``imported:<method>`` with the method the file name gives
    (:func:`dc_method`: ``res_DM_*.pt`` is ``imported:dm``)."""
    obj = _torch_load(Path(path))
    try:
        images, labels = obj["data"][experiment][:2]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise DDBenchError(
            f"{path} is not a DC/DSA/DM result file (expected data[{experiment}] = [images, labels])"
        ) from e
    if protocol is not None:  # a shipped protocol (conf/protocol/<name>.yaml)
        import importlib.resources

        shipped = importlib.resources.files("ddbench.conf") / "protocol" / f"{protocol}.yaml"
        if "/" in protocol or not shipped.is_file():
            raise DDBenchError(f"unknown protocol {protocol!r} (see conf/protocol/)")
    protocol = protocol or dc_protocol(path)
    return _imported(images, labels, dataset, dc_method(path), protocol=protocol, where=str(path))


# The mean/std of DataDAM's utils.py get_dataset (DataDistillation/DataDAM @0f6ea09, lines
# 56-87), the space its saved images are in; its get_dataset has no other dataset of ddbench's.
_DATADAM_NORM = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def import_datadam(path: str | Path, dataset: str, entry: int = -1) -> SyntheticSet:
    """A set DataDAM's code saved: ``res_DataDAM_*.pt`` of ``main_DataDAM.py``
    (``{'data': [[images, labels], ...], 'accs_all_exps': ...}``, one pair appended at each of
    its evaluations, so the last, ``entry=-1``, is the final set), or a released
    ``syn_data_*.pt`` (``{'data': [images, labels]}``, read by their ``distill_test_model.py``).
    The images are in the space of their ``get_dataset`` (``(x - mean) / std``), mapped into
    ddbench's normalisation where the constants differ. The set declares protocol ``datadam``."""
    path = Path(path)
    obj = _torch_load(path)
    data = obj.get("data") if isinstance(obj, dict) else None
    try:
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], torch.Tensor):
            images, labels = data[:2] if len(data) == 2 else (None, None)
        else:
            images, labels = data[entry][:2]
    except (KeyError, IndexError, TypeError, ValueError):
        images = labels = None
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DDBenchError(
            f"{path} is not a DataDAM set file (expected data = [[images, labels], ...] with "
            f"entry {entry}, or data = [images, labels])"
        )
    spec = get_spec(dataset)
    if labels.dim() != 1:
        raise DDBenchError(
            f"{path}: expected hard labels [N], got shape {tuple(labels.shape)} {labels.dtype}"
        )
    mean, std = _DATADAM_NORM.get(dataset, (spec.mean, spec.std))
    differ = (tuple(mean), tuple(std)) != (tuple(spec.mean), tuple(spec.std))
    if differ and images.is_floating_point() and tuple(images.shape[1:]) == spec.shape:

        def col(v):
            return torch.tensor(v).view(1, -1, 1, 1)

        images = (images.float() * col(std) + col(mean) - col(spec.mean)) / col(spec.std)
    return _imported(images, labels, dataset, "datadam", protocol="datadam", where=str(path))


def import_mtt(images_path: str | Path, dataset: str, zca: bool = False) -> SyntheticSet:
    """MTT/FTD/DATM ``images_best.pt`` with ``labels_best.pt`` (and ``lr_best.pt``, one
    number, the learned lr) beside it.

    MTT's and FTD's labels are class indices. DATM's are its learned label logits ``[N,K]``
    (``label_syn``, saved before any softmax), which its evaluation trains on with a soft cross
    entropy to their softmax (``distill/DATM.py`` ``SoftCrossEntropy``); the set stores that
    softmax, the soft targets ddbench's ``set`` labels train on, and declares ``datm`` (DATM's
    evaluation, which uses the learned lr). ``[N,K]`` rows that are already distributions are
    not DATM's logits: they are kept as they are, as soft labels of an MTT-format file."""
    images_path = Path(images_path)
    where = str(images_path)
    images = _torch_load(images_path)
    labels = _torch_load(images_path.with_name(images_path.name.replace("images", "labels")))
    lr_path = images_path.with_name(images_path.name.replace("images", "lr"))
    lr = _torch_load(lr_path) if os.path.lexists(lr_path) else None
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DDBenchError(f"{images_path}: expected tensors in images_*.pt / labels_*.pt")
    origin, protocol = "mtt", "learned_lr" if lr is not None else "standard"
    if labels.dim() == 2 and labels.is_floating_point():
        labels = labels.detach().cpu().float()
        if not torch.isfinite(labels).all():
            raise DDBenchError(f"{where}: soft labels contain NaN or Inf")
        rows = labels.sum(1)
        distributions = bool((labels >= 0).all()) and torch.allclose(
            rows, torch.ones_like(rows), atol=1e-4
        )
        if not distributions:  # DATM's learned logits
            log.info("%s: [N,K] labels taken as DATM's learned logits and stored as their softmax",
                     where)  # fmt: skip
            labels = torch.softmax(labels, 1)
            origin, protocol = "datm", "datm"
    return _imported(
        images, labels, dataset, origin, lr=lr, zca=zca, protocol=protocol, where=where
    )


def import_krr_st(path: str | Path, dataset: str) -> SyntheticSet:
    """KRR-ST's ``x_syn.pt`` with ``y_syn.pt`` beside it (db-Lee/selfsup_dd ``train.py``, saved by
    its ``Logger``; ``path`` is the file or its folder): images ``[N,C,H,W]`` and representation
    targets ``[N,D]``. The authors' code feeds ``x_syn`` to its models as it is (learned from raw
    [0, 1] pixels against a normalised real batch), so the images are taken as they are, as the
    model-input space the transfer protocol feeds a set in. The set is label-free
    (:data:`REPRESENTATION`) and declares the ``transfer`` protocol; its ``ipc`` is
    ``ceil(N / classes)``."""
    path = Path(path)
    x_path = path / "x_syn.pt" if path.is_dir() else path
    y_path = x_path.with_name(x_path.name.replace("x_syn", "y_syn"))
    where = str(x_path)
    if y_path == x_path:
        raise DDBenchError(f"{where}: expected x_syn*.pt (with y_syn*.pt beside it)")
    spec = get_spec(dataset)
    images = _imported_images(_torch_load(x_path), spec, False, where)
    targets = _torch_load(y_path)
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2 or len(targets) != len(images):
        shape = (
            tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        )
        raise DDBenchError(f"{y_path}: expected representation targets [N, D] = "
                           f"[{len(images)}, D], got {shape}")  # fmt: skip
    if not targets.is_floating_point() or not torch.isfinite(targets).all():
        raise DDBenchError(f"{y_path}: representation targets must be finite floats")
    meta = _imported_meta(spec, images, False, -(-len(images) // spec.num_classes), "krr_st",
                          "transfer")  # fmt: skip
    meta["label_kind"] = REPRESENTATION
    return SyntheticSet(images, targets.detach().cpu().float().contiguous(), meta)


def export_image_folder(synset: SyntheticSet, out_dir: str | Path) -> Path:
    """Write the set as ``out_dir/<class>/<i>.png`` in [0,1] pixel space (ZCA sets refused)."""
    from PIL import Image

    space = synset.meta.get("space", {})
    if space.get("zca"):
        raise DDBenchError(
            "a ZCA-whitened set has no faithful PNG form; evaluate the .safetensors file"
        )
    x = synset.images.float()
    if space.get("normalized", True):
        mean = torch.tensor(space.get("mean", [0.0])).view(1, -1, 1, 1)
        std = torch.tensor(space.get("std", [1.0])).view(1, -1, 1, 1)
        x = x * std + mean
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    classes = synset.meta.get("classes") or [
        str(i) for i in range(int(synset.hard_labels.max()) + 1)
    ]
    out_dir = Path(out_dir)
    for i, (img, c) in enumerate(zip(x, synset.hard_labels.tolist())):
        d = out_dir / _safe_dirname(str(classes[c]))
        d.mkdir(parents=True, exist_ok=True)
        arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(d / f"{i:06d}.png")
    return out_dir


def _safe_dirname(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def import_image_folder(root: str | Path, dataset: str) -> SyntheticSet:
    """Class folders of PNG/JPEG images (folder order = the dataset's class order)."""
    spec = get_spec(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DDBenchError(f"{root} is not a directory of class folders")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    names = [_safe_dirname(c) for c in spec.classes]
    order = [c for c in names if c in folders] if set(folders) <= set(names) else folders
    x, y, _ = read_image_folder(root, order, spec.channels, spec.im_size)
    if set(folders) <= set(names):
        y = torch.tensor([names.index(order[i]) for i in y.tolist()])
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return _imported((x.float() / 255 - mean) / std, y, dataset, "imagefolder")


_DC_DATASETS = {"MNIST": "mnist", "FashionMNIST": "fashion_mnist", "SVHN": "svhn",
                "CIFAR10": "cifar10", "CIFAR100": "cifar100"}  # fmt: skip


def import_any(path: str | Path, dataset: str | None = None, zca: bool = False) -> SyntheticSet:
    """Read a published set file: DC/DSA/DM ``res_<method>_<Dataset>_<model>_<n>ipc.pt`` or
    DataDAM's ``res_DataDAM_...`` (the dataset is read from the name when not given) or
    MTT/FTD/DATM ``images_*.pt``."""
    path = Path(path)
    name = path.name
    if name.startswith("res_") and name.endswith(".pt"):
        parts = name[4:-3].split("_")
        guess = _DC_DATASETS.get(parts[1]) if len(parts) > 1 else None
        if not (dataset or guess):
            raise DDBenchError(f"cannot tell the dataset of {name}; pass dataset=NAME")
        if parts[0] == "DataDAM":  # one set per evaluation: the last is the final one
            return import_datadam(path, dataset or guess)
        return import_dc(path, dataset or guess)
    if name.startswith("images_") and name.endswith(".pt"):
        if not dataset:
            raise DDBenchError(
                f"MTT-format files do not name their dataset; pass dataset=NAME for {name}"
            )
        return import_mtt(path, dataset, zca=zca)
    raise DDBenchError(f"{name}: not a .safetensors set, a DC res_*.pt or an MTT images_*.pt file")
