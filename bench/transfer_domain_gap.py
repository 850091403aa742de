"""Why label mapping picks Fashion-MNIST classes for the digits28 target (docs/transfer.md):
the ink of each dataset's images, and how DP4TL's LM surrogate (the cached mnist_fashion20
teacher of bench/transfer.py dp4tl's defaults) reads digits28's train images.

    python bench/transfer_domain_gap.py [--out bench/results/transfer/domain_gap.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddbench import data, engine
from ddbench.teachers import TeacherConfig, get_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/transfer/domain_gap.json")
    a = p.parse_args()
    out: dict = {"ink": {}}
    for name in ("digits28", "mnist", "fashion_mnist"):
        x = data.load_split(name, "train").images.float() / 255
        out["ink"][name] = {"mean_pixel": x.mean().item(), "pixels_over_half": (x > 0.5).float()
                            .mean().item()}  # fmt: skip
    target = data.load_split("digits28", "train")
    source = data.load_split("mnist_fashion20", "train")
    net, meta = get_teacher("mnist_fashion20", TeacherConfig(), device="cpu")
    logits = engine.predict([net], target.images, transform=source.standardize)[0]
    top = logits.argmax(1)
    out["surrogate"] = {
        "teacher": meta.get("key"),
        "predicted_a_digit_class": (top < 10).float().mean().item(),
        "accuracy_among_digit_classes": (logits[:, :10].argmax(1) == target.labels)
        .float().mean().item(),
        "hits_per_source_class": torch.bincount(top, minlength=20).tolist(),
    }  # fmt: skip
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
