"""Every method makes the same sets as the committed reference (bench/same_sets.py, tiny budget):
bit-identical where the arithmetic is unchanged, otherwise within float rounding."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
REFERENCE = ROOT / "tests" / "data" / "same_sets_reference.safetensors"


def _load_script():
    spec = importlib.util.spec_from_file_location("same_sets", ROOT / "bench" / "same_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


same_sets = _load_script()
METHODS = list(same_sets.nodes("tiny"))


@pytest.fixture(scope="module")
def reference():
    return same_sets.read_reference(REFERENCE)[0]


@pytest.fixture(scope="module")
def stored_nodes():
    return same_sets.read_reference(REFERENCE)[1]["nodes"]


def _failures(rows):
    return [f"{r['key']}: max abs diff {r['diff']:.3g} {r['note']}" for r in rows if not r["ok"]]


@pytest.mark.parametrize("method", METHODS)
def test_the_method_makes_the_reference_sets(method, reference, stored_nodes):
    got, _ = same_sets.distill(method, "tiny")
    rows = same_sets.check_method(method, got, reference)
    failures = _failures(rows)
    if stored_nodes.get(method) != same_sets.nodes("tiny")[method]:
        failures.append("(the method's node differs from the one the reference was made with)")
    assert rows and not _failures(rows), failures


def test_a_changed_setting_is_caught(reference, monkeypatch):
    """DM with twice the image lr makes other images: the check fails on them, not on labels."""
    nodes = same_sets.nodes

    def doubled(budget):
        out = nodes(budget)
        out["dm"]["lr_img"] *= 2
        return out

    monkeypatch.setattr(same_sets, "nodes", doubled)
    got, _ = same_sets.distill("dm", "tiny")
    failed = {r["key"] for r in same_sets.check_method("dm", got, reference) if not r["ok"]}
    assert failed == {"dm/ipc1/images", "dm/ipc2/images"}


def test_the_comparison_tolerates_rounding_only():
    import torch

    a = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert same_sets.compare(a.clone(), a) == (True, True, 0.0)
    ok, same, diff = same_sets.compare(a * (1 + 1e-6), a)  # float32 rounding
    assert ok and not same and 0 < diff < 1e-5
    assert not same_sets.compare(a + 1e-3, a)[0]  # a changed step
    half = a.half()
    assert same_sets.compare((half.float() * (1 + 4e-4)).half(), half)[0]  # one float16 ulp
    assert not same_sets.compare((a * 1.01).half(), half)[0]
    labels = torch.arange(10)
    assert not same_sets.compare(labels.flip(0), labels)[0]  # integers: exact
    assert not same_sets.compare(a[:10], a)[0]  # shape
