"""DataDAM against its authors' code: the importer of their saved sets, their evaluation as the
``datadam`` protocol (BatchNorm ConvNet, batch 64) and the HP table's iterations, on digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from ddbench import synset
from ddbench.data import RealDataset
from ddbench.errors import DDBenchError
from ddbench.methods.datadam import DataDAM
from ddbench.protocol import Protocol, evaluate, protocol_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _sets(train: RealDataset, ipc: int, n: int) -> list[list[torch.Tensor]]:
    """``n`` different normalised sets of ``ipc`` real images per class, ordered by class."""
    out = []
    for k in range(n):
        idx = torch.cat([train.indices_of(c)[k * ipc : (k + 1) * ipc] for c in range(10)])
        out.append([train.normalize(train.images[idx]), train.labels[idx].long()])
    return out


def _res_file(path: Path, sets: list[list[torch.Tensor]]) -> Path:
    """A file as main_DataDAM.py writes it: one [images, labels] appended per evaluation."""
    torch.save({"data": sets, "accs_all_exps": {"ConvNet": [0.5]}}, path)
    return path


def test_import_takes_the_final_set_of_a_res_file_or_the_one_asked_for(digits_train, tmp_path):
    sets = _sets(digits_train, 2, 3)
    f = _res_file(tmp_path / "res_DataDAM_digits_ConvNet_2ipc_.pt", sets)
    s = synset.import_datadam(f, "digits")
    assert torch.equal(s.images, sets[-1][0]) and torch.equal(s.labels, sets[-1][1])
    assert s.ipc == 2 and s.meta["protocol"] == "datadam"
    assert s.meta["method"]["name"] == "imported:datadam"
    assert torch.equal(synset.import_datadam(f, "digits", entry=0).images, sets[0][0])
    # the generic reader sends res_DataDAM_* here, not to the DC reader (which takes data[0])
    assert torch.equal(synset.import_any(f, "digits").images, sets[-1][0])
    # a released syn_data_*.pt: data = [images, labels]
    g = tmp_path / "syn_data_digits_ipc_2.pt"
    torch.save({"data": sets[1]}, g)
    assert torch.equal(synset.import_datadam(g, "digits").images, sets[1][0])


def test_import_maps_their_normalisation_into_ddbench_s(digits_train, tmp_path, monkeypatch):
    x, y = _sets(digits_train, 1, 1)[0]
    pixels = x * 0.5 + 0.25  # any pixels; saved as their get_dataset would normalise them
    monkeypatch.setitem(synset._DATADAM_NORM, "digits", ((0.3,), (0.2,)))
    f = _res_file(tmp_path / "res.pt", [[(pixels - 0.3) / 0.2, y]])
    s = synset.import_datadam(f, "digits")
    spec = digits_train.spec
    torch.testing.assert_close(s.images, (pixels - spec.mean[0]) / spec.std[0])


@pytest.mark.parametrize(
    "content, match",
    [
        ({"images": torch.zeros(1)}, "not a DataDAM set file"),
        ({"data": []}, "not a DataDAM set file"),
        ({"data": [[torch.zeros(10, 1, 8, 8)]]}, "not a DataDAM set file"),
        ({"data": [[torch.zeros(10, 3, 32, 32), torch.arange(10)]]}, r"digits images are"),
        ({"data": [[torch.zeros(10, 1, 8, 8), torch.zeros(10)]]}, "integer labels"),
        ({"data": [[torch.zeros(10, 1, 8, 8), torch.arange(9)]]}, "integer labels"),
    ],
)
def test_import_refuses_a_wrong_file_in_one_line(tmp_path, content, match):
    f = tmp_path / "res.pt"
    torch.save(content, f)
    with pytest.raises(DDBenchError, match=match):
        synset.import_datadam(f, "digits")
    with pytest.raises(DDBenchError, match="no such file"):
        synset.import_datadam(tmp_path / "missing.pt", "digits")


def test_datadam_protocol_is_the_authors_evaluate_synset_recipe(digits_train):
    cfg = protocol_config("datadam")
    p = Protocol.from_config(cfg)
    standard = Protocol.from_config(protocol_config("standard"))
    assert (p.model, p.batch_size, p.epochs) == ("convnet_bn", 64, 1800)
    assert (p.lr, p.momentum, p.weight_decay, p.milestones, p.gamma) == (
        0.01,
        0.9,
        5e-4,
        [0.5],
        0.1,
    )
    assert p.augment == "color_crop_cutout_flip_scale_rotate" and p.hash != standard.hash
    assert DataDAM.protocol == "datadam"
    # evaluate() with no model trains the protocol's own (BatchNorm) model; a named one wins
    x, y = _sets(digits_train, 1, 1)[0]
    s = synset._imported(x, y, "digits", "datadam", protocol="datadam")
    tiny = Protocol.from_config({**cfg, "epochs": 1, "seeds": [0]})
    r = evaluate(s, tiny, device="cpu", progress=False)
    assert r["model"] == "convnet_bn" and "cross_protocol" not in r["protocol"]
    r = evaluate(s, tiny, "convnet", {"net_width": 8}, device="cpu", progress=False)
    assert r["model"] == "convnet"


def test_hp_table_iterations_apply_at_the_paper_ipcs_unless_set():
    for ipc in (1, 10, 50):
        m = DataDAM()
        m.apply_recipe("mnist", ipc)
        assert m.iterations == 8000 and "HPTable" in m.recipe["source"]
    m = DataDAM()
    m.apply_recipe("fashion_mnist", 20)  # no row: the released code's default
    assert m.iterations == 20000 and m.recipe["setting"] is None
    m = DataDAM(iterations=300)
    m.apply_recipe("mnist", 1, {"iterations"})
    assert m.iterations == 300 and m.recipe["kept"] == {"iterations": 300}
    assert DataDAM().power == 1.0 and DataDAM(power=4).power == 4.0


def test_cli_imports_a_datadam_file_and_scores_it_under_the_authors_evaluation(
    digits_train, tmp_path
):
    sets = _sets(digits_train, 1, 2)
    f = _res_file(tmp_path / "res_DataDAM_digits_ConvNet_1ipc_.pt", sets)
    out = tmp_path / "theirs.safetensors"
    p = run_cli("import", "datadam", str(f), "--dataset", "digits", "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "expects protocol datadam" in p.stdout
    assert torch.equal(synset.load(out).images, sets[-1][0])
    bad = tmp_path / "res_bad.pt"
    torch.save({"data": 3}, bad)
    p = run_cli(
        "import", "datadam", str(bad), "--dataset", "digits", "--out", str(out), cwd=tmp_path
    )
    assert p.returncode != 0 and "not a DataDAM set file" in p.stderr
    assert "Traceback" not in p.stderr
    tiny = ["protocol=datadam", "protocol.epochs=1", "protocol.seeds=[0]", "progress=false"]
    for extra, model in (([], "convnet_bn"), (["model.kwargs.net_width=8"], "convnet")):
        d = tmp_path / model
        p = run_cli("evaluate", f"synset={out}", *tiny, *extra, f"hydra.run.dir={d}", cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        r = json.loads((d / "result.json").read_text())
        assert r["model"] == model and r["protocol"]["name"] == "datadam", extra
