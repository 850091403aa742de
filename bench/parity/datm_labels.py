"""DATM's initial soft labels, theirs against ddbench's, on the same images and experts.

Their distill/DATM.py run for 0 iterations (``trajectory.sh datm ... 0``, or DATM.py on the
config parity.py ``datm_config`` writes, with ``Iteration: 0``) saves its initial images and
label logits (``images_0.pt``, ``labels_0.pt``). This script computes ddbench's initial logits
(``DATM.initial_logits``) on those images with the parity run's settings (parity.py
``trajectory_ddbench_args``) and the same experts (imported from the same replay buffers: the
``method.experts.*`` overrides ``ddbench expert import`` printed, recorded in the parity JSON's
``experts``) and prints the largest difference, for ``label_average`` on (DATM's rule) and off
(the label expert alone).

Usage: python bench/parity/datm_labels.py DIR DATASET OVERRIDE...
  e.g. DIR .../seed0/official fashion_mnist method.experts.source=buffers-ed6ca206bdd2
       method.experts.epochs=4 method.num_experts=2
"""

import sys
from pathlib import Path

import torch
from parity import trajectory_ddbench_args

from ddbench.experts import FlatModel, build_expert_model, get_experts
from ddbench.method import build_method
from ddbench.methods import packaged_config


def main() -> None:
    folder, dataset, *overrides = sys.argv[1:]
    folder = Path(folder)
    images = torch.load(folder / "images_0.pt", weights_only=True)
    theirs = torch.load(folder / "labels_0.pt", weights_only=True)
    k = theirs.shape[1]
    ipc = len(images) // k
    hard = torch.arange(k).repeat_interleave(ipc)  # their label_syn: [0]*ipc, [1]*ipc, ...
    for average in (True, False):
        m = build_method(packaged_config("datm", [
            f"dataset={dataset}", *trajectory_ddbench_args("datm", dataset, ipc), *overrides,
            f"method.label_average={str(average).lower()}",
        ]))  # fmt: skip
        m.trajectories = get_experts(dataset, m.experts, m.num_experts, "cpu", train=False)
        net = FlatModel(build_expert_model(dataset, m.experts).eval())
        with torch.no_grad():
            ours = m.initial_logits(images, hard, net, m.trajectories[m.label_expert][-1])
        diff = (ours - theirs).abs().max().item()
        print(
            f"label_average={average}: max |ddbench - DATM| = {diff:.3g} over {len(images)} images"
        )


if __name__ == "__main__":
    main()
