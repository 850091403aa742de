"""Gradient matching: DC (Zhao et al., ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

Per outer iteration a fresh network; ``outer_loop`` times: match, class by class, the gradient
of the network's loss on a real batch and on the synthetic images (one image update), then
train the network ``inner_loop`` epochs on the synthetic set. DSA is DC with siamese
augmentation (matching and inner training) and real initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.distill import ImageDistillation, freeze_batchnorm
from ddbench.engine import Recipe, has_batchnorm, train
from ddbench.errors import DDBenchError
from ddbench.method import Task

DISTANCES = ("ours", "mse", "cos")
_EPS = 1e-6
BN_SIZE_PER_CLASS = 16  # DC's BNSizePC


def gradient_distance(
    g_syn: list[torch.Tensor] | tuple[torch.Tensor, ...],
    g_real: list[torch.Tensor] | tuple[torch.Tensor, ...],
    metric: str = "ours",
) -> torch.Tensor:
    """DC's ``match_loss``. ``ours``: per parameter tensor of >= 2 dims, rows = output units
    (reshaped ``[out, -1]``), ``sum_rows (1 - cos(g_real_row, g_syn_row))``, summed over
    tensors (1-D tensors, biases and norm parameters, are ignored); ``mse``: squared distance of
    all gradients; ``cos``: 1 - cosine of all gradients concatenated."""
    if metric == "ours":
        total = g_real[0].new_zeros(())
        for gs, gr in zip(g_syn, g_real):
            if gr.dim() < 2:
                continue
            gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
            cos = (gs * gr).sum(-1) / (gs.norm(dim=-1) * gr.norm(dim=-1) + _EPS)
            total = total + (1 - cos).sum()
        return total
    vs = torch.cat([g.reshape(-1) for g in g_syn])
    vr = torch.cat([g.reshape(-1) for g in g_real])
    if metric == "mse":
        return ((vs - vr) ** 2).sum()
    if metric == "cos":
        return 1 - (vs * vr).sum() / (vs.norm() * vr.norm() + _EPS)
    raise DDBenchError(f"unknown gradient distance {metric!r}; choose one of {DISTANCES}")


class DC(ImageDistillation):
    """Dataset Condensation with gradient matching. ``outer_loop``/``inner_loop`` come from DC's
    table by ipc (``conf/recipes/dc.yaml``: 1: 1/1, 10: 10/50, 50: 50/10, ...); set both for an
    ipc outside it. The network is trained between image updates with SGD at ``lr_net`` (no
    momentum), batches of ``batch_train``."""

    @dataclass
    class Settings(ImageDistillation.Settings):
        init: str = "noise"
        batch_real: int = 256  # real images per class and per matching step
        dsa: bool = False  # no augmentation in matching or in the inner training
        lr_net: float = 0.01  # SGD (no momentum) of the network between image updates
        batch_train: int = 256  # batch of that inner training
        outer_loop: int | None = None  # null: DC's table by ipc (the recipe)
        inner_loop: int | None = None
        distance: str = "ours"  # ours (per-row 1 - cosine, 1-D params ignored) | mse | cos

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.distance not in DISTANCES:
                raise DDBenchError(
                    f"unknown gradient distance {self.distance!r}; choose one of {DISTANCES}"
                )

    name = "dc"
    protocol = "dc"  # DC's own evaluation per dataset (conf/protocol/dc.yaml)
    recipes = "dc"

    def loops(self, ipc: int) -> tuple[int, int]:
        if self.outer_loop is None or self.inner_loop is None:
            raise DDBenchError(
                f"{self.name} has no outer/inner loops for ipc={ipc} (DC's table in "
                f"conf/recipes/dc.yaml covers 1, 10, 20, 30, 40, 50); set method.outer_loop and "
                f"method.inner_loop"
            )
        return int(self.outer_loop), int(self.inner_loop)

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        outer, inner = self.loops(task.ipc)
        net = self.fresh_net(task)
        opt_net = torch.optim.SGD(net.parameters(), lr=self.lr_net)
        inner_recipe = Recipe(epochs=inner, batch_size=self.batch_train, precision=task.precision)
        bn = has_batchnorm(net)
        total = 0.0
        for ol in range(outer):
            if bn:
                freeze_batchnorm(net, torch.cat(self.real_batches(task, BN_SIZE_PER_CLASS)))
            total += self.update(self.matching_loss(task, net, images))
            if ol == outer - 1:
                break
            # the network continues (same net and optimiser) for `inner` epochs on the images;
            # the engine runs the forward in the task's precision, the data side in fp32
            with task.full_precision():
                train(
                    None, None, images.detach(), labels, inner_recipe, device=task.device,
                    augment=self.modifier.augmentation(task.augment) if self.dsa else None,
                    compile=False,
                    distributed=False, models=[net], optimizers=[opt_net],
                    generators=[task.generator], batch_transform=self.modifier.apply,
                )  # fmt: skip
        return total / (task.num_classes * outer)

    def matching_loss(self, task: Task, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Sum over classes of the distance between the gradients of ``net``'s loss on a real
        batch and on the class's synthetic images (the latter differentiable in the images)."""
        params = [p for p in net.parameters() if p.requires_grad]
        loss = images.new_zeros(())
        for c in range(task.num_classes):
            real, syn = self.siamese(
                task, self.sample_real(task, c, self.batch_real), images[self.class_slice(task, c)]
            )
            out_real, out_syn = net(real).float(), net(syn).float()
            g_real = torch.autograd.grad(F.cross_entropy(out_real, _full(out_real, c)), params)
            g_real = [g.detach() for g in g_real]
            g_syn = torch.autograd.grad(
                F.cross_entropy(out_syn, _full(out_syn, c)), params, create_graph=True
            )
            loss = loss + gradient_distance(g_syn, g_real, self.distance)
        return loss


class DSA(DC):
    """Dataset Condensation with Differentiable Siamese Augmentation: DC with siamese DSA in
    matching (one draw per class and step) and DSA in the inner training, real initialisation."""

    @dataclass
    class Settings(DC.Settings):
        init: str = "real"
        dsa: bool = True

    name = "dsa"
    protocol = "standard"


def _full(out: torch.Tensor, c: int) -> torch.Tensor:
    return torch.full((out.shape[0],), c, dtype=torch.long, device=out.device)
