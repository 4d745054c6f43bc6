#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 against the headers of the torch that the
# active `python` imports: CI has no GPU (and usually a CPU build of torch), so compiling is the check that
# the CUDA kernels still build. Exits 0 with a message when nvcc is absent, nonzero on any compile error.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    NVCC=/usr/local/cuda/bin/nvcc
fi
if [ -z "$NVCC" ]; then
    echo "compile_cuda: nvcc not found; skipping the CUDA compile check"
    exit 0
fi
PYTHON=${PYTHON:-$(command -v python || command -v python3)}

# torch's include directories and C++ ABI flag, as torch.utils.cpp_extension would pass them (a variable
# first, so that a python without torch stops the script under set -e).
flags=$("$PYTHON" - <<'PY'
import torch
from torch.utils import cpp_extension

for path in cpp_extension.include_paths():
    print(f"-I{path}")
print(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
PY
)
mapfile -t TORCH_FLAGS <<< "$flags"

shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
    echo "compile_cuda: no CUDA sources"
    exit 0
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for source in "${sources[@]}"; do
    echo "compile_cuda: $source"
    # The same defines as the extension build (setup.py): the limited Python API and the CUDA switch.
    if ! "$NVCC" -c "$source" -o "$out/$(basename "$source").o" \
        -std=c++20 -O3 -Xcompiler -fPIC --expt-relaxed-constexpr \
        -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
        -DFASTFLOW_WITH_CUDA -DPy_LIMITED_API=0x030A0000 -DTORCH_EXTENSION_NAME=_C \
        "${TORCH_FLAGS[@]}"; then
        echo "compile_cuda: FAILED $source"
        status=1
    fi
done
if [ $status -eq 0 ]; then
    echo "compile_cuda: all ${#sources[@]} CUDA sources compiled for sm_80 and sm_90"
fi
exit $status
