"""Coreset selection: the shared machinery of methods that return real training images.

A selection method (:class:`Selection`) returns ``ipc`` *real* training images per class,
records the chosen train-split indices in the set (``meta["indices"]``), never picks an image
twice, and is deterministic for a fixed task seed. What a selection method gets from here:

- :class:`Selection`: ``distill`` (check the budget, call ``select``, check the picks, wrap the
  real images in a set), the settings of the networks it trains (``lr``, ``batch_size``,
  ``chunk``) and a per-run cache of its expensive stage (``_cached``, ``_trained_model``,
  through ``task.checkpointer``, so a restarted run with the same config does not redo it);
- :class:`ScoreSelection`: score every train image, keep the top of each class
  (:func:`select_top`), with the scores cached across runs under ``$DDBENCH_CACHE/scores``;
- scoring/feature models built from ``task.model_factory`` and trained with the one engine
  (:func:`train_models`), their seeds drawn from ``task.generator`` (:func:`draw_seeds`);
- :func:`model_outputs`: the engine's prediction loop (:func:`ddbench.engine.predict_batches`:
  batched, ``torch.no_grad``, eval mode, the task's precision, on ``task.device``), giving
  embeddings and/or logits of train images, chunk by chunk, so that nothing of size ``N x N``
  (or all ``N`` embeddings at once) is ever held; :func:`class_features` for one class;
- per-class selection in a feature space: :func:`herding_select`, :func:`kcenter_select`
  (O(n) memory beyond the features) and :func:`pick_per_class`;
- :func:`import_indices`: a list of train-split indices chosen by another code base (DeepCore's
  ``subset["indices"]``, data_diet's pruned index set) as a set of the real images
  (``ddbench import indices``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ddbench.augment import parse_strategy
from ddbench.cache import cache_root
from ddbench.data import load_split
from ddbench.engine import Recipe, build_models, predict_batches, train
from ddbench.errors import DDBenchError
from ddbench.method import Method, Settings, Task, check_class_budget
from ddbench.synset import SyntheticSet, _imported, _torch_load, atomic_write

__all__ = [
    "ScoreSelection",
    "Selection",
    "augment_strategy",
    "check_augment",
    "check_budget",
    "check_choice",
    "check_positive",
    "class_features",
    "draw_seeds",
    "herding_select",
    "import_indices",
    "kcenter_select",
    "load_indices",
    "model_outputs",
    "pick_per_class",
    "select_top",
    "train_models",
]

_SEED_RANGE = 2**31 - 1


# ------------------------------------------------------------------------------ checks


def check_choice(method: str, option: str, value: object, allowed: tuple[str, ...]) -> None:
    """A one-line error unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise DDBenchError(f"{method}: {option}={value!r}; choose one of {', '.join(allowed)}")


def check_positive(method: str, option: str, value: object, minimum: int = 1) -> None:
    """A one-line error unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DDBenchError(f"{method}: {option} must be an int >= {minimum}, got {value!r}")


def check_augment(method: str, value: object) -> None:
    """A one-line error unless ``value`` is ``none``, ``auto`` or a valid DSA strategy."""
    if not isinstance(value, str):
        raise DDBenchError(f"{method}: augment must be none, auto or a DSA strategy, got {value!r}")
    if value not in ("none", "auto"):
        parse_strategy(value)


def check_budget(task: Task) -> None:
    """Every class must have at least ``ipc`` train images (selection never duplicates)."""
    check_class_budget(task, "a selection")


# ------------------------------------------------------------------------------ models


def draw_seeds(task: Task, n: int) -> list[int]:
    """``n`` model seeds drawn from the task's generator (so they follow the task seed)."""
    return torch.randint(_SEED_RANGE, (n,), generator=task.generator).tolist()


