"""Shared fixtures: a test data root, the digits train split, and a builder of valid sets.

``DDBENCH_DATA`` points at ``$DDBENCH_TEST_DATA`` if set, else at the persistent
``~/.cache/ddbench/test-data``, so datasets are prepared once (per machine or CI cache), not per
test session. Tests that prepare data of their own (image folders, tiny IDX files) point
``DDBENCH_DATA`` at a ``tmp_path`` instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ddbench.data import RealDataset, load_split
from ddbench.method import Method, Task
from ddbench.synset import SyntheticSet

TEST_DATA_ROOT = Path(
    os.environ.get("DDBENCH_TEST_DATA") or Path.home() / ".cache" / "ddbench" / "test-data"
).expanduser()


@pytest.fixture(scope="session", autouse=True)
def ddbench_data_root() -> Path:
    """Point ``DDBENCH_DATA`` at the shared test data root for the whole session."""
    TEST_DATA_ROOT.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDBENCH_DATA", str(TEST_DATA_ROOT))
        yield TEST_DATA_ROOT


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """A fresh ``DDBENCH_CACHE`` (teachers, scores) per test: no test sees another's cache."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DDBENCH_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def split_cache(ddbench_data_root: Path) -> Callable[[str, str], RealDataset]:
    """``get(dataset, split)``: ``load_split`` once per session for each pair."""
    cache: dict[tuple[str, str], RealDataset] = {}

    def get(dataset: str, split: str) -> RealDataset:
        if (dataset, split) not in cache:
            cache[dataset, split] = load_split(dataset, split)
        return cache[dataset, split]

    return get


@pytest.fixture(scope="session")
def digits_train(split_cache) -> RealDataset:
    return split_cache("digits", "train")


class FixtureMethod(Method):
    name = "test_fixture"


@pytest.fixture
def make_set(split_cache) -> Callable[..., SyntheticSet]:
    """``make_set(dataset='digits', ipc=2, soft=False, seed=0)``: a valid set of real images.

    The first ``ipc`` training images of each class, normalised, sorted by class, with the
    metadata :meth:`ddbench.method.Task.make_set` gives every set. ``soft=True`` gives
    ``[N, K]`` float labels whose argmax is the image's class.
    """

    def build(
        dataset: str = "digits", ipc: int = 2, soft: bool = False, seed: int = 0
    ) -> SyntheticSet:
        train = split_cache(dataset, "train")
        g = torch.Generator().manual_seed(seed)
        task = Task(
            train=train,
            ipc=ipc,
            model_factory=lambda: None,
            generator=g,
            seed=seed,
            device=torch.device("cpu"),
        )
        idx = torch.cat([train.indices_of(c)[:ipc] for c in range(train.num_classes)])
        images = task.normalize(train.images[idx])
        labels = train.labels[idx].clone()
        if soft:
            k = train.num_classes
            noise = torch.rand(len(labels), k, generator=g)
            noise = noise / noise.sum(1, keepdim=True)
            labels = 0.7 * torch.nn.functional.one_hot(labels, k).float() + 0.3 * noise
        method = FixtureMethod(pick="first_ipc", soft=soft)
        return task.make_set(images, labels, method=method)

    return build
