"""How much does forgetting's IPC-1 set depend on how ties are broken?

With a short counting run (5 epochs) an image is forgotten at most twice, so the "hardest" image of
a class is one of the many tied at the class's maximum count, picked by the task's generator. This
script scores once (the cached scores of ``method=forgetting seed=0``), then writes one set per
tie-break seed (same scores, a different random pick among the ties) and prints the ties per class.
Evaluate the sets with ``ddbench evaluate``::

    python bench/forgetting_tiebreak.py --dataset fashion_mnist --ipc 1 --tiebreaks 1 2 3 4 \\
        --out bench/results/selection_diag/fashion_mnist/forgetting_tiebreak
    for t in 1 2 3 4; do
      ddbench evaluate path=bench/results/selection_diag/fashion_mnist/forgetting_tiebreak/t$t.safetensors \\
        protocol=standard hydra.run.dir=bench/results/selection_diag/fashion_mnist/forgetting_tiebreak/t$t
    done
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddbench import data, synset
from ddbench.augment import DSA
from ddbench.coreset import select_top
from ddbench.method import Task, build_method
from ddbench.methods import packaged_config
from ddbench.models import create_model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=5, help="epochs of the counting run")
    ap.add_argument("--never-learned", default="count", choices=["count", "hardest"])
    ap.add_argument("--tiebreaks", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    spec = data.get_spec(args.dataset)
    train = data.load_split(args.dataset, "train")
    task = Task(
        train=train,
        ipc=args.ipc,
        model_factory=lambda: create_model(
            "convnet", spec.channels, spec.num_classes, spec.im_size
        ),
        generator=torch.Generator().manual_seed(0),
        seed=0,
        device=torch.device("cpu"),
        augment=DSA(spec.dsa_strategy),
    )
    # the method as bench/reproduce_selection.sh's `ddbench run method=forgetting ...` builds it
    # (the per-epoch count): the same config, hence the same cache key as that run's scores
    node = packaged_config(
        "forgetting",
        [
            "method.count=epoch",
            "method.schedule=constant",
            "method.augment=none",
            f"method.epochs={args.epochs}",
            f"method.never_learned={args.never_learned}",
        ],
    )
    method = build_method(node)
    scores = method.score(task)["score"].cpu()  # seed 0's scoring run (cached)
    ties = []
    for c in range(spec.num_classes):
        s = scores[train.indices_of(c)]
        ties.append(int((s == s.max()).sum()))
    print(f"images tied at each class's maximum score: {ties}")
    args.out.mkdir(parents=True, exist_ok=True)
    for t in args.tiebreaks:
        task.generator = torch.Generator().manual_seed(t)
        idx = select_top(task, scores, descending=True)
        images = task.normalize(train.images[idx])
        s = task.make_set(
            images, train.labels[idx], method=method, indices=idx.tolist(), tiebreak_seed=t
        )
        path = args.out / f"t{t}.safetensors"
        synset.save(s, path)
        print(f"tie-break {t}: {path} (indices {idx.tolist()[:10]})")


if __name__ == "__main__":
    main()
