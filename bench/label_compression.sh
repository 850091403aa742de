#!/usr/bin/env bash
# The accuracy an SRe2L set loses when its soft labels are stored smaller. One SRe2L set of
# Fashion-MNIST at IPC 10 (a short recovery: 200 iterations) is distilled ONCE with float32
# labels; its labels are then re-stored as float32, float16, and top-5 / top-2 / top-1 (float16
# values + uint8 classes + one float16 fill per row, the dropped logits' mean), the images left
# as they are, and each copy is evaluated under `kd_set` (the kd recipe on the set's stored
# labels: KL at T=4, AdamW + cosine, 300 epochs, DSA, 5 seeds). Prints accuracy, label bytes
# and image bytes per storage, and the accuracy lost against float32.
#
# Usage: bash bench/label_compression.sh [OUT_DIR] [evaluate overrides...]
#   DISTILL_ARGS="method.iterations=200"  overrides of the distill step (default shown)
#   e.g. a smoke run: DISTILL_ARGS="method.iterations=20" \
#        bash bench/label_compression.sh /tmp/lc protocol.epochs=20 'protocol.seeds=[0]'
# The SRe2L teacher (ConvNet-BN, 5 epochs) is trained once into the teacher cache on first use.
set -euo pipefail
out=${1:-bench/results/label_compression}
shift || true
read -r -a distill_args <<<"${DISTILL_ARGS:-method.iterations=200}"
variants=(fp32 fp16 top5 top2 top1)

ddbench distill method=sre2l dataset=fashion_mnist ipc=10 method.label_dtype=float32 \
  precision=fp32 progress=false hydra.run.dir="$out/distill" "${distill_args[@]}"

python - "$out" <<'PY'
"""Re-store the distilled set's labels: same images, float32 -> each variant."""
import copy, dataclasses, pathlib, sys
from ddbench import synset
from ddbench.relabel import stored_labels

out = pathlib.Path(sys.argv[1])
src = synset.load(out / "distill" / "synset.safetensors")
for name, dtype, k in [("fp32", "float32", None), ("fp16", "float16", None),
                       ("top5", "float16", 5), ("top2", "float16", 2), ("top1", "float16", 1)]:
    labels, _, storage = stored_labels(src.labels.float(), src.hard_labels, dtype, k)
    meta = copy.deepcopy(src.meta)
    meta.pop("sha256", None)
    meta.pop("label_storage", None)
    if storage is not None:
        meta["label_storage"] = storage
    meta["relabel"].update(dtype=dtype, topk=k)
    meta["method"]["config"].update(label_dtype=dtype, label_topk=k)
    s = dataclasses.replace(src, labels=labels, meta=meta)  # images and the rest as they are
    synset.save(s, out / "sets" / f"{name}.safetensors")
    print(f"{name}: {s.nbytes()['labels']} label bytes")
PY

for v in "${variants[@]}"; do
  ddbench evaluate synset="$out/sets/$v.safetensors" protocol=kd_set precision=fp32 progress=false \
    hydra.run.dir="$out/eval/$v" "$@"
done

python - "$out" "${variants[@]}" <<'PY'
import json, pathlib, sys
out, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
rows = {n: json.loads((out / "eval" / n / "result.json").read_text()) for n in names}
ref = rows[names[0]]["accuracy"]["mean"]
r0 = rows[names[0]]
print(f"SRe2L fashion_mnist ipc={r0['ipc']} protocol={r0['protocol']['name']} "
      f"(comparable: {r0['protocol']['comparable']}), seeds={len(r0['accuracy']['per_seed'])}")
print(f"{'labels':8s} {'storage':24s} {'label B':>8s} {'image B':>8s} {'accuracy':>16s} {'lost':>6s}")
for n, r in rows.items():
    a, st = r["accuracy"], r["labels"].get("storage", {})
    desc = st.get("format", "?") + (f" k={st['k']}" if "k" in st else "") + f" {st.get('dtype', '')}"
    print(f"{n:8s} {desc:24s} {r['cost']['label_bytes']:8d} {r['cost']['image_bytes']:8d} "
          f"{a['mean']:7.2f} +- {a['std']:5.2f} {ref - a['mean']:6.2f}")
PY
