#!/usr/bin/env bash
# The GPU checks, prepared to run in one call on a lent GPU machine whose image holds PyTorch, Triton, CuPy,
# numba, TensorBoard and pytest but neither Hydra, snnTorch, SpikingJelly nor NIR, and reaches no package index.
#
#   bash bench/gpu_session.sh wheels        # here, where pip reaches PyPI: snnrun and those packages as wheels
#                                           # in .whl/ (all pure Python, about 2 MB; keep .whl/ out of git)
#   bash bench/gpu_session.sh run OUT [S]   # there: install the wheels, then, each within its share of S seconds
#                                           # (default 540), the CUDA and Triton tests, the kernel benchmark and
#                                           # the network benchmark; six files in OUT
#
# The tests are tests/test_cuda.py (every fused op on the GPU against the CPU in float64, a csnn step in fp32
# and bf16, the snnrun command on device=cuda and the export of its checkpoint), tests/test_triton.py (every
# Triton kernel against the torch op on the GPU) and tests/test_cli.py (the command with device=auto, so on
# the GPU there). The benchmarks are the two commands the README names for a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
wheels)
    rm -rf .whl && mkdir -p .whl
    python3 -m pip wheel -q --no-deps -w .whl . hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 \
        snntorch==1.0.0 spikingjelly==2.0.0 nir==1.0.8 nirtorch==2.6
    ls .whl
    ;;
run)
    out=${2:?"bash bench/gpu_session.sh run OUT [SECONDS]"}
    budget=${3:-540}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
    python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'" || exit 1
    { nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
        > "$out/machine.txt" 2>&1
    timeout $((budget * 40 / 100)) python3 -m pytest -p no:cacheprovider -n 8 -q -rs -o addopts= -m "not slow" \
        tests/test_cuda.py tests/test_triton.py tests/test_cli.py > "$out/tests.txt" 2>&1
    echo "tests: exit $?" >> "$out/tests.txt"
    timeout $((budget * 35 / 100)) python3 bench/kernels.py --device cuda --workloads lif on alif_pixels smnist_pixels \
        --rounds 3 --out "$out/kernels.md" > "$out/kernels.log" 2>&1
    echo "kernels: exit $?" >> "$out/kernels.log"
    timeout $((budget * 25 / 100)) python3 bench/throughput.py --device cuda --no-memory --iters 10 \
        --out "$out/throughput.md" > "$out/throughput.txt" 2>&1
    echo "throughput: exit $?" >> "$out/throughput.txt"
    tail -n 3 "$out/tests.txt" "$out/kernels.log" "$out/throughput.txt"
    ;;
*)
    sed -n 2,14p "$0"
    exit 2
    ;;
esac
