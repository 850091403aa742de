"""`ddbench import indices`: a list of train-split indices chosen elsewhere (DeepCore's
``subset["indices"]``) as a set of the real images, checked against ddbench's own selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli

from ddbench import synset
from ddbench.coreset import import_indices, load_indices
from ddbench.errors import DDBenchError
from ddbench.method import Task
from ddbench.methods.herding import Herding


def _herding_set(digits_train, ipc: int = 3):
    task = Task(
        train=digits_train,
        ipc=ipc,
        model_factory=lambda: None,
        generator=torch.Generator().manual_seed(0),
        seed=0,
        device=torch.device("cpu"),
    )
    return Herding(features="pixels").distill(task)


@pytest.mark.parametrize("fmt", ["npy", "pt", "pt_dict", "json", "json_dict"])
def test_imported_indices_give_the_images_of_ddbenchs_own_selection(
    fmt: str, digits_train, tmp_path: Path
) -> None:
    own = _herding_set(digits_train)
    idx = own.meta["indices"]
    path = tmp_path / f"subset.{fmt.split('_')[0]}"
    if fmt == "npy":
        np.save(path, np.asarray(idx, dtype=np.int64))
    elif fmt == "pt":
        torch.save(torch.tensor(idx), path)
    elif fmt == "pt_dict":  # DeepCore's select() result: {"indices": ..., "scores": ...}
        torch.save({"indices": torch.tensor(idx), "scores": torch.rand(len(digits_train))}, path)
    elif fmt == "json":
        path.write_text(json.dumps(idx))
    else:
        path.write_text(json.dumps({"indices": idx}))

    imp = import_indices(path, "digits", split_size=len(digits_train))
    assert torch.equal(imp.images, own.images) and torch.equal(imp.labels, own.labels)
    assert imp.labels.dtype == torch.int64 and imp.meta["indices"] == idx
    assert imp.meta["method"] == {"name": "imported:indices", "config": {"source": path.name}}
    assert imp.meta["ipc"] == 3 and imp.meta["per_class"] == [3] * 10
    assert imp.meta["space"] == own.meta["space"]
    back = synset.load(synset.save(imp, tmp_path / "imp.safetensors"))
    assert torch.equal(back.images, own.images) and back.meta["indices"] == idx


def test_an_unbalanced_selection_records_its_class_counts(digits_train, tmp_path: Path) -> None:
    labels = digits_train.labels
    idx = torch.cat([digits_train.indices_of(0)[:4], digits_train.indices_of(7)[:1]])
    path = tmp_path / "global.json"
    path.write_text(json.dumps(idx.tolist()))
    imp = import_indices(path, "digits")
    expected = [4, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    assert imp.meta["per_class"] == expected and imp.meta["ipc"] == 4
    assert torch.equal(imp.labels, labels[idx])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.json", "[1, 2, 100000]", r"index 100000 is out of range for the \d+ images"),
        ("a.json", "[-1, 2]", r"index -1 is out of range"),
        ("a.json", "[3, 5, 3, 5]", r"2 indices appear more than once \(first: 3\)"),
        ("a.json", "[1, 2.5]", r"indices must be integers, found 2.5"),
        ("a.json", '["1"]', r"indices must be integers, found '1'"),
        ("a.json", "[true]", r"indices must be integers, found True"),
        ("a.json", "[]", r"no indices"),
        ("a.json", '{"idx": [1]}', r"a mapping without an 'indices' entry"),
        ("a.json", "[[1, 2]]", r"indices must be integers"),
        ("a.json", "{oops", r"not JSON"),
        ("a.txt", "1 2 3", r"expected a \.npy, \.pt or \.json file"),
    ],
)
def test_bad_index_files_fail_clearly(name, content, message, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DDBenchError, match=message):
        import_indices(path, "digits")


def test_bad_arrays_fail_clearly(digits_train, tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.array([1.0, 2.0]))
    with pytest.raises(DDBenchError, match=r"indices must be integers, got dtype torch.float64"):
        load_indices(tmp_path / "f.npy")
    np.save(tmp_path / "m.npy", np.arange(4).reshape(2, 2))
    with pytest.raises(DDBenchError, match=r"a flat list, got shape \[2, 2\]"):
        load_indices(tmp_path / "m.npy")
    np.save(tmp_path / "o.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(DDBenchError, match=r"not a plain \.npy array"):
        load_indices(tmp_path / "o.npy")
    torch.save({"indices": np.arange(3)}, tmp_path / "np.pt")  # a pickled numpy array
    with pytest.raises(DDBenchError, match=r"weights_only.*save the indices with np\.save"):
        load_indices(tmp_path / "np.pt")
    with pytest.raises(DDBenchError, match="no such file"):
        load_indices(tmp_path / "missing.json")
    (tmp_path / "ok.json").write_text("[0, 1]")
    n = len(digits_train)
    with pytest.raises(DDBenchError, match=rf"a train set of {n + 10} images; .* has {n}"):
        import_indices(tmp_path / "ok.json", "digits", split_size=n + 10)


def test_cli_import_indices_writes_a_set(digits_train, tmp_path: Path) -> None:
    own = _herding_set(digits_train, ipc=2)
    path = tmp_path / "subset.npy"
    np.save(path, np.asarray(own.meta["indices"]))
    out = tmp_path / "out.safetensors"
    proc = run_cli(
        "import", "indices", str(path), "--dataset", "digits", "--out", str(out),
        "--split-size", str(len(digits_train)), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out} (20 images, ipc 2" in proc.stdout
    loaded = synset.load(out)
    assert torch.equal(loaded.images, own.images) and torch.equal(loaded.labels, own.labels)

    np.save(path, np.array([0, 0]))
    proc = run_cli(
        "import", "indices", str(path), "--dataset", "digits", "--out", str(out), cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "appear more than once" in err[0], proc.stderr
