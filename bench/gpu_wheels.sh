#!/usr/bin/env bash
# Fetch, where pip can reach an index, the wheels that bench/gpu_check.sh installs on an offline
# GPU node: the packages ddbench imports on the paths it checks and that such a node lacks.
#
#   bash bench/gpu_wheels.sh            # -> .whl/ at the repository root (git-ignored)
#   GPU_PYTHON=3.12 bash bench/gpu_wheels.sh
#
# The node (docs/gpu.md) has PyTorch, torchvision, numpy, safetensors, scikit-learn, tqdm,
# PyYAML, packaging and pillow; it lacks hydra-core (ddbench.method.build_method instantiates a
# method's config node with it) and omegaconf, which both need antlr4-python3-runtime 4.9.*.
# That runtime is published as an sdist only: it is pure Python, so a wheel is built here
# (py3-none-any) with `pip wheel`. kornia and wandb are not carried: ddbench imports them only
# inside the functions that need them (ZCA whitening, the wandb logger), which the check never
# calls. Each package is named with its exact version and --no-deps, so nothing else is pulled
# in; the versions are the ones the test suite runs with.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION=${GPU_PYTHON:-3.12}  # the node's python3 (docs/gpu.md)
DEST=.whl
WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1)
SDIST_ONLY=(antlr4-python3-runtime==4.9.3)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)

mkdir -p "$DEST"
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
for spec in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp "${platform_args[@]}" -d "$DEST" "$spec"
done
for spec in "${SDIST_ONLY[@]}"; do
    name=${spec%%==*}
    if ! ls "$DEST/${name//-/_}-${spec##*==}-"*.whl >/dev/null 2>&1; then
        python3 -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST" "$spec"
    fi
done
# a wheel built for this machine's interpreter only would not install there
for w in "$DEST"/*.whl; do
    case "$w" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp${PY_VERSION/./}-*) ;;
        *) echo "gpu_wheels: $w is not installable on Python $PY_VERSION" >&2; exit 1 ;;
    esac
done
ls -l "$DEST"
echo "gpu_wheels: $(du -ch "$DEST"/*.whl | tail -1 | cut -f1) in $DEST/"
