"""Coreset selection baselines: herding, k-center, forgetting, EL2N and GraNd.

Every method here returns ``ipc`` *real* training images per class, records the chosen
train-split indices in the set (``meta["indices"]``), never picks an image twice, and is
deterministic for a fixed task seed. They share one family of helpers:

- scoring/feature models are built from ``task.model_factory`` and trained with the one engine
  (:func:`ddbench.engine.train`); their seeds are drawn from ``task.generator``;
- :func:`model_outputs` is the one inference pass (batched, chunked, ``torch.no_grad``, on
  ``task.device``), giving embeddings and/or logits of train images, chunk by chunk, so that
  nothing of size ``N x N`` (or all ``N`` embeddings at once) is ever held;
- :func:`select_top` picks the ``ipc`` best-scored images of each class, breaking ties with
  ``task.generator``.

Geometric methods (:class:`Herding`, :class:`KCenter`) work per class in the embedding space
(``model.embed``) of a feature network; score methods (:class:`Forgetting`, :class:`EL2N`,
:class:`GraNd`) score every train image and keep the top of each class. The expensive part
(trained feature network, or the scores) is saved through ``task.checkpointer``, so a restarted
run with the same config does not redo it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ddbench.engine import Recipe, build_models, train
from ddbench.errors import DDBenchError
from ddbench.method import Method, Task
from ddbench.synset import SyntheticSet

__all__ = [
    "EL2N",
    "Forgetting",
    "GraNd",
    "Herding",
    "KCenter",
    "herding_select",
    "kcenter_select",
    "model_outputs",
    "select_top",
]

_SEED_RANGE = 2**31 - 1


# ------------------------------------------------------------------------------ shared helpers


def _choice(method: str, option: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DDBenchError(f"{method}: {option}={value!r}; choose one of {', '.join(allowed)}")


def _positive(method: str, option: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DDBenchError(f"{method}: {option} must be an int >= {minimum}, got {value!r}")


def draw_seeds(task: Task, n: int) -> list[int]:
    """``n`` model seeds drawn from the task's generator (so they follow the task seed)."""
    return torch.randint(_SEED_RANGE, (n,), generator=task.generator).tolist()


def check_budget(task: Task) -> None:
    """Every class must have at least ``ipc`` train images (selection never duplicates)."""
    for c in range(task.num_classes):
        have = len(task.train.indices_of(c))
        if have < task.ipc:
            raise DDBenchError(
                f"ipc={task.ipc} but class {c} ({task.train.classes[c]!r}) has only {have} "
                "train images; a selection cannot pick an image twice"
            )


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
) -> list[nn.Module]:
    """Train one ``task.model_factory()`` per seed on the whole train split with the engine.

    Plain SGD (momentum 0.9, weight decay 5e-4) at a constant lr, no augmentation: scoring
    models are snapshots of *early* training, so no lr decay is wanted. ``epochs=0`` returns
    the models at initialisation.
    """
    build = build or task.model_factory
    if epochs == 0:
        return [m.eval() for m in build_models(build, seeds, task.device)]
    recipe = Recipe(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        schedule="constant",
        precision=task.precision,
    )
    images = task.normalize(task.train.images)
    return train(
        build,
        seeds,
        images,
        task.train.labels,
        recipe,
        device=task.device,
        parallel=False if on_epoch is not None else "auto",  # on_epoch needs in-place models
        progress=desc,
        on_epoch=on_epoch,
    ).models


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
    images = task.train.images
    n = len(images) if idx is None else len(idx)
    for m in models:
        m.eval()
    starts = range(0, n, chunk)
    for b0 in task.progress(starts, total=len(starts), desc=desc):
        rows = slice(b0, min(n, b0 + chunk))
        sel = images[rows] if idx is None else images[idx[rows]]
        x = task.normalize(sel.to(task.device))
        embs, outs = [], []
        with task.autocast():
            for m in models:
                e = m.embed(x)
                if embed:
                    embs.append(e.float())
                if logits:
                    outs.append(m.classifier(e).float())
        yield (
            rows,
            torch.stack(embs) if embed else None,
            torch.stack(outs) if logits else None,
        )


