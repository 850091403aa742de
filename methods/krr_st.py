"""KRR-ST: self-supervised dataset distillation for transfer learning (Lee et al., ICLR 2024).

The set is ``N = ipc * classes`` images ``X_s`` with learned representation targets ``Y_s``
(``[N, D]``, no class labels), initialised from random real train images and their
representations by a self-supervised encoder trained on the source (:mod:`ddbench.encoders`).
Each outer iteration draws one model ``g`` of a pool of models trained online on the set,
augments a real batch ``X_t`` and regresses it by kernel ridge regression on ``g``'s features
(with a constant feature appended, the bias)::

    K_ts = f(X_t) f(X_s)^T,  K_ss = f(X_s) f(X_s)^T,  lambda = 1e-6 * trace(K_ss)
    loss = mean (K_ts (K_ss + lambda I)^-1 Y_s - encoder(X_t))^2

and updates ``X_s`` and ``Y_s`` by Adam. The pool model is then trained one more step on the
set (mean squared error to ``Y_s``), or replaced by a fresh model once it has had
``online_iteration`` steps; at the start each model is trained a random number of steps in
``[1, online_iteration)``. The set is evaluated under a transfer protocol
(``ddbench transfer``, docs/transfer.md): pre-training on ``(X_s, Y_s)`` by mean squared error.

Settings and their source (db-Lee/selfsup_dd @4beb4b1): ``num_models`` 10, ``online_iteration``
1000, ``online_lr`` 0.1 with SGD momentum 0.9 and ``online_wd`` 1e-3 (train.py's defaults);
``lr_img`` 1e-3 for images and targets alike with AdamW (weight decay 0) and a linear decay to
1e-3 of it over the run (train.py: ``outer_lr``, ``outer_opt``, ``LinearLR(end_factor=1e-3)``;
its README uses 1e-4 for CIFAR-100); ``batch_real`` 1024 (``outer_batch_size``); the lambda rule
``1e-6 * trace(K_ss)`` and the bias feature (algorithms/distill.py); 160000 iterations
(``outer_iteration``); the real batch augmented by kornia's ``RandomCrop(padding=4)`` and
``RandomHorizontalFlip`` (data/augmentation.py ``get_aug``, whose one digit dataset, SVHN, is not
flipped: nor are ddbench's digit datasets), ``real_augment: crop_flip``. One difference: the authors' ``ModelPool.update`` does not reset a
replaced model's step count, so once a model reaches ``online_iteration`` it is replaced at
every later draw; here the count restarts, so the replacement trains online as the first did.
Two more: the authors' set images start as raw [0, 1] pixels while the real batch reaching the
pool models is normalised (train.py, algorithms/distill.py); here both are in the dataset's
normalised space. And their pool model is a ConvNet-BN of widths 128-256-512 (CIFAR-100); here
it is the task's model (ddbench's ConvNet for MNIST-sized data, which the paper does not cover).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench import engine
from ddbench.distill import ImageDistillation
from ddbench.encoders import EncoderConfig, encode, get_encoder
from ddbench.errors import DDBenchError
from ddbench.method import Task
from ddbench.synset import REPRESENTATION, SyntheticSet

log = logging.getLogger("ddbench")

REAL_AUGMENTS = ("crop_flip", "dsa", "none")


def with_head(net: nn.Module, outputs: int) -> nn.Module:
    """``net`` with its last layer (``classifier``) replaced by a fresh one of ``outputs``."""
    old = net.classifier
    net.classifier = nn.Linear(old.in_features, outputs).to(old.weight.device)
    return net


def krr_loss(
    f_syn: torch.Tensor,
    y_syn: torch.Tensor,
    f_real: torch.Tensor,
    y_real: torch.Tensor,
    scale: float = 1e-6,
) -> torch.Tensor:
    """KRR-ST's outer loss: kernel ridge regression of ``y_real`` from the set's features and
    targets, ``lambda = scale * trace(K_ss)``, a constant feature appended to both sides."""
    ones = f_syn.new_ones(len(f_syn), 1)
    f_syn = torch.cat([f_syn, ones], 1)
    f_real = torch.cat([f_real, f_real.new_ones(len(f_real), 1)], 1)
    k_ss = f_syn @ f_syn.T
    k_ts = f_real @ f_syn.T
    lam = scale * torch.trace(k_ss.detach())
    eye = torch.eye(len(k_ss), device=k_ss.device, dtype=k_ss.dtype)
    return F.mse_loss(k_ts @ torch.linalg.solve(k_ss + lam * eye, y_syn), y_real)


class KRRST(ImageDistillation):
    """Kernel ridge regression on self-supervised targets (module docstring)."""

    label_kind = REPRESENTATION  # scored by the transfer protocol, never by a class protocol

    @dataclass
    class Settings(ImageDistillation.Settings):
        iterations: int = 160000
        lr_img: float = 1e-3
        img_optimizer: str = "adam"
        num_models: int = 10
        online_iteration: int = 1000
        online_lr: float = 0.1
        online_wd: float = 1e-3
        batch_real: int = 1024
        lambda_scale: float = 1e-6
        # the real batch's augmentation: "crop_flip" (the authors': RandomCrop(padding=4) and a
        # horizontal flip, none for digit datasets), "dsa" (the dataset's DSA strategy), "none"
        real_augment: str = "crop_flip"
        encoder: EncoderConfig = field(default_factory=EncoderConfig)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.num_models < 1 or self.online_iteration < 2 or self.batch_real < 1:
                raise DDBenchError(
                    "krr_st needs num_models >= 1, online_iteration >= 2 and batch_real >= 1"
                )
            if self.real_augment not in REAL_AUGMENTS:
                raise DDBenchError(
                    f"krr_st: real_augment must be one of {REAL_AUGMENTS}, not {self.real_augment!r}"
                )
            if not (self.online_lr > 0 and self.online_wd >= 0 and self.lambda_scale > 0):
                raise DDBenchError("krr_st needs online_lr > 0, online_wd >= 0, lambda_scale > 0")
            if self.eval_every:
                raise DDBenchError(
                    "krr_st sets have no class labels: monitor them with `ddbench transfer` on "
                    "the target's val split, not eval_every"
                )

    name = "krr_st"
    supports_init_from = False  # images with learned representation targets
    protocol = "transfer"  # conf/transfer_protocol/transfer.yaml
    kind = "transfer"  # scored by `ddbench transfer`, not a class protocol (leaderboard_all.sh)

    def __init__(self, **overrides: Any):
        super().__init__(**overrides)
        self._targets: torch.Tensor | None = None
        self._encoder: nn.Module | None = None
        self._pool: list[list[Any]] = []  # [model, optimiser, steps] per pool slot

    # the images' optimiser also updates the targets (one AdamW over both, as the authors')
    def image_optimizer(self, task: Task, images: torch.Tensor):
        assert self._targets is not None
        opt = torch.optim.AdamW([images, self._targets], lr=self.lr_img, weight_decay=0.0)
        span = max(1, self.iterations)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda it: 1 - (1 - 1e-3) * min(it, span) / span
        )
        return opt, sched

    def init_images(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """``ipc * classes`` random real train images and their encoder representations."""
        n = task.ipc * task.num_classes
        if n > len(task.train):
            raise DDBenchError(
                f"krr_st: {n} images asked for, the train split has {len(task.train)}"
            )
        self._encoder, meta = get_encoder(task.spec.name, self.encoder, device=task.device)
        self._encoder.requires_grad_(False)
        self._encoder_meta = {"key": meta["key"], "config": meta["config"]}
        images = task.real_images(None, n).float().contiguous()
        targets = encode(self._encoder, images).float().contiguous()
        self._targets = targets.requires_grad_(True)
        return images, self._targets

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"targets": self._targets.detach()} if self._targets is not None else {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "targets" in tensors and self._targets is not None:
            with torch.no_grad():
                self._targets.copy_(tensors["targets"].to(self._targets.device))

    # ------------------------------------------------------------------------------ the pool

    def _fresh_member(self, task: Task, dim: int) -> list[Any]:
        seed = self.next_seed(task)  # the body and the head from the task's generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = with_head(task.model_factory(), dim).train()
        opt = torch.optim.SGD(
            net.parameters(), lr=self.online_lr, momentum=0.9, weight_decay=self.online_wd
        )
        return [net, opt, 0]

    def _train_member(self, member: list[Any], images, targets, steps: int) -> None:
        """``steps`` full-batch steps of the member on the set (mean squared error)."""
        recipe = engine.Recipe(epochs=1, batch_size=len(images), loss="mse", augment=None)
        engine.train(
            None, None, images.detach(), targets.detach(), recipe, models=[member[0]],
            optimizers=[member[1]], steps=steps, device=images.device, distributed=False,
            compile=False,
        )  # fmt: skip
        member[2] += steps

    def _init_pool(self, task: Task, images: torch.Tensor, targets: torch.Tensor) -> None:
        self._pool = []
        for _ in range(self.num_models):
            member = self._fresh_member(task, targets.shape[1])
            steps = int(torch.randint(1, self.online_iteration, (1,), generator=task.generator))
            self._train_member(member, images, targets, steps)
            self._pool.append(member)

    def _update_member(self, task: Task, k: int, images, targets) -> None:
        if self._pool[k][2] >= self.online_iteration:
            self._pool[k] = self._fresh_member(task, targets.shape[1])
        else:
            self._train_member(self._pool[k], images, targets, 1)

    # ------------------------------------------------------------------------------ the step

    def augment_real(self, task: Task, real: torch.Tensor) -> torch.Tensor:
        """The real batch as the outer loss sees it (``real_augment``), seeded from the task."""
        if self.real_augment == "none":
            return real
        seed = self.next_seed(task)
        if self.real_augment == "dsa":
            return real if task.augment is None else task.augment(
                real, torch.Generator().manual_seed(seed)
            )  # fmt: skip
        import kornia.augmentation as K

        from ddbench.augment import default_strategy

        ops = [K.RandomCrop(tuple(real.shape[-2:]), padding=4)]
        if "flip" in default_strategy(task.spec.name):  # digit datasets are not flipped
            ops.append(K.RandomHorizontalFlip(p=0.5))
        with torch.random.fork_rng(devices=[real.device] if real.is_cuda else []):
            torch.manual_seed(seed)
            return nn.Sequential(*ops)(real)

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        if not self._pool:  # built here: a resumed run builds it from the restored set
            self._init_pool(task, images, labels)
        k = int(torch.randint(0, len(self._pool), (1,), generator=task.generator))
        model = self._pool[k][0]
        model.eval()
        with torch.no_grad(), task.full_precision():
            real = self.augment_real(task, task.real_images(None, self.batch_real))
            y_real = self._encoder.embed(real).float()
            f_real = model.embed(real).float()
        f_syn = model.embed(images).float()
        with task.full_precision():
            loss = krr_loss(f_syn, labels, f_real, y_real, self.lambda_scale)
        value = self.update(loss)
        self._update_member(task, k, images, labels)
        return value

    def distill(self, task: Task) -> SyntheticSet:
        self._pool = []
        try:
            synset = super().distill(task)
        finally:
            self._pool = []
        synset.meta["label_kind"] = REPRESENTATION
        synset.meta["encoder"] = self._encoder_meta
        return synset