def train_models(
    task: Task,
    seeds: list[int],
    epochs: int,
    *,
    lr: float,
    batch_size: int,
    desc: str,
    build: Callable[[], nn.Module] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    augment: str = "none",
    schedule: str = "constant",
) -> list[nn.Module]:
    """Train one ``task.model_factory()`` per seed on the whole train split with the engine.

    SGD (momentum 0.9, weight decay 5e-4) at ``lr``; ``schedule``: ``constant`` or ``step``
    (the lr times 0.2 at 30, 60 and 80 % of ``epochs``: Toneva et al.'s and Paul et al.'s
    60/120/160 of 200 epochs, see docs/methods.md), or ``cosine``; ``augment``: a DSA strategy,
    ``auto`` (the dataset's, ``task.spec.dsa_strategy``) or ``none``.
    ``on_epoch``/``on_batch``: the engine's hooks (the models then train one at a time, in
    place). ``epochs=0`` returns the models at initialisation.
    """
    build = build or task.model_factory
    if epochs == 0:
        return [m.eval() for m in build_models(build, seeds, task.device)]
    recipe = Recipe(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        schedule=schedule,
        milestones=(0.3, 0.6, 0.8),
        gamma=0.2,
        augment=augment_strategy(task, augment),
        precision=task.precision,
    )
    images = task.normalize(task.train.images)
    hooked = on_epoch is not None or on_batch is not None
    return train(
        build,
        seeds,
        images,
        task.train.labels,
        recipe,
        device=task.device,
        parallel=False if hooked else "auto",  # the hooks need in-place models
        progress=desc,
        on_epoch=on_epoch,
        on_batch=on_batch,
    ).models


def augment_strategy(task: Task, augment: str) -> str | None:
    """The DSA strategy of a scoring recipe: ``none`` -> None, ``auto`` -> the dataset's
    (``task.spec.dsa_strategy``), else the strategy string itself."""
    if augment == "none":
        return None
    return task.spec.dsa_strategy if augment == "auto" else augment


