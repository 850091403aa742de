"""The red-team corpus: bad inputs for every file and setting ddbench reads, written to a folder.

:func:`write_corpus` writes each input (set files, published-format files, a FIFO, links,
unwritable folders) and returns one :class:`Case` per input: the ``ddbench`` command line that
reads it, the word its one-line error must name (``expect``), and, for the file cases, the
Python call that reads it (``call``). A case with ``expect=""`` is valid by design and must
succeed. ``tests/test_red_team.py`` checks the calls (and a few command lines);
``bench/red_team.py`` runs every command line.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddbench import synset
from ddbench.data import load_split
from ddbench.synset import SyntheticSet

DEEP = 100_000  # nesting levels of the deep JSON cases: far past Python's recursion limit


@dataclass
class Case:
    """One input. ``argv``: the ``ddbench`` arguments; ``expect``: a regular expression
    (case-insensitive) the error must match, "" when the input is valid by design; ``call``:
    the Python call reading the input (None for command-line-only cases); ``env``: extra
    environment variables; ``skip``: why this machine cannot build the case ("" if it can)."""

    name: str
    argv: list[str]
    expect: str
    call: Callable[[], Any] | None = None
    env: dict[str, str] = field(default_factory=dict)
    skip: str = ""


class CodeOnLoad:
    """Unpickling this creates ``marker``: a pickle that ran code leaves the marker behind."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def base_set(ipc: int = 2) -> SyntheticSet:
    """A valid digits set: the first ``ipc`` train images of each class, normalised."""
    train = load_split("digits", "train")
    idx = torch.cat([train.indices_of(c)[:ipc] for c in range(train.num_classes)])
    meta = {
        "dataset": "digits",
        "classes": list(train.classes),
        "num_classes": train.num_classes,
        "image_shape": list(train.images.shape[1:]),
        "space": train.space(),
        "ipc": ipc,
        "method": {"name": "red_team", "config": {}},
        "protocol": "quick",
        "seed": 0,
    }
    return SyntheticSet(train.normalize(train.images[idx]), train.labels[idx].clone(), meta)


def raw_set(path: Path, tensors: dict[str, torch.Tensor], meta: Any, *, checksum=True) -> Path:
    """A safetensors file with ``tensors`` and ``meta`` (a dict, or the raw JSON text) as its
    ddbench metadata, written without ddbench's checks; with ``checksum`` a dict gets the
    tensors' sha256."""
    from safetensors.torch import save_file

    if isinstance(meta, dict):
        meta = dict(meta)
        if checksum:
            meta["sha256"] = synset.tensors_sha256(tensors)
        meta = json.dumps(meta)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"ddbench": meta})
    return path


def write_dc_file(path: Path, images: Any, labels: Any) -> Path:
    """A DC/DSA/DM ``res_*.pt`` file (``{'data': [[images, labels]], 'accs_all_exps': {}}``)."""
    torch.save({"data": [[images, labels]], "accs_all_exps": {}}, path)
    return path


def unwritable_dir(root: Path) -> Path | None:
    """A folder this process cannot create files in: a mode-0555 folder, or where permissions
    do not bind (root), a folder of a file system that refuses new entries; None if none."""
    candidates = [root / "read_only"]
    candidates[0].mkdir(exist_ok=True)
    candidates[0].chmod(0o555)
    candidates += [Path("/sys/fs"), Path("/proc/sys")]
    for c in candidates:
        probe = c / "ddbench-red-team-probe"
        try:
            probe.mkdir()
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return c
            continue
        probe.rmdir()
    return None


def write_result(path: Path, s: SyntheticSet, set_path: Path) -> Path:
    """A real ``result.json`` of ``s`` (saved at ``set_path``) under the pinned ``quick``
    protocol, with a narrow ConvNet (seconds on digits)."""
    from ddbench.protocol import Protocol, evaluate, protocol_config
    from ddbench.protocol import write_result as write

    s.meta["_path"] = str(set_path)
    proto = Protocol.from_config(protocol_config("quick"))
    result = evaluate(s, proto, "convnet", {"net_width": 16}, device="cpu", progress=False)
    s.meta.pop("_path")
    return write(result, path)


