"""Gradient matching: DC (Zhao et al., ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

Per outer iteration a fresh network; ``outer_loop`` times: match, class by class, the gradient
of the network's loss on a real batch and on the synthetic images (one image update), then
train the network ``inner_loop`` epochs on the synthetic set. DSA is DC with siamese
augmentation (matching and inner training) and real initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.distill import ImageDistillation, freeze_batchnorm, train_steps
from ddbench.engine import has_batchnorm
from ddbench.errors import DDBenchError
from ddbench.method import Task

# DC's get_loops: ipc -> (outer_loop, inner_loop)
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
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
    """Dataset Condensation with gradient matching. ``outer_loop``/``inner_loop`` default to DC's
    table by ipc (1: 1/1, 10: 10/50, 50: 50/10, ...). The network is trained between image
    updates with SGD at ``lr_net`` (no momentum), batches of ``batch_train``."""

    name = "dc"
    protocol = "nodsa"  # DC's own evaluation: no augmentation, 300 epochs

    def __init__(
        self,
        iterations: int = 1000,
        lr_img: float = 0.1,
        init: str = "noise",
        dsa: bool = False,
        lr_net: float = 0.01,
        batch_train: int = 256,
        outer_loop: int | None = None,
        inner_loop: int | None = None,
        distance: str = "ours",
        **config,
    ):
        super().__init__(
            iterations=iterations, lr_img=lr_img, init=init, dsa=dsa, lr_net=lr_net,
            batch_train=batch_train, outer_loop=outer_loop, inner_loop=inner_loop,
            distance=distance, **config,
        )  # fmt: skip
        if distance not in DISTANCES:
            raise DDBenchError(f"unknown gradient distance {distance!r}; choose one of {DISTANCES}")
        self.lr_net = float(lr_net)
        self.batch_train = int(batch_train)
        self.outer_loop, self.inner_loop = outer_loop, inner_loop
        self.distance = distance

    def loops(self, ipc: int) -> tuple[int, int]:
        outer, inner = LOOPS.get(ipc, (None, None))
        outer = self.outer_loop if self.outer_loop is not None else outer
        inner = self.inner_loop if self.inner_loop is not None else inner
        if outer is None or inner is None:
            raise DDBenchError(
                f"{self.name} has no default outer/inner loops for ipc={ipc} (DC's table: "
                f"{sorted(LOOPS)}); set method.outer_loop and method.inner_loop"
            )
        return int(outer), int(inner)

    def step(self, task: Task, images: torch.Tensor, labels: torch.Tensor, it: int) -> float:
        outer, inner = self.loops(task.ipc)
        net = self.fresh_net(task)
        opt_net = torch.optim.SGD(net.parameters(), lr=self.lr_net)
        epoch_steps = math.ceil(len(images) / min(self.batch_train, len(images)))
        bn = has_batchnorm(net)
        total = 0.0
        for ol in range(outer):
            if bn:
                freeze_batchnorm(net, torch.cat(self.real_batches(task, BN_SIZE_PER_CLASS)))
            total += self.update(self.matching_loss(task, net, images))
            if ol == outer - 1:
                break
            train_steps(
                net, images.detach(), labels, inner * epoch_steps, opt_net,
                task.augment if self.dsa else None, batch_size=self.batch_train,
                generator=task.generator, precision=task.precision, modifier=self.modifier,
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

    name = "dsa"
    protocol = "standard"

    def __init__(self, init: str = "real", dsa: bool = True, **config):
        super().__init__(init=init, dsa=dsa, **config)


def _full(out: torch.Tensor, c: int) -> torch.Tensor:
    return torch.full((out.shape[0],), c, dtype=torch.long, device=out.device)