def class_features(task: Task, model: nn.Module, c: int, chunk: int) -> torch.Tensor:
    """Embeddings ``[n_c, F]`` of the train images of class ``c`` (one class at a time)."""
    idx = task.train.indices_of(c)
    feats = None
    for rows, e, _ in model_outputs(task, [model], idx, chunk=chunk, embed=True, logits=False):
        if feats is None:
            feats = torch.empty(len(idx), e.shape[-1], device=task.device)
        feats[rows] = e[0]
    return feats


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


# ------------------------------------------------------------------------------ the base class


class _Selection(Method):
    """Common ``distill``: pick train indices, check them, wrap the real images in a set."""

    name = "selection"

    def __init__(self, lr: float = 0.01, batch_size: int = 256, chunk: int = 256, **config):
        super().__init__(lr=lr, batch_size=batch_size, chunk=chunk, **config)
        _positive(self.name, "batch_size", batch_size)
        _positive(self.name, "chunk", chunk)
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise DDBenchError(f"{self.name}: lr must be a positive number, got {lr!r}")
        self.lr, self.batch_size, self.chunk = float(lr), batch_size, chunk

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


# ------------------------------------------------------------------------- herding / k-center


class _FeatureSelection(_Selection):
    """Per-class selection in the embedding space (``model.embed``) of a feature network.

    ``features: teacher`` (default) embeds with the cached trained teacher of
    :mod:`ddbench.teachers` (``teacher``: its config; the default is the ``kd`` protocol's, so
    selection and KD share one network, trained once per dataset); ``features: trained`` trains
    one ``task.model_factory()`` for ``feature_epochs`` on the whole train split with the
    engine; ``features: random`` uses a randomly initialised one; ``features: pixels`` uses the
    normalised images themselves (no network). The DC paper's herding/k-center baselines embed
    with a ConvNet trained on the real data.
    ``normalize: true`` L2-normalises the features first (as iCaRL's herding).
    """

    def __init__(
        self,
        features: str = "teacher",
        feature_epochs: int = 1,
        normalize: bool = False,
        teacher: dict | None = None,
        **config,
    ):
        super().__init__(
            features=features, feature_epochs=feature_epochs, normalize=normalize,
            teacher=dict(teacher or {}), **config,
        )  # fmt: skip
        _choice(self.name, "features", features, ("teacher", "trained", "random", "pixels"))
        self.teacher = dict(teacher or {})
        _positive(self.name, "feature_epochs", feature_epochs, minimum=0)
        self.features, self.feature_epochs, self.normalize = features, feature_epochs, normalize

    def feature_model(self, task: Task) -> nn.Module | None:
        """The feature network (its seed drawn from ``task.generator``), in eval mode; ``None``
        for ``features: pixels``."""
        if self.features == "pixels":
            return None
        if self.features == "teacher":
            from ddbench.teachers import TeacherConfig, get_teacher

            cfg = TeacherConfig.from_config(self.teacher)
            return get_teacher(task.spec.name, cfg, device=task.device)[0]
        (seed,) = draw_seeds(task, 1)
        epochs = self.feature_epochs if self.features == "trained" else 0
        if epochs == 0:
            return self._train(task, [seed], 0, desc="")[0]

        def compute():
            (m,) = self._train(task, [seed], epochs, desc=f"{self.name} features")
            return {k: v.detach() for k, v in m.state_dict().items()}

        state = self._cached(task, "features", compute)
        torch.manual_seed(seed)
        model = task.model_factory().to(task.device)
        model.load_state_dict(state)
        return model.eval()

    def features_of(self, task: Task, model: nn.Module | None, c: int) -> torch.Tensor:
        """The (optionally L2-normalised) features of class ``c``, ``[n_c, F]``."""
        if model is None:  # features: pixels
            f = task.real_images(c).flatten(1)
        else:
            f = class_features(task, model, c, self.chunk)
        return torch.nn.functional.normalize(f, dim=1) if self.normalize else f

    def pick(self, task: Task, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def select(self, task: Task) -> torch.Tensor:
        model = self.feature_model(task)
        picked = []
        for c in task.progress(range(task.num_classes), total=task.num_classes, desc=self.name):
            rows = self.pick(task, self.features_of(task, model, c)).cpu()
            picked.append(task.train.indices_of(c)[rows])
        return torch.cat(picked)


class Herding(_FeatureSelection):
    """Herding (Welling 2009), the DC paper's baseline: per class, greedily add the image whose
    features bring the running mean of the selection closest to the class mean."""

    name = "herding"

    def pick(self, task: Task, feats: torch.Tensor) -> torch.Tensor:
        return herding_select(feats, task.ipc)


class KCenter(_FeatureSelection):
    """Greedy k-center (Sener & Savarese 2018), the DC paper's baseline: per class, start from
    the image nearest the class mean (``init: mean``) or a random one (``init: random``, from
    ``task.generator``), then repeatedly add the image farthest from the selected ones.
    Distances are computed in chunks with a running min-distance vector (O(n) memory)."""

    name = "kcenter"

    def __init__(self, init: str = "mean", **config):
        super().__init__(init=init, **config)
        _choice(self.name, "init", init, ("mean", "random"))
        self.init = init

    def pick(self, task: Task, feats: torch.Tensor) -> torch.Tensor:
        first = None
        if self.init == "random":
            first = int(torch.randint(len(feats), (1,), generator=task.generator))
        return kcenter_select(feats, task.ipc, first=first)


# ----------------------------------------------------------------------------- score methods


class _ScoreSelection(_Selection):
    """Score every train image, keep the ``ipc`` highest (``keep: hardest``) or lowest
    (``keep: easiest``) of each class; ties are broken by ``task.generator``."""

    def __init__(self, keep: str = "hardest", **config):
        super().__init__(keep=keep, **config)
        _choice(self.name, "keep", keep, ("hardest", "easiest"))
        self.keep = keep

    def score(self, task: Task) -> dict[str, torch.Tensor]:
        """``{"score": [N] (higher = harder), ...diagnostics}`` over the train split."""
        raise NotImplementedError

    def select(self, task: Task) -> torch.Tensor:
        scores = self.score(task)["score"]
        return select_top(task, scores, descending=self.keep == "hardest")

    # config keys that do not change the scores (only which images are kept from them)
    _not_scoring = ("keep", "never_learned", "chunk")

    def _scores(
        self, task: Task, seeds: list[int], compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Scores shared across runs: cached under ``$DDBENCH_CACHE/scores`` by what makes them
        (dataset, method config, model, seeds), so a sweep over ipc or ``keep`` scores once."""
        import hashlib
        import json

        from safetensors.torch import load_file, save_file

        from ddbench.synset import atomic_write
        from ddbench.teachers import cache_root

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


class Forgetting(_ScoreSelection):
    """Forgetting events (Toneva et al. 2019), the DC paper's baseline.

    One model is trained on the train split with the engine for ``epochs``; after every epoch
    all train images are classified (unaugmented, eval mode) and a *forgetting event* is
    counted for each image that was correct after the previous epoch and is wrong now. Images
    never classified correctly after any epoch are ranked by their plain count of 0
    (``never_learned: count``, the default, as DeepCore; closer to the DC paper's numbers, see
    docs/benchmarks.md), or, as in Toneva et al., treated as forgotten infinitely often
    (``never_learned: hardest``: they are picked first). ``keep: hardest`` (default) keeps the
    most forgotten images of each class, ``keep: easiest`` the unforgettable ones. Ties (many
    images share a count) are broken by ``task.generator``.
    """

    name = "forgetting"

    def __init__(self, epochs: int = 10, never_learned: str = "count", **config):
        super().__init__(epochs=epochs, never_learned=never_learned, **config)
        _positive(self.name, "epochs", epochs)
        _choice(self.name, "never_learned", never_learned, ("hardest", "count"))
        self.epochs, self.never_learned = epochs, never_learned

    def score(self, task: Task) -> dict[str, torch.Tensor]:
        """``count`` (forgetting events), ``learned`` (ever correct), ``correct`` (after the
        last epoch), and ``score`` (``count``, ``inf`` where never learned if so configured)."""
        (seed,) = draw_seeds(task, 1)
        out = self._scores(task, [seed], lambda: self._count(task, seed))
        score = out["count"].float().clone()
        if self.never_learned == "hardest":
            score[~out["learned"].bool()] = math.inf
        return {**out, "score": score}

    def _count(self, task: Task, seed: int) -> dict[str, torch.Tensor]:
        n = len(task.train)
        labels = task.train.labels.to(task.device)
        state = {
            "count": torch.zeros(n, dtype=torch.long, device=task.device),
            "learned": torch.zeros(n, dtype=torch.bool, device=task.device),
            "correct": torch.zeros(n, dtype=torch.bool, device=task.device),
        }
        built: list[nn.Module] = []

        def build() -> nn.Module:
            m = task.model_factory()
            built.append(m)
            return m

        def on_epoch(epoch: int, loss: float) -> None:
            # The engine trains a single model in place (parallel=False), so the module made by
            # `build` holds the current weights.
            model = built[-1]
            now = torch.empty(n, dtype=torch.bool, device=task.device)
            for rows, _, logits in model_outputs(task, [model], chunk=self.chunk):
                now[rows] = logits[0].argmax(1) == labels[rows]
            model.train()
            state["count"] += state["correct"] & ~now
            state["learned"] |= now
            state["correct"] = now

        self._train(task, [seed], self.epochs, desc="forgetting", build=build, on_epoch=on_epoch)
        return state


class _EarlyTrainingScore(_ScoreSelection):
    """Scores averaged over ``models`` networks trained ``epochs`` epochs (0: at init)."""

    needs_embedding = False

    def __init__(self, models: int = 3, epochs: int = 10, **config):
        super().__init__(models=models, epochs=epochs, **config)
        _positive(self.name, "models", models)
        _positive(self.name, "epochs", epochs, minimum=0)
        self.models, self.epochs = models, epochs

    def per_model(self, emb: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """Per-model score ``[K,B]`` from embeddings ``[K,B,F]`` and ``softmax - onehot``."""
        raise NotImplementedError

    def score(self, task: Task) -> dict[str, torch.Tensor]:
        """``score`` (mean over models) and ``correct`` (fraction of the models right)."""
        seeds = draw_seeds(task, self.models)
        return self._scores(task, seeds, lambda: self._score(task, seeds))

    def _score(self, task: Task, seeds: list[int]) -> dict[str, torch.Tensor]:
        models = self._train(task, seeds, self.epochs, desc=self.name)
        n, k = len(task.train), task.num_classes
        labels = task.train.labels.to(task.device)
        score = torch.empty(n, device=task.device)
        correct = torch.empty(n, device=task.device)
        for rows, emb, logits in model_outputs(
            task, models, chunk=self.chunk, embed=self.needs_embedding, desc=f"{self.name} scores"
        ):
            y = labels[rows]
            err = logits.softmax(-1) - nn.functional.one_hot(y, k).float()  # [K,B,C]
            score[rows] = self.per_model(emb, err).mean(0)
            correct[rows] = (logits.argmax(-1) == y).float().mean(0)
        return {"score": score, "correct": correct}


class EL2N(_EarlyTrainingScore):
    """EL2N (Paul et al. 2021): ``|| softmax(f(x)) - onehot(y) ||_2`` averaged over ``models``
    networks after ``epochs`` epochs of (early) training. ``keep: hardest`` (default, as the
    paper prunes the easy images) keeps the highest scores of each class."""

    name = "el2n"

    def per_model(self, emb: torch.Tensor | None, err: torch.Tensor) -> torch.Tensor:
        return err.norm(dim=-1)


class GraNd(_EarlyTrainingScore):
    """GraNd (Paul et al. 2021), the usual cheap form: the norm of the cross-entropy gradient
    with respect to the last linear layer, in closed form. For logits ``W e + b`` the gradient
    is ``(p - y) e^T`` for ``W`` and ``p - y`` for ``b``, so its norm is
    ``||p - y|| * sqrt(||e||^2 + 1)``. Averaged over ``models`` networks after ``epochs``
    epochs (``epochs: 0`` is the paper's at-initialisation score)."""

    name = "grand"
    needs_embedding = True

    def per_model(self, emb: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return err.norm(dim=-1) * (emb.pow(2).sum(-1) + 1).sqrt()
