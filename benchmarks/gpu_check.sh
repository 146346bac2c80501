#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, install the package with its cuda and test
# extras, run the CUDA test suite on the device (not the simulator), then time conv2d,
# pooling, ReLU and LeNet-5/SmallVGG training steps against PyTorch CUDA and write a
# pytest-benchmark JSON for benchmarks/report.py.
#
#   benchmarks/gpu_check.sh [OUT.json]        default OUT: gpu_check.json
#   GPU_CHECK_OFFLINE=1 benchmarks/gpu_check.sh   no pip: use the CuPy/torch already installed
#
# Exit status: 0 all done; 2 no usable GPU (the report line says which piece is missing);
# 1 a failing step.  Without a GPU it stops at the GPU step and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check.json}"
unset NUMBA_ENABLE_CUDASIM          # the real device, never the simulator

echo "== 1/5 install"
if [[ "${GPU_CHECK_OFFLINE:-0}" == "1" ]]; then
    echo "offline: using the installed packages, this checkout on PYTHONPATH"
else
    python -m pip install ".[cuda,test]"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== 2/5 device report"
python -m kernels
status="$(python -c 'import importlib; print(importlib.import_module("kernels.report").gpu_check())')"
if [[ "$status" != ok* ]]; then
    echo "NO GPU: $status"
    echo "gpu_check.sh stops here: the CUDA tests and timings need an NVIDIA GPU."
    exit 2
fi

echo "== 3/5 CUDA test suite on the GPU"
python -m pytest -q -p no:cacheprovider -m cuda tests/

echo "== 4/5 timings against PyTorch CUDA -> $out"
python -m pytest -q -p no:cacheprovider benchmarks/bench_gpu.py --benchmark-only \
    --benchmark-json="$out"

echo "== 5/5 ratios (ours / torch, median)"
python - "$out" <<'PY'
import json, sys
rows = {}
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    info = b["extra_info"]
    rows.setdefault(info["case"], {})[info["impl"]] = b["stats"]["median"]
print(f"{'case':28s} {'ours ms':>9s} {'torch ms':>9s} {'ratio':>7s}")
for case, t in rows.items():
    ours, torch = t.get("ours"), t.get("torch")
    ratio = f"{ours / torch:7.2f}" if ours and torch else "      -"
    fmt = lambda v: f"{v * 1e3:9.3f}" if v else "        -"
    print(f"{case:28s} {fmt(ours)} {fmt(torch)} {ratio}")
PY
python benchmarks/report.py "$out" || echo "(benchmarks/report.py could not read $out)"
