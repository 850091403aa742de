"""HeLlO: Heavy Labels Out! (Yu, Liu, Chen, Ye & Wang, "Dataset Distillation with Label Space
Lightening", ICCV 2025; arXiv:2408.08201).

The authors have released no code: this follows the paper. In place of soft labels, the set
stores an image-to-label projector that gives the student a soft label online for every
augmented view (:mod:`ddbench.projector`):

* **Extractor**: the paper's is CLIP's image encoder, whose weights cannot be had offline here.
  ddbench substitutes a frozen extractor it trains itself, pluggable by name
  (:func:`ddbench.projector.register_extractor`): by default the convolutional trunk of a
  cached ConvNet-BN teacher of the *other* dataset (Fashion-MNIST's for MNIST and MNIST's for
  Fashion-MNIST), its features globally average-pooled. The set's metadata and every result
  name the extractor and the substitution (``meta["relabel"]["projector"]``).
* **Head initialised without stored labels**: the paper initialises the linear head from CLIP's
  text embeddings of the class names; with no text encoder, ddbench takes the nearest-class-mean
  classifier of the extractor's features on the real train split (row ``c``: the class mean
  ``p_c``, bias ``-||p_c||^2 / 2``), which stores nothing either.
* **Low-rank adapters** (the paper's LoRA-like transfer): a rank-``rank`` update ``B A`` of the
  extractor's last convolution (``A`` small random from the task's generator, ``B`` zeros), and
  the head, trained with AdamW to reproduce the teacher's soft labels on the real train split
  (KL at ``temperature``, the evaluation protocol's), on views augmented with the dataset's DSA
  strategy, as the student will see them. Only ``A``, ``B`` and the head are stored (float16
  extras, ``store_dtype``); the extractor is rebuilt from the cache.
* **Images**: the paper initialises its images from representative real patches and optionally
  updates them to reduce the projector's error. ddbench stores real images selected per class
  by the teacher's confidence in their class (the ``ipc`` most confident: the realism criterion
  of the patch selection the paper builds on, applied to whole images); the image update is not
  implemented.

The set expects protocol ``hello``: the ``kd`` recipe (KL at T=4, AdamW + cosine, 300 epochs,
DSA) with the set's projector in place of the teacher; the same images under ``kd`` (the
teacher online) and ``kd_hard`` (hard labels) are its baselines. The metadata records the
projector's bytes and their ratio to the per-crop soft labels FKD would store for these images
(``sre2l_fkd``'s 300 epochs, :func:`ddbench.crop_labels.stored_bytes`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ddbench import engine
from ddbench.augment import make_augment
from ddbench.crop_labels import stored_bytes
from ddbench.distill import class_means, load_optimizer_state, optimizer_state
from ddbench.errors import DDBenchError
from ddbench.method import Method, Settings, Task, check_class_budget
from ddbench.projector import PROJECTOR_ROLE, LabelProjector, build_extractor, last_conv
from ddbench.recover import DEFAULT_TEACHER
from ddbench.synset import SyntheticSet
from ddbench.teachers import TeacherConfig, get_teacher

__all__ = ["HeLlO", "OTHER_DATASET"]

# the dataset whose cached teacher is the default extractor (same image shape, other classes)
OTHER_DATASET = {"mnist": "fashion_mnist", "fashion_mnist": "mnist"}
SUBSTITUTION = (
    "CLIP's image encoder (the paper's extractor) is not available offline: the frozen "
    "extractor is {desc}"
)
FKD_EPOCHS = 300  # the per-crop labels of conf/protocol/sre2l_fkd.yaml (300 epochs of crops)


class HeLlO(Method):
    """Selected real images and a label projector (module docstring)."""

    @dataclass
    class Settings(Settings):
        # the teacher whose soft labels the projector learns (the kd protocol's teacher)
        teacher: dict[str, Any] = field(
            default_factory=lambda: {**DEFAULT_TEACHER, "model": "convnet"}
        )
        # the frozen extractor: a registered name and its arguments; teacher_cache with dataset
        # null takes the other dataset's cached teacher (OTHER_DATASET)
        extractor: dict[str, Any] = field(
            default_factory=lambda: {
                "name": "teacher_cache",
                "dataset": None,
                "teacher": dict(DEFAULT_TEACHER),
            }  # fmt: skip
        )
        rank: int = 2  # rank of the low-rank update of the extractor's last convolution
        epochs: int = 3  # passes over the real train split to fit the projector
        batch_size: int = 256
        lr: float = 0.001  # AdamW
        weight_decay: float = 0.0
        temperature: float = 4.0  # KL temperature of the fit (the kd protocol's)
        store_dtype: str = "float16"  # the projector's stored tensors: float16 | float32

        def __post_init__(self) -> None:
            self.teacher = {**DEFAULT_TEACHER, **dict(self.teacher)}
            TeacherConfig.from_config(self.teacher)
            if not isinstance(self.extractor, dict) or "name" not in self.extractor:
                raise DDBenchError("hello: extractor must be a node with a `name`")
            if self.rank < 1 or self.epochs < 0 or self.batch_size < 1:
                raise DDBenchError("hello: rank and batch_size must be >= 1, epochs >= 0")
            if not (math.isfinite(self.lr) and self.lr > 0 and self.temperature > 0):
                raise DDBenchError("hello: lr and temperature must be positive")
            if self.store_dtype not in ("float16", "float32"):
                raise DDBenchError(f"hello: store_dtype must be float16 or float32, "
                                   f"got {self.store_dtype!r}")  # fmt: skip

    name = "hello"
    protocol = "hello"

    # ------------------------------------------------------------------ pieces

    def extractor_args(self, task: Task) -> dict[str, Any]:
        args = dict(self.extractor)
        if args["name"] == "teacher_cache" and args.get("dataset") is None:
            other = OTHER_DATASET.get(task.spec.name)
            if other is None:
                raise DDBenchError(
                    f"hello: no default extractor dataset for {task.spec.name}; set "
                    "method.extractor.dataset"
                )
            args["dataset"] = other
        if args["name"] == "teacher_cache":
            args["teacher"] = {**DEFAULT_TEACHER, **dict(args.get("teacher") or {})}
        return args

    def select_images(self, task: Task, teacher: torch.nn.Module) -> torch.Tensor:
        """Indices (into the train split) of the ``ipc`` images per class the teacher is most
        confident about (ties to the lower index), class by class."""
        out = []
        for c in range(task.num_classes):
            idx = task.train.indices_of(c)
            logits = engine.predict([teacher], task.train.images[idx], transform=task.normalize)[0]
            p = logits.float().softmax(1)[:, c].cpu()
            order = torch.sort(-p, stable=True).indices[: task.ipc]
            out.append(idx[order])
        return torch.cat(out)

    def init_projector(
        self, task: Task, trunk, spec, real: torch.Tensor, labels: torch.Tensor
    ) -> LabelProjector:
        """The projector before training: a zero low-rank update (``A`` random from the task's
        generator, ``B`` zeros) and the nearest-class-mean head of the real features."""
        conv = last_conv(trunk)[2]
        per_out, out_ch = conv.weight[0].numel(), conv.weight.shape[0]
        a = torch.randn(self.rank, per_out, generator=task.generator) / math.sqrt(per_out)
        b = torch.zeros(out_ch, self.rank)
        zeros = {"lora_a": a, "lora_b": b, "head_weight": torch.zeros(task.num_classes, out_ch),
                 "head_bias": torch.zeros(task.num_classes)}  # fmt: skip
        proj = LabelProjector(trunk, spec, task.spec, zeros).to(task.device).eval()
        feats = []
        with torch.no_grad():
            for i in range(0, len(real), 500):
                x = task.normalize(real[i : i + 500].to(task.device))
                feats.append(proj.features(x).float())
        means = class_means(torch.cat(feats), labels.to(task.device), task.num_classes)
        with torch.no_grad():
            proj.head.weight.copy_(means)
            proj.head.bias.copy_(-0.5 * (means**2).sum(1))
        return proj

    def fit(self, task: Task, proj: LabelProjector, teacher: torch.nn.Module) -> dict[str, Any]:
        """AdamW on the low-rank matrices and the head: KL(teacher || projector) at
        ``temperature`` on DSA views of the real train split, one checkpoint per epoch where
        the task checkpoints at all (an epoch is this method's unit; a killed fit resumes at its
        last finished epoch)."""
        params = proj.trainable()
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        augment = make_augment(task.spec.dsa_strategy)
        start, before, losses = 0, 0.0, []
        loaded = task.checkpointer.load()
        if loaded is not None:
            step, tensors, state = loaded
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.copy_(tensors[f"param.{i}"].to(p.device))
            opt.load_state_dict(load_optimizer_state(state["optim"], tensors))
            task.generator.set_state(tensors["rng"])
            start, before, losses = int(step), float(state["seconds"]), list(state["losses"])
        t0 = time.perf_counter()
        x_all, n = task.train.images, len(task.train)
        temp = self.temperature
        for ep in range(start, self.epochs):
            order = torch.randperm(n, generator=task.generator)
            total = 0.0
            for b0 in range(0, n, self.batch_size):
                idx = order[b0 : b0 + self.batch_size]
                x = task.normalize(x_all[idx].to(task.device))
                if augment is not None:
                    x = augment(x, task.generator)
                with torch.no_grad():
                    q = F.softmax(teacher(x).float() / temp, 1)
                log_p = F.log_softmax(proj(x).float() / temp, 1)
                loss = (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(1).mean() * temp**2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / n)
            if not math.isfinite(losses[-1]):
                raise DDBenchError(f"hello: the projector's loss is {losses[-1]}; lower method.lr")
            if task.checkpointer.dir is not None and task.checkpointer.every > 0:
                tensors = {f"param.{i}": p.detach() for i, p in enumerate(params)}
                tensors["rng"] = task.generator.get_state()
                optim = optimizer_state(opt.state_dict(), "optim", tensors)
                state = {"seconds": before + time.perf_counter() - t0, "losses": losses,
                         "optim": optim}  # fmt: skip
                task.checkpointer.save(ep + 1, tensors, state)
        return {"epochs": self.epochs, "resumed_from": start, "losses": losses,
                "seconds_before_resume": before}  # fmt: skip

    # ------------------------------------------------------------------ distill

    def distill(self, task: Task) -> SyntheticSet:
        check_class_budget(task, self.name)
        args = self.extractor_args(task)
        with torch.random.fork_rng(devices=[]):
            teacher, tmeta = get_teacher(
                task.spec.name, TeacherConfig.from_config(self.teacher), device=task.device
            )
        teacher = teacher.eval().requires_grad_(False)
        picked = self.select_images(task, teacher)
        trunk, spec, desc = build_extractor(args, task.spec.name, task.device)
        proj = self.init_projector(task, trunk, spec, task.train.images, task.train.labels)
        fitted = self.fit(task, proj, teacher)
        agree = None
        if task.val_loader is not None:  # how often the projector's argmax is the teacher's
            out = engine.predict([proj, teacher], task.val.images, transform=task.normalize)
            agree = float((out[0].argmax(1) == out[1].argmax(1)).float().mean())
        extras = proj.tensors(getattr(torch, self.store_dtype))
        images = task.normalize(task.train.images[picked].to(task.device))
        labels = task.train.labels[picked].clone()
        proj_bytes = sum(v.numel() * v.element_size() for v in extras.values())
        label_bytes = proj_bytes + labels.numel() * labels.element_size()
        fkd = stored_bytes(FKD_EPOCHS, len(labels), task.num_classes, max(task.spec.im_size))
        described = {**desc, **{k: v for k, v in args.items() if k not in desc}}
        projector = {
            "extractor": args,
            "extractor_description": described,
            "substitution": SUBSTITUTION.format(
                desc=f"the trunk of a cached {described.get('model', args['name'])} teacher "
                f"of {described.get('dataset', '?')} (ddbench.projector)"
            ),
            "rank": self.rank,
            "store_dtype": self.store_dtype,
            "teacher": {"key": tmeta["key"], "model": tmeta["config"]["model"],
                        "val_accuracy": tmeta["val_accuracy"], "config": tmeta["config"]},
            "val_agreement_with_teacher": agree,
            "projector_bytes": proj_bytes,
            "label_bytes": label_bytes,
            "fkd_label_bytes": fkd,
            "fkd_ratio": fkd / label_bytes,
        }  # fmt: skip
        synset = task.make_set(
            images, labels, method=self, protocol=self.protocol,
            relabel={"format": "projector", "projector": projector},
            extras={k: {"role": PROJECTOR_ROLE} for k in extras},
            distillation={**fitted, "selected": "teacher confidence per class"},
        )  # fmt: skip
        synset.extras = extras
        return synset
