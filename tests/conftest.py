"""Shared fixtures: a test data root, the digits train split, tiny digits teachers trained once
per session (``with_teachers``), and a builder of valid sets; and
the helpers of the image-distillation tests (test_matching.py, test_datadam_fyi.py): a task on
digits with a tiny ConvNet, a method's loss on fixed draws, the saved-set check, the resume check.

``DDBENCH_DATA`` points at ``$DDBENCH_TEST_DATA`` if set, else at the persistent
``~/.cache/ddbench/test-data``, so datasets are prepared once (per machine or CI cache), not per
test session (a lock lets parallel workers, ``pytest -n``, share it). Tests that prepare data of
their own (image folders, tiny IDX files) point ``DDBENCH_DATA`` at a ``tmp_path`` instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ddbench import synset
from ddbench.augment import DSA
from ddbench.data import RealDataset, load_split
from ddbench.method import Checkpointer, Method, Settings, Task
from ddbench.models import create_model
from ddbench.synset import SyntheticSet

TEST_DATA_ROOT = Path(
    os.environ.get("DDBENCH_TEST_DATA") or Path.home() / ".cache" / "ddbench" / "test-data"
).expanduser()


if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N`: N workers share the cores, so each (and the processes it starts) uses one
    # thread; otherwise N workers x all cores would oversubscribe the CPU.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def teacher_store(tmp_path_factory, ddbench_data_root) -> Callable[..., None]:
    """``install(cache, *configs)``: copy the digits teachers of ``configs`` (fields of
    :class:`ddbench.teachers.TeacherConfig`) into the cache folder ``cache``; each is trained
    once per session, into a cache of its own."""
    from ddbench.teachers import TeacherConfig, get_teacher, teacher_path

    root = tmp_path_factory.mktemp("teachers")
    trained: dict[str, Path] = {}  # the config's key -> its file under root

    def install(cache: Path, *configs: dict) -> None:
        for cfg in map(TeacherConfig.from_config, configs):
            key = cfg.key("digits")
            if key not in trained:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setenv("DDBENCH_CACHE", str(root))
                    get_teacher("digits", cfg, device="cpu", progress=False)
                    trained[key] = teacher_path("digits", cfg)
            dest = cache / trained[key].relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(trained[key], dest)

    return install


def with_teachers(*configs: dict):
    """An autouse fixture for a test module (``cached_teachers = with_teachers(A, B)``): each
    test's fresh cache starts with the digits teachers ``configs``, trained once per session
    (a cache hit, no training)."""

    @pytest.fixture(autouse=True)
    def cached_teachers(teacher_store, isolated_cache) -> None:
        teacher_store(isolated_cache, *configs)

    return cached_teachers


class FixtureMethod(Method):
    @dataclass
    class Settings(Settings):
        pick: str = "first_ipc"
        soft: bool = False

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


# ------------------------------------------------------------------------ image distillation


@pytest.fixture(scope="module")
def one_thread():
    """Tiny nets on 8x8 images: one thread is faster than several, and immune to a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Rec:
    """A logger that keeps the metrics it is sent."""

    def __init__(self):
        self.seen: list[tuple[int | None, dict]] = []

    def metrics(self, values, step=None):
        self.seen.append((step, dict(values)))


def task_maker(train, ipc: int, model_factory: Callable = lambda: None) -> Callable[..., Task]:
    """``build(seed=0, ipc=ipc, checkpointer=None)``: a CPU task on ``train`` with its generator
    seeded by ``seed``, no augmentation and no checkpoints unless given (``model_factory``:
    None for teacher-based methods, which build no network from the task)."""

    def build(seed: int = 0, ipc: int = ipc, checkpointer: Checkpointer | None = None) -> Task:
        return Task(
            train=train, ipc=ipc, model_factory=model_factory,
            generator=torch.Generator().manual_seed(seed), seed=seed, device=torch.device("cpu"),
            checkpointer=checkpointer or Checkpointer(None),
        )  # fmt: skip

    return build


def make_task(
    train, ipc, *, seed=0, directory=None, key="k", every=0, val=None, logger=None, strategy=None
):
    """A task on ``train`` (digits) with a width-16 ConvNet-3 and DSA (``strategy``, default the
    dataset's); ``directory``/``key``/``every``: its checkpointer."""
    return Task(
        train=train,
        ipc=ipc,
        model_factory=lambda: create_model("convnet", 1, 10, (8, 8), net_width=16),
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
        device=torch.device("cpu"),
        augment=DSA(strategy or train.spec.dsa_strategy),
        logger=logger,
        checkpointer=Checkpointer(directory, key, every),
        val_loader=val,
    )