def write_corpus(
    root: Path, base: SyntheticSet | None = None, *, result: bool = False
) -> list[Case]:
    """Write the corpus under ``root`` (created); ``base``: the valid set the bad ones are made
    from (default :func:`base_set`). ``result``: also write a real ``result.json`` (a few
    seconds of training) for the ``submit`` case."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = base or base_set()
    meta = {k: v for k, v in base.meta.items() if k != "sha256"}
    x, y = base.images.clone(), base.labels.clone()
    good = synset.save(base, root / "good.safetensors")
    n = len(x)
    cases: list[Case] = []

    def set_case(name: str, expect: str, path: Path, **load_kw: Any) -> None:
        cases.append(
            Case(
                name,
                ["show", str(path), "--out", str(root / f"{name}.png")],
                expect,
                lambda: synset.load(path, **load_kw),
            )
        )

    def bad_set(name: str, expect: str, tensors=None, m: Any = None, **kw: Any) -> None:
        path = raw_set(root / f"{name}.safetensors", tensors or {"images": x, "labels": y},
                       meta if m is None else m, **kw)  # fmt: skip
        set_case(name, expect, path)

    # --- set files: metadata
    deep = "[" * DEEP + "]" * DEEP
    bad_set("deep_metadata", "nested too deeply", m=deep)
    header = json.dumps({"__metadata__": {"ddbench": "{}"}})[:-1] + ', "x": ' + deep + "}"
    hb = header.encode()
    (root / "deep_header.safetensors").write_bytes(struct.pack("<Q", len(hb)) + hb)
    set_case("deep_header", "nested too deeply", root / "deep_header.safetensors")
    bad_set("metadata_list", "metadata is a JSON list", m="[1, 2]")
    bad_set("metadata_string", "metadata is a JSON string", m='"abc"')
    bad_set("ipc_abc", "'ipc' must be a positive integer", m=dict(meta, ipc="abc"))
    bad_set("ipc_fraction", "'ipc' must be a positive integer", m=dict(meta, ipc=1.5))
    bad_set("ipc_below_count", "more than the set's ipc", m=dict(meta, ipc=1))
    bad_set("dataset_list", "'dataset' must be a string", m=dict(meta, dataset=["digits"]))
    bad_set("label_storage_unknown", "unknown label storage",
            m=dict(meta, label_storage={"format": "zip"}))  # fmt: skip
    bad_set("label_storage_string", "'label_storage' must be an object",
            m=dict(meta, label_storage="topk"))  # fmt: skip
    bad_set("space_mean_string", "space.mean", m=dict(meta, space=dict(meta["space"], mean="x")))
    # --- set files: tensors
    bad_set("lr_wrong_shape", "learned lr", {"images": x, "labels": y, "lr": torch.ones(3)})
    bad_set("lr_integer", "learned lr", {"images": x, "labels": y, "lr": torch.ones(1).long()})
    bad_set("lr_nan", "learned lr", {"images": x, "labels": y, "lr": torch.tensor([float("nan")])})
    bad_set("weights_wrong_length", "weights must be",
            {"images": x, "labels": y, "weights": torch.ones(n - 1)})  # fmt: skip
    nan_w = torch.ones(n)
    nan_w[0] = float("nan")
    bad_set("weights_nan", "NaN/inf weights", {"images": x, "labels": y, "weights": nan_w})
    bad_set("weights_negative", "weights must be >= 0",
            {"images": x, "labels": y, "weights": -torch.ones(n)})  # fmt: skip
    nan_x = x.clone()
    nan_x[1, 0, 2, 2] = float("nan")
    bad_set("pixels_nan", "NaN or Inf pixels", {"images": nan_x, "labels": y})
    bad_set("pixels_huge", "huge pixel values", {"images": x * 1e30, "labels": y})
    bad_set("image_shape_wrong", "shape", {"images": torch.zeros(n, 1, 16, 16), "labels": y},
            m=dict(meta, image_shape=[1, 16, 16]))  # fmt: skip
    bad_set("images_3d", r"\[N,C,H,W\]", {"images": x[:, 0], "labels": y})
    bad_set("labels_float", "hard labels must be integers", {"images": x, "labels": y.float()})
    neg = y.clone()
    neg[0] = -1
    bad_set("labels_negative", "outside the 10 classes", {"images": x, "labels": neg})
    bad_set("labels_too_big", "outside the 10 classes", {"images": x, "labels": y + 10})
    bad_set("soft_labels_integer", "soft labels must be floats",
            {"images": x, "labels": torch.nn.functional.one_hot(y, 10)})  # fmt: skip
    bad_set("empty", "empty", {"images": x[:0], "labels": y[:0]})
    bad_set("checksum_mismatch", "checksum mismatch",
            m=dict(meta, sha256=synset.tensors_sha256({"images": x + 1, "labels": y})),
            checksum=False)  # fmt: skip
    # valid by design: no checksum (a loud warning), no ipc or ipc 0 (counted from the labels)
    bad_set("no_checksum", "", checksum=False)
    bad_set("no_ipc", "", m={k: v for k, v in meta.items() if k != "ipc"})
    bad_set("ipc_zero", "", m=dict(meta, ipc=0))
    # --- set files: the file itself
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    set_case("truncated", "truncated", truncated)
    marker = root / "pickle_ran"
    with open(root / "pickle.safetensors", "wb") as f:
        pickle.dump({"images": x, "payload": CodeOnLoad(str(marker))}, f)
    set_case("pickle", "Python pickle.*never unpickles", root / "pickle.safetensors")
    torch.save({"images": x, "labels": y}, root / "torch_save.safetensors")
    set_case("torch_save", "zip archive", root / "torch_save.safetensors")
    os.mkfifo(root / "fifo.safetensors")
    set_case("fifo", "FIFO", root / "fifo.safetensors")
    os.symlink("loop_b.safetensors", root / "loop_a.safetensors")
    os.symlink("loop_a.safetensors", root / "loop_b.safetensors")
    set_case("symlink_loop", "symlink loop", root / "loop_a.safetensors")
    os.symlink("nowhere.safetensors", root / "broken_link.safetensors")
    set_case("broken_symlink", "broken symlink", root / "broken_link.safetensors")
    (root / "directory.safetensors").mkdir()
    set_case("directory", "is a directory", root / "directory.safetensors")
    set_case("missing", "no such file", root / "missing.safetensors")
    unreadable = root / "unreadable.safetensors"
    unreadable.write_bytes(good.read_bytes())
    unreadable.chmod(0)
    set_case("unreadable", "permission denied", unreadable)
    if os.access(unreadable, os.R_OK):
        cases[-1].skip = "permissions do not bind this user (root)"

    # --- published formats (ddbench import)
    def import_case(name: str, expect: str, path: Path, fmt: str = "dc", **kw: Any) -> None:
        readers = {"dc": synset.import_dc, "mtt": synset.import_mtt}
        out = root / f"{name}.imported.safetensors"
        argv = ["import", fmt, str(path), "--dataset", "digits", "--out", str(out)]
        argv += [f"--{k}" for k, v in kw.items() if v is True]
        cases.append(Case(name, argv, expect, lambda: readers[fmt](path, "digits", **kw)))

    def dc_file(name: str, images: Any, labels: Any) -> Path:
        return write_dc_file(root / name, images, labels)

    import_case("dc_string_entries", "not a tensor", dc_file("res_DC_str.pt", "abc", "def"))
    import_case("dc_negative_labels", "outside the 10 classes", dc_file("res_DC_neg.pt", x, neg))
    import_case("dc_float_labels", "integer labels", dc_file("res_DC_float.pt", x, y.float()))
    pixels = (base.pixels() * 255).round().to(torch.uint8)
    import_case("dc_uint8_images", "", dc_file("res_DC_uint8.pt", pixels, y))
    import_case("dc_int64_images", "uint8", dc_file("res_DC_int64.pt", pixels.long(), y))
    import_case("dc_wrong_shape", "shape", dc_file("res_DC_shape.pt", x[:, :, :4], y))
    import_case("dc_empty", "empty", dc_file("res_DC_empty.pt", x[:0], y[:0]))
    import_case("dm_named_file", "", dc_file("res_DM_digits_ConvNet_2ipc.pt", x, y))
    full = dc_file("res_DC_full.pt", x, y)
    (root / "res_DC_truncated.pt").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    import_case("dc_truncated", "truncated or corrupt", root / "res_DC_truncated.pt")
    torch.save({"data": [[x, y, CodeOnLoad(str(marker))]]}, root / "res_DC_code.pt")
    import_case("dc_code_on_load", "Python objects", root / "res_DC_code.pt")
    os.mkfifo(root / "res_DC_fifo.pt")
    import_case("dc_fifo", "FIFO", root / "res_DC_fifo.pt")
    os.mkfifo(root / "indices_fifo.npy")
    cases.append(Case("indices_fifo", ["import", "indices", str(root / "indices_fifo.npy"),
                      "--dataset", "digits", "--out", str(root / "indices.safetensors")], "FIFO"))  # fmt: skip
    for name, lr in (("mtt_lr_wrong_shape", torch.ones(3)), ("mtt_lr_string", "0.01")):
        d = root / name
        d.mkdir()
        torch.save(x, d / "images_best.pt")
        torch.save(y, d / "labels_best.pt")
        torch.save(lr, d / "lr_best.pt")
        import_case(name, "learned lr", d / "images_best.pt", "mtt")
    d = root / "mtt_labels_missing"
    d.mkdir()
    torch.save(x, d / "images_best.pt")
    import_case("mtt_labels_missing", "no such file", d / "images_best.pt", "mtt")

    # --- command lines
    def cli_case(name: str, expect: str, argv: list[str], **kw: Any) -> None:
        cases.append(Case(name, argv, expect, **kw))

    tiny = ["protocol=quick", "protocol.epochs=2", "model.kwargs.net_width=16", "progress=false"]
    cli_case("cli_ipc_abc", "ipc",
             ["run", "ipc=abc", "dataset=digits", f"hydra.run.dir={root / 'run_ipc_abc'}"])  # fmt: skip
    cli_case("cli_evaluate_dataset_disagrees", "is a set of 'digits'",
             ["evaluate", f"synset={good}", "dataset=mnist"])  # fmt: skip
    dm = root / "res_DM_digits_ConvNet_2ipc.pt"
    cli_case("cli_evaluate_published_with_dataset", "",
             ["evaluate", f"synset={dm}", "dataset=digits", *tiny,
              f"hydra.run.dir={root / 'eval_dm'}"])  # fmt: skip
    cli_case("cli_evaluate_set_with_its_dataset", "",
             ["evaluate", f"synset={good}", "dataset=digits", *tiny,
              f"hydra.run.dir={root / 'eval_good'}"])  # fmt: skip
    escape = raw_set(root / "escape.safetensors", {"images": x, "labels": y},
                     dict(meta, dataset="../../escape", method={"name": "../../escape"}))  # fmt: skip
    cli_case("cli_evaluate_header_path_parts", "unknown dataset '../../escape'",
             ["evaluate", f"synset={escape}"])  # fmt: skip
    uni = root / "résumé.safetensors"
    uni.write_bytes(good.read_bytes())
    cli_case("cli_unquoted_unicode_path", "quote", ["evaluate", f"synset={uni}"])
    cli_case("cli_quoted_unicode_path", "",
             ["evaluate", f"synset='{uni}'", *tiny, f"hydra.run.dir={root / 'eval_uni'}"])  # fmt: skip
    cli_case("cli_override_parse_error", "quote", ["evaluate", f"synset={good}", "ipc=["])
    cli_case("cli_unknown_config_group", "protocol",
             ["evaluate", f"synset={good}", "protocol=nope"])  # fmt: skip
    ro = unwritable_dir(root)
    skip = "" if ro else "no folder here refuses new files"
    ro = ro or root / "none"
    cli_case("cli_unwritable_import_out", "permission denied|read-only",
             ["import", "dc", str(dm), "--dataset", "digits", "--out",
              str(ro / "sub" / "x.safetensors")], skip=skip)  # fmt: skip
    cli_case("cli_unwritable_run_dir", "permission denied|read-only",
             ["evaluate", f"synset={good}", *tiny, f"hydra.run.dir={ro / 'run'}"], skip=skip)  # fmt: skip
    cli_case("cli_unwritable_show_out", "permission denied|read-only",
             ["show", str(good), "--out", str(ro / "grid.png")], skip=skip)  # fmt: skip
    cli_case("cli_read_only_data_root", "DDBENCH_DATA", ["data", "prepare", "digits"],
             env={"DDBENCH_DATA": str(ro / "data")}, skip=skip)  # fmt: skip
    cli_case("cli_read_only_cache", "DDBENCH_CACHE", ["teacher", "train", "digits"],
             env={"DDBENCH_CACHE": str(ro / "cache")}, skip=skip)  # fmt: skip
    deep_result = root / "deep_result.json"
    deep_result.write_text(deep)
    cli_case("cli_submit_deep_result", "nested too deeply",
             ["submit", str(deep_result), "--synset", str(good), "--board", str(root / "board")])  # fmt: skip
    if result:
        res = write_result(root / "result.json", base, good)
        cli_case("cli_submit_deep_metadata_set", "nested too deeply",
                 ["submit", str(res), "--synset", str(root / "deep_metadata.safetensors"),
                  "--board", str(root / "board")])  # fmt: skip
    return cases