@torch.no_grad()
def model_outputs(
    task: Task,
    models: list[nn.Module],
    idx: torch.Tensor | None = None,
    *,
    chunk: int = 256,
    embed: bool = False,
    logits: bool = True,
    desc: str = "",
) -> Iterator[tuple[slice, torch.Tensor | None, torch.Tensor | None]]:
    """Run ``models`` over the train images ``idx`` (all if None), ``chunk`` images at a time.

    Yields ``(rows, embeddings [K,B,F] or None, logits [K,B,C] or None)`` per chunk, where
    ``rows`` is the slice of ``idx`` the chunk covers; outputs are float32 on ``task.device``.
    Models are put in eval mode (callers that keep training must switch them back).
    """

    def output(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        e = m.embed(x)
        return (e if embed else None, m.classifier(e) if logits else None)

    images = task.train.images
    n = len(images) if idx is None else len(idx)
    batches = predict_batches(
        models, images, index=idx, transform=task.normalize, batch_size=chunk,
        precision=task.precision, output=output,
    )  # fmt: skip
    for rows, (e, out) in task.progress(batches, total=math.ceil(n / chunk), desc=desc):
        yield rows, e, out


def class_features(task: Task, model: nn.Module, c: int, chunk: int) -> torch.Tensor:
    """Embeddings ``[n_c, F]`` of the train images of class ``c`` (one class at a time)."""
    idx = task.train.indices_of(c)
    feats = None
    for rows, e, _ in model_outputs(task, [model], idx, chunk=chunk, embed=True, logits=False):
        if feats is None:
            feats = torch.empty(len(idx), e.shape[-1], device=task.device)
        feats[rows] = e[0]
    return feats


# ------------------------------------------------------------------------------ picking


def select_top(task: Task, scores: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """The ``ipc`` highest (``descending``) or lowest scored train images of each class.

    Ties are broken by a random permutation drawn from ``task.generator``. Returns train-split
    indices, class by class, best first.
    """
    scores = scores.detach().cpu()
    picked = []
    for c in range(task.num_classes):
        idx = task.train.indices_of(c)
        perm = torch.randperm(len(idx), generator=task.generator)
        order = torch.argsort(scores[idx[perm]], descending=descending, stable=True)
        picked.append(idx[perm[order[: task.ipc]]])
    return torch.cat(picked)


def pick_per_class(
    task: Task,
    features_of: Callable[[int], torch.Tensor],
    pick: Callable[[torch.Tensor], torch.Tensor],
    desc: str = "",
) -> torch.Tensor:
    """Train-split indices, class by class: ``pick(features_of(c))`` gives the rows of class
    ``c``'s train images (in ``task.train.indices_of(c)`` order) to keep."""
    picked = []
    for c in task.progress(range(task.num_classes), total=task.num_classes, desc=desc):
        rows = pick(features_of(c)).cpu()
        picked.append(task.train.indices_of(c)[rows])
    return torch.cat(picked)


def _sq_norms(feats: torch.Tensor, chunk: int) -> torch.Tensor:
    """Squared L2 norm of every row, ``chunk`` rows at a time (no ``n x F`` temporary)."""
    out = torch.empty(len(feats), device=feats.device)
    for b0 in range(0, len(feats), chunk):
        block = feats[b0 : b0 + chunk]
        out[b0 : b0 + chunk] = (block * block).sum(1)
    return out


def _sq_dist_to(feats: torch.Tensor, sq_norms: torch.Tensor, v: torch.Tensor, chunk: int):
    """Squared distances ``[n]`` from every row of ``feats`` to the vector ``v``, in chunks."""
    out = torch.empty(len(feats), device=feats.device)
    vv = v.dot(v)
    for b0 in range(0, len(feats), chunk):
        block = feats[b0 : b0 + chunk]
        out[b0 : b0 + chunk] = sq_norms[b0 : b0 + chunk] - 2 * (block @ v) + vv
    return out.clamp_(min=0)


def herding_select(feats: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Greedy herding: ``k`` row indices whose running mean approaches the mean of ``feats``.

    Step ``t`` (1-based) picks the unselected row ``x`` minimising
    ``|| mean - (sum_selected + x) / t ||``, i.e. ``|| t * mean - sum_selected - x ||``.
    Memory: the features plus O(n) vectors (everything of size ``n x F`` is chunked).
    """
    n = len(feats)
    if not 1 <= k <= n:
        raise DDBenchError(f"herding: cannot pick {k} of {n} samples")
    feats = feats.float()
    mean = feats.mean(0)
    sq = _sq_norms(feats, chunk)
    total = torch.zeros_like(mean)
    taken = torch.zeros(n, dtype=torch.bool, device=feats.device)
    chosen = []
    for t in range(1, k + 1):
        d = _sq_dist_to(feats, sq, t * mean - total, chunk)
        d[taken] = math.inf
        j = int(torch.argmin(d))
        chosen.append(j)
        taken[j] = True
        total += feats[j]
    return torch.tensor(chosen, dtype=torch.long)


def kcenter_select(
    feats: torch.Tensor, k: int, first: int | None = None, chunk: int = 4096
) -> torch.Tensor:
    """Greedy k-center: start at ``first`` (default: the row nearest the mean), then add the row
    farthest from the selected set, ``k - 1`` times.

    Keeps one running vector of each row's squared distance to its nearest center, updated
    with the distances to the newest center, computed ``chunk`` rows at a time: O(n) memory
    beyond the features, never an ``n x n`` matrix.
    """
    n = len(feats)
    if not 1 <= k <= n:
        raise DDBenchError(f"kcenter: cannot pick {k} of {n} samples")
    feats = feats.float()
    sq = _sq_norms(feats, chunk)
    if first is None:
        first = int(torch.argmin(_sq_dist_to(feats, sq, feats.mean(0), chunk)))
    taken = torch.zeros(n, dtype=torch.bool, device=feats.device)
    chosen = [first]
    taken[first] = True
    min_d = _sq_dist_to(feats, sq, feats[first], chunk)
    for _ in range(k - 1):
        min_d[taken] = -1.0  # duplicates in feature space must not be picked again
        j = int(torch.argmax(min_d))
        chosen.append(j)
        taken[j] = True
        torch.minimum(min_d, _sq_dist_to(feats, sq, feats[j], chunk), out=min_d)
    return torch.tensor(chosen, dtype=torch.long)


# ------------------------------------------------------------------------------ the bases


class Selection(Method):
    """Common ``distill``: pick train indices, check them, wrap the real images in a set."""

    @dataclass
    class Settings(Settings):
        lr: float = 0.01  # SGD lr of the networks a method trains
        batch_size: int = 256
        chunk: int = 256  # images per inference chunk (bounds activation memory)

        def __post_init__(self) -> None:
            check_positive("selection", "batch_size", self.batch_size)
            check_positive("selection", "chunk", self.chunk)
            if not (math.isfinite(self.lr) and self.lr > 0):
                raise DDBenchError(f"selection: lr must be a positive number, got {self.lr!r}")

    name = "selection"

    def select(self, task: Task) -> torch.Tensor:
        """Train-split indices of the chosen images (``ipc`` per class)."""
        raise NotImplementedError

    def distill(self, task: Task) -> SyntheticSet:
        check_budget(task)
        idx = self.select(task).cpu().long()
        counts = torch.bincount(task.train.labels[idx], minlength=task.num_classes)
        if len(idx.unique()) != len(idx) or not bool((counts == task.ipc).all()):
            raise DDBenchError(f"{self.name} picked an invalid selection (a bug): {counts}")
        images = task.normalize(task.train.images[idx])
        return task.make_set(images, task.train.labels[idx], method=self, indices=idx.tolist())

    def _cached(
        self, task: Task, stage: str, compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Tensors of ``stage`` from the task's checkpoint if this config saved them, else
        ``compute()`` them and save them."""
        got = task.checkpointer.load()
        if got is not None and got[2].get("stage") == stage:
            return {k: v.to(task.device) for k, v in got[1].items()}
        out = compute()
        task.checkpointer.save(0, out, {"stage": stage})
        return out

    def _train(self, task: Task, seeds: list[int], epochs: int, desc: str, **kw):
        return train_models(
            task, seeds, epochs, lr=self.lr, batch_size=self.batch_size, desc=desc, **kw
        )

    def _trained_model(self, task: Task, seed: int, epochs: int, stage: str) -> nn.Module:
        """One network (seed ``seed``) trained ``epochs`` epochs, in eval mode; its weights are
        saved as ``stage`` through the task's checkpointer, so a restarted run loads them."""

        def compute():
            (m,) = self._train(task, [seed], epochs, desc=f"{self.name} {stage}")
            return {k: v.detach() for k, v in m.state_dict().items()}

        state = self._cached(task, stage, compute)
        torch.manual_seed(seed)
        model = task.model_factory().to(task.device)
        model.load_state_dict(state)
        return model.eval()


class ScoreSelection(Selection):
    """Score every train image, keep the ``ipc`` highest (``keep: hardest``) or lowest
    (``keep: easiest``) of each class; ties are broken by ``task.generator``."""

    @dataclass
    class Settings(Selection.Settings):
        keep: str = "hardest"  # hardest | easiest

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("selection", "keep", self.keep, ("hardest", "easiest"))

    def score(self, task: Task) -> dict[str, torch.Tensor]:
        """``{"score": [N] (higher = harder), ...diagnostics}`` over the train split."""
        raise NotImplementedError

    def select(self, task: Task) -> torch.Tensor:
        scores = self.score(task)["score"]
        return select_top(task, scores, descending=self.keep == "hardest")

    # config keys that do not change the scores (which images are kept from them, where the
    # class is defined)
    _not_scoring = ("_target_", "keep", "never_learned", "chunk")

    def _scores(
        self, task: Task, seeds: list[int], compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Scores shared across runs: cached under ``$DDBENCH_CACHE/scores`` by what makes them
        (dataset, method config, model, seeds), so a sweep over ipc or ``keep`` scores once."""
        probe = task.model_factory()
        ident = {
            "dataset": task.spec.name,
            "n_train": len(task.train),
            "method": self.name,
            "config": {k: v for k, v in sorted(self.config.items()) if k not in self._not_scoring},
            "model": repr(probe),
            "seeds": seeds,
            "precision": task.precision,
        }
        key = hashlib.sha256(json.dumps(ident, default=str).encode()).hexdigest()[:16]
        path = cache_root() / "scores" / task.spec.name / f"{self.name}-{key}.safetensors"
        if path.exists():
            try:
                return {k: v.to(task.device) for k, v in load_file(str(path)).items()}
            except Exception as e:  # a damaged cache entry is recomputed
                logging.getLogger("ddbench").warning("recomputing scores: %s (%s)", path, e)
        out = self._cached(task, "scores", compute)
        cpu = {k: v.detach().cpu().contiguous() for k, v in out.items()}
        atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata={"ident": json.dumps(ident)}))
        return out


# ------------------------------------------------------------------------------ imported picks


def load_indices(path: str | Path) -> torch.Tensor:
    """The int64 index list of ``path``: ``.npy`` (an integer array, no pickle), ``.pt`` (a tensor,
    a list, or a dict with ``"indices"`` as DeepCore's ``select()`` returns; read with
    ``weights_only``) or ``.json`` (a list, or an object with ``"indices"``)."""
    path = Path(path)
    if not path.exists():
        raise DDBenchError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        import numpy as np

        try:
            obj = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DDBenchError(f"{path}: not a plain .npy array ({str(e).splitlines()[0]})") from e
    elif suffix == ".pt":
        try:
            obj = _torch_load(path)  # weights_only: no pickled objects
        except DDBenchError as e:  # e.g. DeepCore's select() result holds numpy arrays
            raise DDBenchError(
                f"{e}; save the indices with np.save or as a tensor (torch.as_tensor)"
            ) from e
    elif suffix == ".json":
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DDBenchError(f"{path}: not JSON ({e})") from e
    else:
        raise DDBenchError(f"{path}: expected a .npy, .pt or .json file of indices")
    if isinstance(obj, dict):
        if "indices" not in obj:
            raise DDBenchError(f"{path}: a mapping without an 'indices' entry")
        obj = obj["indices"]
    return _as_index_tensor(obj, path)


def _as_index_tensor(obj: object, path: Path) -> torch.Tensor:
    """``obj`` as a 1-D int64 tensor; a one-line error unless it is a flat list of integers."""
    if isinstance(obj, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in obj):
            bad = next(v for v in obj if not isinstance(v, int) or isinstance(v, bool))
            raise DDBenchError(f"{path}: indices must be integers, found {bad!r}")
        t = torch.tensor(obj, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(obj)
        except (TypeError, ValueError, RuntimeError) as e:
            raise DDBenchError(f"{path}: indices must be a flat list of integers") from e
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise DDBenchError(f"{path}: indices must be integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise DDBenchError(f"{path}: indices must be a flat list, got shape {list(t.shape)}")
    if len(t) == 0:
        raise DDBenchError(f"{path}: no indices")
    return t.long()


def import_indices(
    path: str | Path, dataset: str, *, split_size: int | None = None
) -> SyntheticSet:
    """The real train images (and hard labels) at the train-split indices in ``path``.

    The indices must refer to ddbench's ``train`` split of ``dataset`` (the 10 % ``val``
    carve-out excluded, as bench/parity/export_data.py exports it): ``split_size``, when given,
    is the size of the train set the indices were chosen from and must equal that split's. Each
    index must be in range and appear once. The set records the indices (``meta["indices"]``),
    the file (``meta["method"]["config"]["source"]``) and its images per class.
    """
    idx = load_indices(path)
    train = load_split(dataset, "train")
    n = len(train)
    if split_size is not None and split_size != n:
        raise DDBenchError(
            f"the indices refer to a train set of {split_size} images; ddbench's {dataset} "
            f"train split has {n} (the val carve-out excluded): select on that split "
            "(bench/parity/export_data.py)"
        )
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        raise DDBenchError(
            f"{path}: index {lo if lo < 0 else hi} is out of range for the {n} images of "
            f"{dataset}'s train split"
        )
    uniq, counts = torch.unique(idx, return_counts=True)
    if len(uniq) != len(idx):
        dup = uniq[counts > 1]
        raise DDBenchError(
            f"{path}: {len(dup)} indices appear more than once (first: {int(dup[0])}); "
            "a selection picks an image once"
        )
    labels = train.labels[idx].clone()
    s = _imported(train.normalize(train.images[idx]), labels, dataset, "indices")
    s.meta["method"]["config"] = {"source": Path(path).name}
    s.meta["indices"] = idx.tolist()
    s.meta["per_class"] = torch.bincount(labels, minlength=train.num_classes).tolist()
    return s