def fixed_loss(method, task, images, seeds=(101, 102, 103)) -> float:
    """The method's matching loss on fixed networks, real batches and DSA draws."""
    state = task.generator.get_state()
    total = 0.0
    for s in seeds:
        task.generator.manual_seed(s)
        net = method.fresh_net(task)
        total += float(method.matching_loss(task, net, images.detach()).detach())
    task.generator.set_state(state)
    return total / len(seeds)


def assert_valid_set(s, tmp_path, ipc, name):
    """``s`` saves and loads back intact: ``ipc`` finite digits images per class, hard labels."""
    path = synset.save(s, tmp_path / f"{name}.safetensors")
    back = synset.load(path)
    assert back.images.shape == (10 * ipc, 1, 8, 8) and torch.isfinite(back.images).all()
    assert back.labels.dtype == torch.int64
    assert torch.bincount(back.labels, minlength=10).tolist() == [ipc] * 10
    assert back.meta["ipc"] == ipc and back.meta["method"]["name"] == name
    assert torch.equal(back.images, s.images.float())
    return back


class Killed(Exception):
    pass


def kill_training_after_epoch(monkeypatch, epoch: int) -> Callable:
    """Make ``engine.train`` raise :class:`Killed` right after its checkpoint of ``epoch`` (a
    killed teacher/expert training); returns the real ``engine.train`` to restore."""
    from ddbench import engine

    real_train = engine.train

    def killed(*a, checkpoint, **k):
        def cb(state):
            checkpoint(state)
            if state["epoch"] == epoch:
                raise Killed

        return real_train(*a, checkpoint=cb, **k)

    monkeypatch.setattr(engine, "train", killed)
    return real_train


def counting(cls):
    """A subclass of the method ``cls`` that records the iterations it runs (``calls``) and
    can be 'killed' at one (``kill_at``)."""

    class Counting(cls):
        def __init__(self, kill_at=None, **config):
            super().__init__(**config)
            self.kill_at, self.calls = kill_at, []

        def step(self, task, images, labels, it):
            if it == self.kill_at:
                raise Killed
            self.calls.append(it)
            return super().step(task, images, labels, it)

    Counting.__name__ = Counting.__qualname__ = f"Counting{cls.__name__}"
    return Counting


def check_resume(cls, cfg, train, tmp_path) -> None:
    """A run of ``cls(**cfg)`` (4 iterations, ipc 2) killed at iteration 3 with a checkpoint
    every 2 resumes from iteration 2 and ends exactly as an uninterrupted run; another
    checkpoint key starts afresh."""
    counted = counting(cls)
    reference = counted(**cfg).distill(make_task(train, 2))
    killed = counted(kill_at=3, **cfg)
    with pytest.raises(Killed):
        killed.distill(make_task(train, 2, directory=tmp_path, key="a", every=2))
    assert killed.calls == [0, 1, 2]
    step, _, state = Checkpointer(tmp_path, "a").load()
    assert step == 2 and state["seconds"] > 0
    from ddbench.method import run_distill

    resumed = counted(**cfg)
    s = run_distill(resumed, make_task(train, 2, directory=tmp_path, key="a", every=2))
    assert s.meta["cost"]["resumed_seconds"] == pytest.approx(state["seconds"])
    assert s.meta["cost"]["wall_seconds"] > state["seconds"]  # the cost counts the killed run
    assert resumed.calls == [2, 3] and s.meta["distillation"]["resumed_from"] == 2
    assert s.meta["distillation"]["loop_seconds"] > state["seconds"]  # time before the kill counts
    # images, momentum and the generator's state were restored: same result as no kill at all
    assert torch.allclose(s.images, reference.images, atol=1e-6)
    assert_valid_set(s, tmp_path, 2, resumed.name)
    other = counted(**cfg)
    other.distill(make_task(train, 2, directory=tmp_path, key="b", every=2))
    assert other.calls == [0, 1, 2, 3]


def check_lowers_loss(method, train, ipc: int, tmp_path) -> SyntheticSet:
    """``method`` run on a tiny task lowers its own matching loss on fixed draws, logs a finite
    loss every iteration, and makes a valid set (returned as saved and re-loaded)."""
    import math

    rec = Rec()
    task = make_task(train, ipc, logger=rec)
    init, _ = method.init_images(make_task(train, ipc))
    s = method.distill(task)
    assert not torch.equal(s.images, init)
    before, after = fixed_loss(method, task, init), fixed_loss(method, task, s.images)
    assert after < 0.95 * before, (before, after)
    assert [step for step, _ in rec.seen] == list(range(method.iterations))
    assert all(math.isfinite(v["loss"]) for _, v in rec.seen)
    assert s.meta["protocol"] == method.protocol
    assert s.meta["distillation"]["iterations"] == method.iterations
    return assert_valid_set(s, tmp_path, ipc, method.name)
