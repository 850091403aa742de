"""The leaderboard: submit (with every rejection), build, the page in headless Chromium, verify.

Honest entries are real runs on digits under the pinned ``quick`` protocol (300 epochs, one
seed: a few seconds there) with a narrow ConvNet (the model is reported beside the protocol).
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from ddbench import leaderboard, synset
from ddbench.cli import main

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


@pytest.mark.parametrize("case", [bad_schema_missing, bad_schema_type, bad_sha256, bad_test_copy,
                                  bad_pickle, bad_oversize_set, bad_oversize_json,
                                  bad_unpinned_protocol, bad_overridden_protocol, bad_label_bytes,
                                  bad_val_split, bad_budget], ids=lambda f: f.__name__)  # fmt: skip
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
