"""The leaderboard: submit (with every rejection), build, the page in headless Chromium, verify.

Honest entries are real runs on digits under the pinned ``quick`` protocol (300 epochs, one
seed: a few seconds there) with a narrow ConvNet (the model is reported beside the protocol).
"""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from ddbench import leaderboard, synset
from ddbench.cli import main
from ddbench.errors import DDBenchError

RUN = ["method=random", "dataset=digits", "ipc=1", "protocol=quick", "model.kwargs.net_width=16",
       "progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ddbench_data_root) -> list[Path]:
    """Run dirs of two honest runs (random subsets, seeds 0 and 1), sorted by seed."""
    tmp = tmp_path_factory.mktemp("runs")
    p = run_cli("-m", "run", *RUN, "seed=0,1", f"hydra.sweep.dir={tmp}", cwd=tmp)
    assert p.returncode == 0, p.stdout + p.stderr
    dirs = [f.parent for f in tmp.rglob("result.json")]
    assert len(dirs) == 2
    return sorted(dirs, key=lambda d: synset.read_header(d / "synset.safetensors")["seed"])


@pytest.fixture(scope="module")
def board(runs, tmp_path_factory) -> Path:
    """A board with the two honest runs submitted and built."""
    b = tmp_path_factory.mktemp("board")
    for d in runs:
        leaderboard.submit(d / "result.json", d / "synset.safetensors", b)
    leaderboard.build(b)
    return b


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def test_submit_accepts_an_honest_run_as_one_entry_beside_its_set(runs, tmp_path, capsys):
    d = runs[0]
    result = json.loads((d / "result.json").read_text())
    b = tmp_path / "board"
    p = run_cli("submit", str(d / "result.json"), "--synset", str(d / "synset.safetensors"),
                "--board", str(b), cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    entry = b / "submissions/digits/ipc1/quick" / f"random-{result['synset']['sha256'][:12]}.json"
    assert sorted(snapshot(b)) == sorted(
        str(f.relative_to(b)) for f in (entry, entry.with_suffix(".safetensors"))
    )
    stored = json.loads(entry.read_text())
    assert stored["accuracy"] == result["accuracy"] and stored["protocol"] == result["protocol"]
    assert stored["synset"]["path"] == entry.with_suffix(".safetensors").name
    assert stored["submission"]["checks"]["near_copies"]["copies"] == []
    assert entry.with_suffix(".safetensors").read_bytes() == (d / "synset.safetensors").read_bytes()
    # The same set again is refused, and changes nothing.
    before = snapshot(b)
    with pytest.raises(SystemExit) as e:
        main(["submit", str(d / "result.json"), "--synset", str(d / "synset.safetensors"),
              "--board", str(b)])  # fmt: skip
    assert e.value.code != 0 and "already on the board" in capsys.readouterr().err
    assert snapshot(b) == before


def _honest(runs) -> tuple[dict, Path]:
    return json.loads((runs[0] / "result.json").read_text()), runs[0] / "synset.safetensors"


def _write(tmp: Path, result: dict) -> Path:
    f = tmp / "result.json"
    f.write_text(json.dumps(result))
    return f


def bad_schema_missing(tmp, runs):
    r, s = _honest(runs)
    del r["accuracy"]
    return _write(tmp, r), s, [], "missing key 'accuracy'"


def bad_schema_type(tmp, runs):
    r, s = _honest(runs)
    r["ipc"] = "1"
    return _write(tmp, r), s, [], "'ipc' must be integer"


def bad_sha256(tmp, runs):
    r, s = _honest(runs)
    r["synset"]["sha256"] = "0" * 64
    return _write(tmp, r), s, [], "sha256 mismatch"


def bad_test_copy(tmp, runs):
    """A test image (in the set's normalised space) put in place of a synthetic image."""
    from ddbench import data

    r, s = _honest(runs)
    real = synset.load(s)
    test = data.load_split("digits", "test")
    label = int(real.labels[0])
    i = int(test.indices_of(label)[3])
    real.images[0] = data.load_split("digits", "train").normalize(test.images[i : i + 1])[0]
    bad = synset.save(synset.SyntheticSet(real.images, real.labels, dict(real.meta)),
                      tmp / "copy.safetensors")  # fmt: skip
    r["synset"]["sha256"] = synset.load(bad).meta["sha256"]
    return _write(tmp, r), bad, [], "near-copies of test images: image 0 ~ test image"


def bad_pickle(tmp, runs):
    r, _ = _honest(runs)
    s = tmp / "set.safetensors"
    s.write_bytes(pickle.dumps({"images": torch.zeros(10, 1, 8, 8), "labels": list(range(10))}))
    return _write(tmp, r), s, [], "pickle"


def bad_oversize_set(tmp, runs):
    r, s = _honest(runs)
    return _write(tmp, r), s, ["--max-set-bytes", "1000"], "over the limit of 1000"


def bad_oversize_json(tmp, runs):
    r, s = _honest(runs)
    r["notes"] = "x" * (1 << 20)  # over the default 1 MiB
    return _write(tmp, r), s, [], "the result file is"


def bad_unpinned_protocol(tmp, runs):
    r, s = _honest(runs)
    r["protocol"]["name"] = "bestontest"
    return _write(tmp, r), s, [], "protocol 'bestontest' is not pinned"


def bad_overridden_protocol(tmp, runs):
    """A real evaluation of the same set under quick with epochs overridden."""
    from ddbench.protocol import evaluate

    r, s = _honest(runs)
    proto = leaderboard._pinned_protocol("quick")
    proto.epochs = 2
    o = evaluate(synset.load(s), proto, "convnet", r["model_kwargs"], device="cpu", progress=False)
    o["synset"]["sha256"] = r["synset"]["sha256"]
    return _write(tmp, o), s, [], "differs from the pinned hash"


def bad_label_bytes(tmp, runs):
    r, s = _honest(runs)
    r["labels"]["bytes"] = 8
    return _write(tmp, r), s, [], "'labels.bytes' is 8"


def bad_val_split(tmp, runs):
    r, s = _honest(runs)
    r["split"] = "val"
    return _write(tmp, r), s, [], "only test results can be submitted"


def bad_budget(tmp, runs):
    """Two images of one class in an ipc-1 set marked full_dataset (which load does not count)."""
    r, s = _honest(runs)
    real = synset.load(s)
    meta = dict(real.meta, full_dataset=True)
    bad = synset.save(synset.SyntheticSet(torch.cat([real.images, real.images[:1] * 0.5]),
                                          torch.cat([real.labels, real.labels[:1]]), meta),
                      tmp / "big.safetensors")  # fmt: skip
    r["synset"]["sha256"] = synset.load(bad).meta["sha256"]
    return _write(tmp, r), bad, [], "a class has 2 images, over the ipc budget of 1"


def _resaved(tmp, runs, name, change=None, **meta) -> tuple[dict, Path]:
    """The honest result and its set re-saved under ``tmp/name`` with ``change(set)`` applied
    to a copy of the set and ``meta`` merged into its metadata; the result follows the set."""
    r, s = _honest(runs)
    real = synset.load(s)
    new = synset.SyntheticSet(real.images.clone(), real.labels.clone(), {**real.meta, **meta})
    if change is not None:
        change(new)
    out = synset.save(new, tmp / name)
    r["synset"]["sha256"] = new.meta["sha256"]
    r["method"] = new.meta["method"]["name"]
    return r, out


def _test_image_like(runs, i: int = 3):
    """A digits test image of the honest set's first class, in the set's normalised space."""
    from ddbench import data

    test = data.load_split("digits", "test")
    label = int(synset.load(_honest(runs)[1]).labels[0])
    j = int(test.indices_of(label)[i])
    return test.standardize(test.images[j : j + 1])[0], j


def bad_shifted_copy(tmp, runs):
    """A test image moved one pixel right, the uncovered column filled with the background."""
    img, _ = _test_image_like(runs)
    moved = torch.full_like(img, float(img.min()))
    moved[..., 1:] = img[..., :-1]
    r, bad = _resaved(tmp, runs, "shifted.safetensors", lambda s: s.images[0].copy_(moved))
    return _write(tmp, r), bad, [], "near-copies of test images: image 0 ~ test image"


def bad_noisy_copy(tmp, runs):
    """A test image with Gaussian noise of 8 % of its norm."""
    img, _ = _test_image_like(runs)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(img.shape, generator=g)
    noisy = img + 0.08 * img.norm() * noise / noise.norm()
    r, bad = _resaved(tmp, runs, "noisy.safetensors", lambda s: s.images[0].copy_(noisy))
    return _write(tmp, r), bad, [], "near-copies of test images: image 0 ~ test image"


def bad_resubmission(tmp, runs):
    """The tensors of a set already on the board, re-saved under another method name."""
    r, s = _honest(runs)
    real = synset.load(s)
    meta = {**real.meta, "method": {**real.meta["method"], "name": "dm"}}
    again = synset.save(synset.SyntheticSet(real.images, real.labels, meta), tmp / "dm.safetensors")
    assert synset.load(again).meta["sha256"] == r["synset"]["sha256"]  # tensors only
    r["method"] = "dm"
    return _write(tmp, r), again, [], "this set is already on the board"


def bad_path_in_name(tmp, runs):
    r, s = _honest(runs)
    r["model"] = "../../convnet"
    return _write(tmp, r), s, [], "'model' holds a path part"


def bad_control_in_name(tmp, runs):
    r, s = _honest(runs)
    r["model_kwargs"]["net_act"] = "relu\x00"
    return _write(tmp, r), s, [], "'model_kwargs.net_act' holds a path part or a control"


def bad_deep_json(tmp, runs):
    f = tmp / "result.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    return f, _honest(runs)[1], [], "nested too deeply"


@pytest.mark.parametrize("case", [bad_schema_missing, bad_schema_type, bad_sha256, bad_test_copy,
                                  bad_pickle, bad_oversize_set, bad_oversize_json,
                                  bad_unpinned_protocol, bad_overridden_protocol, bad_label_bytes,
                                  bad_val_split, bad_budget, bad_shifted_copy, bad_noisy_copy,
                                  bad_resubmission, bad_path_in_name, bad_control_in_name,
                                  bad_deep_json], ids=lambda f: f.__name__)  # fmt: skip
def test_a_bad_submission_is_rejected_with_its_reason_and_the_board_unchanged(
    case, runs, board, tmp_path, capsys
):
    b = tmp_path / "board"
    shutil.copytree(board, b)
    before = snapshot(b)
    result, set_path, extra, reason = case(tmp_path, runs)
    with pytest.raises(SystemExit) as e:
        main(["submit", str(result), "--synset", str(set_path), "--board", str(b), *extra])
    err = capsys.readouterr().err
    assert e.value.code != 0
    assert err.startswith("ddbench: error: ") and reason in err, err
    assert "Traceback" not in err
    assert snapshot(b) == before


class _Rows(HTMLParser):
    """(table index, accuracy) of every body row, in document order."""

    def __init__(self):
        super().__init__()
        self.tables, self.rows, self.sorted_by = 0, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "board" in (a.get("class") or ""):
            self.tables += 1
        if tag == "td" and a.get("data-key") == "accuracy":
            self.rows.append((self.tables, float(a["data-value"])))
        if tag == "th" and a.get("aria-sort"):
            self.sorted_by.append((a["data-key"], a["aria-sort"]))


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no chromium (apt-get install chromium; .ci/run installs it)")


def _dump_dom(url: str, tmp: Path) -> _Rows:
    p = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                        f"--user-data-dir={tmp / 'profile'}", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0 and "</html>" in p.stdout, p.stderr[-2000:]
    rows = _Rows()
    rows.feed(p.stdout)
    return rows


def test_page_sorts_by_a_url_hash_in_headless_chromium(board, tmp_path):
    index = board / "index.html"
    static = _Rows()
    static.feed(index.read_text())
    accs = [a for _, a in static.rows]
    assert static.tables == 1 and len(accs) == 2
    assert len(set(accs)) > 1, "both runs scored the same: the order test would be vacuous"
    assert accs == sorted(accs, reverse=True)  # built best first
    dom = _dump_dom(index.as_uri() + "#sort=accuracy:asc", tmp_path)
    assert [a for _, a in dom.rows] == sorted(accs)  # re-sorted by the page's script on load
    assert dom.sorted_by == [("accuracy", "ascending")]
    plain = _dump_dom(index.as_uri(), tmp_path)
    assert [a for _, a in plain.rows] == accs
    # Every set link points at the copied set; the README lists the same rows.
    readme = (board / "README.md").read_text()
    for f, e in leaderboard.entries(board):
        assert (f.with_name(e["synset"]["path"])).is_file()
        assert f"| {e['accuracy']['mean']:.2f} |" in readme
        assert f.with_name(e["synset"]["path"]).relative_to(board).as_posix() in index.read_text()


def test_verify_flags_a_hand_edited_accuracy_and_passes_honest_entries(board, tmp_path):
    b = tmp_path / "board"
    shutil.copytree(board, b)
    (honest, _), (tampered, e) = leaderboard.entries(b)
    bump = 15.0 if e["accuracy"]["mean"] < 80 else -15.0
    for d in e["accuracy"]["per_seed"]:
        d["accuracy"] += bump
    e["accuracy"]["mean"] += bump  # consistent with per_seed: only re-evaluation can catch it
    tampered.write_text(json.dumps(e))
    p = run_cli("leaderboard", "verify", "--board", str(b), "--tolerance", "1.0", cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = {ln.split(" ", 1)[0] + " " + ln.split()[1].rstrip(":") for ln in p.stdout.splitlines()
             if ln.startswith(("OK", "FLAG"))}  # fmt: skip
    assert lines == {f"OK {honest}", f"FLAG {tampered}"}, p.stdout
    assert "re-evaluated" in p.stdout and "> tolerance 1.0" in p.stdout
    assert "verified 2 submission(s): 1 flagged" in p.stdout


def test_near_copy_check_passes_honest_train_subsets_of_every_class(make_set):
    """Ten real train images per class, compared over shifts and a mirror with the test split:
    none is a near-copy (the thresholds come from bench/near_copy_thresholds.py)."""
    nc = leaderboard.near_copies(make_set(ipc=10))
    assert nc["copies"] == [] and nc["max_cosine"] < leaderboard.Limits().copy_cosine
    assert nc["thresholds"]["shift"] == 2


def _place(board: Path, result: dict, set_file: Path, name: str, **changes) -> Path:
    """A hand-written entry ``name`` (the result, ``changes`` merged in) beside a copy of
    ``set_file`` in the honest runs' folder of ``board``."""
    folder = board / "submissions/digits/ipc1/quick"
    shutil.copyfile(set_file, folder / f"{name}.safetensors")
    e = {**result, "synset": {**result["synset"], "path": f"{name}.safetensors"}, **changes}
    (folder / f"{name}.json").write_text(json.dumps(e))
    return folder / f"{name}.json"


def _verify_lines(b: Path, tmp: Path) -> tuple[int, dict[str, str]]:
    p = run_cli("leaderboard", "verify", "--board", str(b), cwd=tmp)
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    lines = {}
    for ln in p.stdout.splitlines():
        if ln.startswith(("OK", "FLAG")):
            status, rest = ln.split(" ", 1)
            path, detail = rest.strip().split(": ", 1)
            lines[Path(path).name] = f"{status} {detail}"
    return p.returncode, lines


def test_verify_and_build_recompute_what_an_entry_claims_from_its_set(board, runs, tmp_path):
    """A 10-per-class set cannot rank at IPC 1, whether its header says ipc 10 or says ipc 1
    while marked full_dataset (which load does not count); each bad entry is flagged alone."""
    b = tmp_path / "board"
    shutil.copytree(board, b)
    from ddbench import data

    r, honest_set = _honest(runs)
    base = synset.load(honest_set)
    train = data.load_split("digits", "train")
    idx = torch.cat([train.indices_of(c)[:10] for c in range(10)])
    imgs, labels = train.standardize(train.images[idx]), train.labels[idx]
    for name, meta in (("claims1", {"ipc": 10}), ("fullflag", {"ipc": 1, "full_dataset": True})):
        new = synset.SyntheticSet(imgs, labels, {**base.meta, **meta})
        path = synset.save(new, tmp_path / f"{name}.safetensors")
        _place(b, {**r, "synset": {"path": None, "sha256": new.meta["sha256"]}}, path, name)
    rc, lines = _verify_lines(b, tmp_path)
    assert rc == 1
    assert lines["claims1.json"] == "FLAG the result says ipc 1, the set says 10"
    assert lines["fullflag.json"].startswith("FLAG a class has 10 images, over the ipc budget of 1")
    assert sorted(v.split()[0] for v in lines.values()) == ["FLAG", "FLAG", "OK", "OK"]
    # a val-split entry (placed by hand: submit refuses them) is never ranked with test scores
    rv, val_set = _resaved(tmp_path, runs, "val.safetensors", lambda s: s.images.mul_(0.9))
    _place(b, dict(rv, split="val"), val_set, "valsplit")
    leaderboard.build(b)
    readme = (b / "README.md").read_text()
    assert "claims1.json: the result says ipc 1, the set says 10" in readme.replace("\\", "")
    val = readme.split("## digits · IPC 1 · quick")[2]
    assert val.startswith(" (") and "val split, not a test score" in val.split("\n")[0]
    assert val.count("| random |") == 1
    # build reads set headers only: the full_dataset set gets a table of its own, never IPC 1's
    ipc1 = readme.split("## digits · IPC 1 · quick")[1].split("##")[0]
    assert ipc1.count("| random |") == 2 and "fullflag" not in ipc1
    assert "## digits · full dataset · quick" in readme.replace("\\", "")


def test_malformed_entries_are_flagged_one_by_one_and_the_others_still_processed(
    board, runs, tmp_path
):
    b = tmp_path / "board"
    shutil.copytree(board, b)
    r, s = _honest(runs)
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(s, outside)
    bad = {
        "up.json": dict(r, synset={**r["synset"], "path": "../../x.safetensors"}),
        "abs.json": dict(r, synset={**r["synset"], "path": "/etc/passwd"}),
        "noacc.json": {k: v for k, v in r.items() if k != "accuracy"},
        "strmean.json": dict(r, accuracy={**r["accuracy"], "mean": "99"}),
        "link.json": dict(r, synset={**r["synset"], "path": "link.safetensors"}),
    }
    folder = b / "submissions/digits/ipc1/quick"
    for name, e in bad.items():
        (folder / name).write_text(json.dumps(e))
    (folder / "link.safetensors").symlink_to(outside)
    (folder / "garbage.json").write_bytes(b"\x00not json{")
    reasons = {
        "up.json": "'synset.path' '../../x.safetensors' must be a file name beside the entry",
        "abs.json": "'synset.path' '/etc/passwd' must be a file name beside the entry",
        "noacc.json": "missing key 'accuracy'",
        "strmean.json": "'accuracy.mean' must be number",
        "link.json": "'synset.path' 'link.safetensors' leads outside the board",
        "garbage.json": "is not valid JSON",
    }
    rc, lines = _verify_lines(b, tmp_path)
    assert rc == 1
    assert sorted(lines) == sorted([*reasons, *(f.name for f, _ in leaderboard.entries(board))])
    for name, why in reasons.items():
        assert lines[name].startswith("FLAG") and why in lines[name], (name, lines[name])
    assert [v.split()[0] for k, v in lines.items() if k not in reasons] == ["OK", "OK"]
    p = run_cli("leaderboard", "build", "--board", str(b), cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "2 submissions, 6 excluded" in p.stdout
    assert sum(ln.startswith("EXCLUDED") for ln in p.stdout.splitlines()) == 6
    readme, index = (b / "README.md").read_text(), (b / "index.html").read_text()
    assert readme.count("| random |") == 2 and index.count('data-key="accuracy" data-value') == 2
    for name in reasons:
        assert f"quick/{name}:" in readme and f"quick/{name}</code>:" in index


def test_readme_and_page_show_names_literally(runs, tmp_path):
    """A method name with HTML and Markdown in it is escaped in README.md as in index.html."""
    name = '<img src=x onerror="alert(1)">|*b*[l](j)'
    r, s = _honest(runs)
    real = synset.load(s)
    meta = {**real.meta, "method": {**real.meta["method"], "name": name}}
    new = synset.SyntheticSet(real.images * 0.9, real.labels, meta)
    path = synset.save(new, tmp_path / "odd.safetensors")
    b = tmp_path / "board"
    (b / "submissions/digits/ipc1/quick").mkdir(parents=True)
    r = dict(r, method=name, synset={"path": None, "sha256": new.meta["sha256"]})
    _place(b, r, path, "odd")
    leaderboard.build(b)
    readme, index = (b / "README.md").read_text(), (b / "index.html").read_text()
    assert "<img" not in readme and "<img src=x" not in index
    assert index.count("<img") == index.count('<img class="thumb"') == 1  # the set's thumbnail
    md = '&lt;img src=x onerror="alert(1)"&gt;\\|\\*b\\*\\[l\\](j)'
    assert f"| {md} |" in readme
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;|*b*[l](j)" in index


def test_an_imported_authors_set_is_a_marked_reference_row(runs, tmp_path):
    """`ddbench import --method M --code C` marks another code's output as the authors' set of
    M (imported:M, declaring M's protocol, the code kept in the set); the board shows it as
    "M (authors' set)" with the code, re-evaluated by verify rather than rerun; a method whose
    protocol needs a learned lr the file lacks, --code alone and an unknown method are refused."""
    from ddbench import reproduce

    r, s = _honest(runs)
    real = synset.load(s)
    torch.save(real.images * 0.9, tmp_path / "images_best.pt")
    torch.save(real.labels, tmp_path / "labels_best.pt")
    imp = ["import", "mtt", str(tmp_path / "images_best.pt"), "--dataset", "digits", "--out"]
    out, code = tmp_path / "ref.safetensors", "VICO-UoE/DatasetCondensation@53f63a6"
    p = run_cli(*imp, str(out), "--method", "dm", "--code", code, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    ref = synset.load(out)
    assert ref.meta["method"] == {"name": "imported:dm", "config": {"code": code}}
    assert ref.meta["protocol"] == "standard" and ref.images.equal(real.images * 0.9)
    p = run_cli(*imp, str(tmp_path / "q.safetensors"), "--method", "dm", "--protocol", "quick",
                cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0 and synset.load(tmp_path / "q.safetensors").meta["protocol"] == "quick"
    bad = tmp_path / "bad.safetensors"
    for args, why in ((["--method", "mtt"], "the imported file has none"),
                      (["--code", code], "give --method too"),
                      (["--method", "nosuch"], "unknown method 'nosuch'")):  # fmt: skip
        p = run_cli(*imp, str(bad), *args, cwd=tmp_path)
        assert p.returncode != 0 and why in p.stderr and not bad.exists(), p.stderr
    b = tmp_path / "board"
    (b / "submissions/digits/ipc1/quick").mkdir(parents=True)
    e = dict(r, method="imported:dm", synset={"path": None, "sha256": ref.meta["sha256"]})
    _place(b, e, out, "imported_dm")
    leaderboard.build(b)
    readme, index = (b / "README.md").read_text(), (b / "index.html").read_text()
    assert "| dm (authors' set) |" in readme and "imported:dm" not in readme
    assert "dm (authors&#x27; set)" in index and f"imported: {code}" in index
    assert "ddbench leaderboard verify" in index and "reproduce imported_dm" not in index
    with pytest.raises(DDBenchError, match="not ddbench's to rerun"):
        reproduce.distill_overrides(e, ref.meta)


def test_a_result_with_reused_seeds_is_submitted_without_a_local_path(runs, tmp_path):
    """`ddbench evaluate reuse=[...]` (here: every seed taken from the run's own result) makes a
    result the board accepts: the reused file is named by its checksum, not its path."""
    d = runs[0]
    e = tmp_path / "e"
    # quoted: the sweep's run dirs hold '='
    p = run_cli("evaluate", f"synset='{d / 'synset.safetensors'}'", "protocol=quick",
                "model.kwargs.net_width=16", "progress=false", f"reuse=['{d / 'result.json'}']",
                f"hydra.run.dir={e}", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads((e / "result.json").read_text())
    assert r["accuracy"] == json.loads((d / "result.json").read_text())["accuracy"]
    assert r["reused"][0]["seeds"] == [0] and r["reused"][0]["from"].startswith("sha256:")
    b = tmp_path / "board"
    p = run_cli("submit", str(e / "result.json"), "--synset", str(d / "synset.safetensors"),
                "--board", str(b), cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    (entry,) = b.rglob("random-*.json")
    assert json.loads(entry.read_text())["reused"] == r["reused"]


def test_submit_never_writes_outside_the_board(runs, tmp_path, capsys):
    """A symlinked dataset folder in the board does not carry the entry outside it."""
    d = runs[0]
    b, outside = tmp_path / "board", tmp_path / "outside"
    (b / "submissions").mkdir(parents=True)
    outside.mkdir()
    (b / "submissions" / "digits").symlink_to(outside)
    with pytest.raises(SystemExit) as e:
        main(["submit", str(d / "result.json"), "--synset", str(d / "synset.safetensors"),
              "--board", str(b)])  # fmt: skip
    assert e.value.code != 0 and "leads outside the board" in capsys.readouterr().err
    assert list(outside.rglob("*")) == []


# ----------------------------------------------------------------------------- the reference table


@pytest.fixture(scope="module")
def dm_run(tmp_path_factory, ddbench_data_root) -> Path:
    """A cheap DM run (2 iterations) under the same protocol and model as the random runs."""
    tmp = tmp_path_factory.mktemp("dm")
    p = run_cli("run", *[a.replace("random", "dm") for a in RUN], "method.iterations=2",
                "seed=0", f"hydra.run.dir={tmp}", cwd=tmp)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    return tmp


@pytest.fixture(scope="module")
def rich_board(runs, dm_run, tmp_path_factory) -> Path:
    """The two random runs, the DM run and a ConvNet-BN view of the first random set, built."""
    from ddbench.protocol import evaluate, write_result

    b = tmp_path_factory.mktemp("rich") / "board"
    for d in [*runs, dm_run]:
        leaderboard.submit(d / "result.json", d / "synset.safetensors", b, budget="CPU budget")
    s = synset.load(runs[0] / "synset.safetensors")
    s.meta["_path"] = str(runs[0] / "synset.safetensors")
    r = evaluate(s, leaderboard._pinned_protocol("quick"), "convnet_bn", {"net_width": 16},
                 device="cpu", progress=False)  # fmt: skip
    view = write_result(r, b.parent / "view" / "result.json")
    entry = leaderboard.submit(view, runs[0] / "synset.safetensors", b)
    assert len(leaderboard.entries(b)) == 3  # the view joined its set's entry
    assert [x["model"] for x in leaderboard.results_of(json.loads(entry.read_text()))] == [
        "convnet", "convnet_bn"]  # fmt: skip
    leaderboard.build(b)
    return b


def test_board_scores_costs_thumbnails_plots_and_cross_architecture(rich_board, tmp_path):
    b = rich_board
    es = leaderboard.entries(b)
    rnd = [e["accuracy"]["mean"] for _, e in es if e["method"] == "random"]
    dm = next(e for _, e in es if e["method"] == "dm")
    readme = (b / "README.md").read_text()
    ior = (dm["accuracy"]["mean"] - sum(rnd) / len(rnd)) / 100
    row = next(ln for ln in readme.splitlines() if ln.startswith("| ") and "| dm |" in ln)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[4] == f"{ior:+.3f}" and cells[5:8] == ["-", "-", "-"]  # no full-data reference
    assert "CPU budget" in row and "2 it." in row
    assert "## Cross-architecture: digits · IPC 1 · quick" in readme
    # a thumbnail per set (one row per class) beside it, and nothing else new in the folders
    from PIL import Image

    for f, _ in es:
        png = f.with_suffix(".png")
        w, h = Image.open(png).size
        assert h == 10 * 9 + 1 and w == 9 + 1  # ten 8x8 classes, one image each, 1-pixel lines
    page = (b / "index.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from the network
    assert page.count('<img class="thumb"') == 3 and page.count('<svg class="plot"') == 2
    assert page.count("ddbench leaderboard reproduce ") == 3
    # in Chromium: every thumbnail decodes, every plot draws, the IOR column sorts
    dom = _dump_dom_raw((b / "index.html").as_uri() + "#sort=ior:asc", tmp_path)
    assert 'data-thumbs="3:0"' in dom and 'data-plots="2:0"' in dom, dom[-500:]
    iors = [float(v) for v in re.findall(r'data-key="ior" data-value="([-0-9.e]+)"', dom)]
    assert len(iors) == 3 and iors == sorted(iors) and min(abs(v - ior) for v in iors) < 1e-5
    assert sum(iors) == pytest.approx(ior, abs=1e-5)  # the two random subsets' IORs cancel


def _dump_dom_raw(url: str, tmp: Path) -> str:
    p = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                        f"--user-data-dir={tmp / 'profile'}", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0 and "</html>" in p.stdout, p.stderr[-2000:]
    return p.stdout


def test_verify_flags_an_edited_cross_architecture_view(rich_board, runs, tmp_path):
    b = tmp_path / "board"
    shutil.copytree(rich_board, b)
    f = next(f for f, e in leaderboard.entries(b) if e.get("other_results"))
    e = json.loads(f.read_text())
    view = e["other_results"][0]
    bump = 15.0 if view["accuracy"]["mean"] < 80 else -15.0
    for d in view["accuracy"]["per_seed"]:
        d["accuracy"] += bump
    view["accuracy"]["mean"] += bump
    f.write_text(json.dumps(e))
    lines = []
    reports = leaderboard.verify(b, 1.0, device="cpu", out=lines.append)
    flagged = [r for r in reports if r["flags"]]
    assert [r["entry"] for r in flagged] == [str(f)], lines
    assert flagged[0]["flags"][0].startswith("quick/convnet_bn (net_width=16): re-evaluated"), (
        flagged[0]["flags"])  # fmt: skip
    # the same view submitted again is refused, and changes nothing
    before = snapshot(b)
    with pytest.raises(DDBenchError, match="already on the board"):
        leaderboard.submit(rich_board.parent / "view" / "result.json",
                           runs[0] / "synset.safetensors", b)  # fmt: skip
    assert snapshot(b) == before


def test_reproduce_reruns_the_distillation_and_lands_within_the_tolerance(rich_board, tmp_path):
    b = tmp_path / "board"
    shutil.copytree(rich_board, b)
    f = next(f for f, e in leaderboard.entries(b) if e["method"] == "dm")
    p = run_cli("leaderboard", "reproduce", f.stem, "--board", str(b), "--workdir",
                str(tmp_path / "work"), "--report", str(tmp_path / "rep.json"), cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["config_key"]["recorded"] == rep["config_key"]["rerun"]
    assert "method.iterations=2" in rep["command"] and rep["tolerance"] == 1.0
    assert rep["within"] and abs(rep["difference"]) <= 1.0
    assert f"REPRODUCED {f}" in p.stdout
    # a random subset: the same indices again, the same score
    from ddbench import reproduce

    f = next(f for f, e in leaderboard.entries(b) if e["method"] == "random")
    rep = reproduce.reproduce(b, f.name, tmp_path / "work_random", device="cpu", out=print)
    assert rep["same_set"] and rep["within"] and rep["difference"] == 0.0


def test_reproduce_tolerance_and_the_recorded_config_as_overrides():
    from ddbench import reproduce

    four = {"mean": 50.0, "std": 1.0, "per_seed": [{}] * 4}  # standard error 0.5
    assert reproduce.tolerance(four, four) == pytest.approx(2 * math.sqrt(0.5))
    assert reproduce.tolerance({**four, "std": 0.1}, {**four, "std": 0.5}) == 1.0  # at least 1
    meta = {"dataset": "digits", "ipc": 1, "seed": 3, "space": {"zca": False},
            "method": {"name": "dm", "config": {"_target_": "x.DM", "name": "dm",
                                                "iterations": 2, "init": "real's",
                                                "nested": {"a": [1, 2.5], "b": None},
                                                "encoder": {"epochs": 5,
                                                            "model_kwargs": {"net_width": 64}}}},
            "distill_config": {"model": "convnet", "model_kwargs": {"net_width": 16},
                               "precision": "bf16", "kernels": "off", "zca": False}}  # fmt: skip
    e = {"model": "lenet", "model_kwargs": {}}
    assert reproduce.distill_overrides(e, meta) == [
        "method=dm", "dataset=digits", "ipc=1", "seed=3", "model=convnet", "precision=bf16",
        "model.kwargs.net_width=16", "kernels=off", "method.iterations=2",
        "method.init='real\\'s'", "method.nested.a=[1,2.5]", "method.nested.b=null",
        "method.encoder.epochs=5", "++method.encoder.model_kwargs.net_width=64",
    ]  # fmt: skip
    with pytest.raises(DDBenchError, match="does not record its seed"):
        reproduce.distill_overrides(e, {k: v for k, v in meta.items() if k != "seed"})
