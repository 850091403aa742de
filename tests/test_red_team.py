"""No traceback on any input: the red-team corpus (``red_team_corpus.py``), each bad input read
through its Python call and a handful through the real command line.

Every bad input must raise :class:`DDBenchError` with a message naming the problem (the case's
word), and on the command line end in one ``ddbench: error:`` line, a non-zero exit, no
traceback and no hang; the inputs valid by design must load. ``bench/red_team.py`` runs every
case through the command line.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from red_team_corpus import Case, base_set, write_corpus, write_dc_file

from ddbench import synset
from ddbench.cli import main
from ddbench.data import get_spec
from ddbench.errors import DDBenchError, os_error_message


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ddbench_data_root) -> tuple[Path, dict[str, Case]]:
    root = tmp_path_factory.mktemp("red_team")
    cases = write_corpus(root)
    yield root, {c.name: c for c in cases}
    for c in root.rglob("*"):  # the read-only ones, for the cleanup
        if not c.is_symlink():
            c.chmod(0o755)


def _outcome(call) -> tuple[str, str]:
    """("ok" | "error" | the unexpected exception's type, message), the call run in a thread
    so that a hang fails the test instead of stopping it."""
    out: list[tuple[str, str]] = []

    def target():
        try:
            call()
            out.append(("ok", ""))
        except DDBenchError as e:
            out.append(("error", str(e)))
        except Exception as e:  # an unexpected exception is what the corpus hunts for
            out.append((type(e).__name__, str(e)))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout=60)
    return out[0] if out else ("hang", "")


def test_every_file_case_is_one_clear_error_or_loads_by_design(corpus) -> None:
    root, cases = corpus
    wrong = []
    for case in cases.values():
        if case.call is None or case.skip:
            continue
        kind, message = _outcome(case.call)
        if case.expect:
            good = kind == "error" and re.search(case.expect, message, re.IGNORECASE)
        else:
            good = kind == "ok"
        if not good:
            wrong.append(f"{case.name}: {kind}: {message[:200]} (expected {case.expect or 'ok'!r})")
    assert not wrong, "\n".join(wrong)
    # the corpus covers every kind of input it claims to
    assert sum(c.call is not None for c in cases.values()) >= 50
    assert not (root / "pickle_ran").exists()  # no pickle ran, in a set file or a .pt file


def test_an_unreadable_file_is_named_so(corpus, monkeypatch) -> None:
    """As root, a mode-000 file is still readable (the corpus case is skipped): the refusal of
    an unreadable file is checked here with the permission check and open() failing for it."""
    import os

    root, _ = corpus
    path = root / "good.safetensors"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) != str(path) and real_access(p, mode))
    with pytest.raises(DDBenchError, match="permission denied"):
        synset.load(path)
    monkeypatch.setattr(os, "access", real_access)

    def denied(p, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(DDBenchError, match=r"cannot read it \(permission denied\)"):
        synset.read_header(path)


def test_a_set_without_checksum_loads_with_a_warning_or_is_refused_where_required(
    corpus, caplog
) -> None:
    root, _ = corpus
    path = root / "no_checksum.safetensors"
    with caplog.at_level(logging.WARNING, logger="ddbench"):
        s = synset.load(path)
    assert len(s) == 20 and "no checksum" in caplog.text and str(path) in caplog.text
    with pytest.raises(DDBenchError, match="no checksum"):
        synset.load(path, require_checksum=True)
    assert synset.load(root / "good.safetensors", require_checksum=True).meta["sha256"]


@pytest.mark.parametrize("name", ["no_ipc", "ipc_zero"])
def test_a_set_without_ipc_counts_its_largest_class(corpus, name: str) -> None:
    root, _ = corpus
    s = synset.load(root / f"{name}.safetensors")
    assert s.meta["ipc"] == 2 and s.ipc == 2
    # the budget holds against the counted ipc: 3 images of class 0 make it ipc 3, not 2
    extra = synset.SyntheticSet(
        torch.cat([s.images, s.images[:1]]), torch.cat([s.labels, s.labels[:1]]), dict(s.meta)
    )
    extra.meta.pop("ipc")
    saved = synset.load(synset.save(extra, root / f"{name}_resaved.safetensors"))
    assert saved.meta["ipc"] == 3


def test_an_empty_set_is_never_written(tmp_path: Path) -> None:
    s = base_set()
    empty = synset.SyntheticSet(s.images[:0], s.labels[:0], dict(s.meta))
    with pytest.raises(DDBenchError, match="empty"):
        synset.save(empty, tmp_path / "e.safetensors")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("weights", torch.full((20,), float("nan")), "NaN/inf weights"),
        ("weights", torch.ones(19), r"weights must be \[N\]"),
        ("lr", torch.ones(3), "learned lr must be one"),
        ("lr", torch.tensor([-0.1]), "positive"),
    ],
)
def test_save_refuses_bad_weights_and_lr(tmp_path: Path, field, value, match) -> None:
    s = base_set()
    setattr(s, field, value)
    with pytest.raises(DDBenchError, match=match):
        synset.save(s, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


def test_uint8_images_import_scaled_to_the_normalised_space(tmp_path: Path) -> None:
    spec = get_spec("digits")
    s = base_set()
    pixels = torch.zeros(20, 1, 8, 8, dtype=torch.uint8)
    pixels[:, :, :4] = 255  # both ends of the pixel range
    f = write_dc_file(tmp_path / "res_DC_u8.pt", pixels, s.labels)
    imp = synset.import_dc(f, "digits")
    assert imp.images.dtype == torch.float32
    low, high = (0 - spec.mean[0]) / spec.std[0], (1 - spec.mean[0]) / spec.std[0]
    torch.testing.assert_close(imp.images[:, :, 4:], torch.full((20, 1, 4, 8), low))
    torch.testing.assert_close(imp.images[:, :, :4], torch.full((20, 1, 4, 8), high))
    # real pixels: the set's own images back, within the 8-bit rounding
    real = (s.pixels() * 255).round().to(torch.uint8)
    imp = synset.import_dc(write_dc_file(tmp_path / "res_DC_real.pt", real, s.labels), "digits")
    assert (imp.images - s.images).abs().max() <= 0.5 / 255 / spec.std[0] + 1e-5
    with pytest.raises(DDBenchError, match="uint8 images cannot be ZCA"):
        torch.save(real, tmp_path / "images_best.pt")
        torch.save(s.labels, tmp_path / "labels_best.pt")
        synset.import_mtt(tmp_path / "images_best.pt", "digits", zca=True)


@pytest.mark.parametrize(
    "name, method",
    [
        ("res_DM_FashionMNIST_ConvNet_10ipc.pt", "dm"),
        ("res_DSA_MNIST_ConvNet_1ipc.pt", "dsa"),
        ("res_DC_MNIST_ConvNet_1ipc.pt", "dc"),
        ("res_DataDAM_MNIST_ConvNet_1ipc.pt", "datadam"),
        ("renamed.pt", "dc"),
    ],
)
def test_a_published_file_imports_as_the_method_its_name_gives(tmp_path, name, method) -> None:
    s = base_set()
    f = write_dc_file(tmp_path / name, s.images, s.labels)
    assert synset.import_dc(f, "digits").meta["method"]["name"] == f"imported:{method}"
    if name.startswith("res_D"):
        assert synset.import_any(f, "digits").meta["method"]["name"] == f"imported:{method}"


def test_a_full_disk_is_one_clear_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """ENOSPC in the middle of writing a set: as an OSError, and as safetensors' own error."""
    import safetensors.torch

    s = base_set()
    src = write_dc_file(tmp_path / "res_DC_x.pt", s.images, s.labels)
    out = tmp_path / "out" / "x.safetensors"
    for error in (
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ):

        def full(tensors, filename, metadata=None, error=error):
            Path(filename).write_bytes(b"partial")
            raise error

        monkeypatch.setattr(safetensors.torch, "save_file", full)
        with pytest.raises(SystemExit) as e:
            main(["import", "dc", str(src), "--dataset", "digits", "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code != 0 and len(err) == 1, err
        assert err[0].startswith("ddbench: error: ") and "no space left on device" in err[0]
        assert not out.exists() and not list(out.parent.iterdir())  # no partial file left


def test_os_error_message_names_the_root_and_its_variable(tmp_path: Path) -> None:
    e = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "digits"))
    msg = os_error_message(e, [(tmp_path / "data", "data root", "DDBENCH_DATA")])
    assert msg.startswith(f"{tmp_path / 'data' / 'digits'}: permission denied")
    assert "set DDBENCH_DATA to a writable folder" in msg
    e = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    assert "no space left on device (free some space" in os_error_message(e)
    assert os_error_message(OSError(errno.EROFS, "Read-only file system")).startswith(
        "read-only file system"
    )


# The command line: one `ddbench: error:` line, exit != 0, no traceback (a hang fails the run).
CLI_CASES = [
    "fifo",
    "symlink_loop",
    "deep_metadata",
    "dc_truncated",
    "dc_code_on_load",
    "indices_fifo",
    "cli_evaluate_dataset_disagrees",
    "cli_unquoted_unicode_path",
    "cli_unwritable_import_out",
    "cli_read_only_data_root",
    "cli_submit_deep_result",
]


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_case_is_one_error_line(corpus, name: str, monkeypatch) -> None:
    root, cases = corpus
    case = cases[name]
    if case.skip:
        pytest.skip(case.skip)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    p = run_cli(*case.argv, cwd=root, timeout=600)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("ddbench: error: ")]
    assert len(errors) == 1, p.stderr
    assert re.search(case.expect, errors[0], re.IGNORECASE), errors[0]


def test_cli_evaluate_keeps_a_hostile_header_out_of_the_run_path(corpus, tmp_path) -> None:
    """A set whose header names dataset and method ``../../escape``: the run directory, named
    after them, stays under ``outputs/``."""
    _, cases = corpus
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    p = run_cli(*cases["cli_evaluate_header_path_parts"].argv, cwd=work, timeout=600)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert "ddbench: error: unknown dataset '../../escape'" in p.stderr
    assert sorted(x.name for x in tmp_path.rglob("*") if "escape" in x.name) == [
        "_.._escape",
        "_.._escape",
    ]
    assert all(x.is_relative_to(work / "outputs") for x in tmp_path.rglob("*_escape"))


def test_cli_evaluate_accepts_dataset_for_a_published_file(corpus) -> None:
    """`ddbench evaluate synset=res_DM_....pt dataset=NAME`: the file's dataset, scored."""
    root, cases = corpus
    p = run_cli(*cases["cli_evaluate_published_with_dataset"].argv, cwd=root, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "imported:dm digits ipc=2" in p.stdout
