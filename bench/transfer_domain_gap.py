"""Why digits28 puts scikit-learn's digits in MNIST's layout (docs/transfer.md): the ink of each
dataset's images, and how DP4TL's LM surrogate (the cached mnist_fashion20 teacher of
bench/transfer.py dp4tl's defaults) reads digits28's train images, in MNIST's layout (each 8x8
digit resized into a 20x20 box centred in 28x28, as digits28 is prepared) and stretched over the
whole 28x28 frame.

    python bench/transfer_domain_gap.py [--out bench/results/transfer/domain_gap.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ddbench import data, engine
from ddbench.teachers import TeacherConfig, get_teacher


def ink(x: torch.Tensor) -> dict:
    x = x.float() / 255
    return {"mean_pixel": x.mean().item(), "pixels_over_half": (x > 0.5).float().mean().item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/transfer/domain_gap.json")
    a = p.parse_args()
    out: dict = {"ink": {name: ink(data.load_split(name, "train").images)
                         for name in ("digits28", "mnist", "fashion_mnist")}}  # fmt: skip
    target = data.load_split("digits28", "train")
    small = data.load_split("digits", "train")  # the same images, 8x8
    assert torch.equal(small.labels, target.labels)
    stretched = F.interpolate(small.images.float(), size=(28, 28), mode="bilinear")
    layouts = {"mnist_layout (digits28)": target.images,
               "stretched_28x28": stretched.round().clamp(0, 255).to(torch.uint8)}  # fmt: skip
    out["ink"]["digits_stretched_28x28"] = ink(layouts["stretched_28x28"])
    source = data.load_split("mnist_fashion20", "train")
    net, meta = get_teacher("mnist_fashion20", TeacherConfig(), device="cpu")
    out["surrogate"] = {"teacher": meta.get("key")}
    for name, images in layouts.items():
        logits = engine.predict([net], images, transform=source.standardize)[0]
        top = logits.argmax(1)
        hits = torch.bincount(top, minlength=20)
        out["surrogate"][name] = {
            "predicted_a_digit_class": (top < 10).float().mean().item(),
            "accuracy_among_digit_classes": (logits[:, :10].argmax(1) == target.labels)
            .float().mean().item(),
            "hits_per_source_class": hits.tolist(),
            "most_hit_half": sorted(hits.argsort(descending=True)[:10].tolist()),
        }  # fmt: skip
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
