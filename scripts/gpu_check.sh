#!/usr/bin/env bash
# The prepared GPU check: build pycuda from its sdist with nvcc, run the `gpu`-marked tests, print measurements.
#
# Where: a lent x86-64 GPU machine (CUDA toolkit with nvcc, python3 with numpy/pytest/onnx/onnxruntime/torch,
# no network) — or any Linux box with an NVIDIA GPU and the CUDA toolkit. TensorRT is not expected: its tests
# skip honestly where it is absent (docs/TENSORRT.md).
#
# 1. Here (with network), once:   bash scripts/gpu_check.sh --download
#    fills the git-ignored wheels/ with the pycuda sdist and the wheels of its pure-Python needs.
# 2. There, from the repo root:   bash scripts/gpu_check.sh
#    (with the device tool: run(command="bash scripts/gpu_check.sh", carry=["wheels"], timeout_s=540)).
# Results go to $OUT (or /tmp/gpu_check): gpu.txt, pycuda_build.log, gpu_tests.log, measurements.json.
# Exit status: the tests' (0 = all passed or skipped for a stated reason).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
PYCUDA_VERSION=2026.1

if [ "${1:-}" = "--download" ]; then
    mkdir -p wheels
    "$PY" -m pip download -q --no-deps --no-binary pycuda "pycuda==$PYCUDA_VERSION" -d wheels
    "$PY" -m pip download -q --no-deps -d wheels pytools platformdirs mako
    # siphash24 (needed by pytools) is compiled: fetch the build for the GPU machine's CPython 3.12.
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d wheels siphash24
    ls -l wheels
    exit 0
fi

RESULTS=${OUT:-/tmp/gpu_check}
mkdir -p "$RESULTS"
log() { printf '\n== %s\n' "$*"; }

log "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | tee "$RESULTS/gpu.txt"
# The CUDA root is where cuda.h is: an `nvcc` on PATH may be a wrapper script (/usr/local/bin/nvcc), from
# which pycuda would guess /usr/local.
CUDA_ROOT=""
for d in /usr/local/cuda /usr/local/cuda-* "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /x/x)")")")"; do
    [ -f "$d/include/cuda.h" ] && { CUDA_ROOT=$d; break; }
done
[ -n "$CUDA_ROOT" ] || { echo "no CUDA toolkit (include/cuda.h) found"; exit 2; }
export PATH="$CUDA_ROOT/bin:$PATH"
echo "CUDA root: $CUDA_ROOT"
nvcc --version | tail -n 2
"$PY" --version
ls wheels/pycuda-*.tar.gz >/dev/null 2>&1 || { echo "wheels/ is empty: run 'bash scripts/gpu_check.sh --download' where pip works, and carry wheels/"; exit 2; }

SITE=/tmp/gpu_check_site
rm -rf "$SITE" && mkdir -p "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" wheels/*.whl || exit 2
export PYTHONPATH="$SITE:$REPO"

log "building pycuda $PYCUDA_VERSION from its sdist with nvcc (parallel compile)"
BUILD=/tmp/gpu_check_build
rm -rf "$BUILD" && mkdir -p "$BUILD"
tar xzf wheels/pycuda-"$PYCUDA_VERSION".tar.gz -C "$BUILD"
SRC="$BUILD/pycuda-$PYCUDA_VERSION"
# pycuda links against libcuda.so (the driver); toolkits without lib64/stubs and driver mounts with only
# libcuda.so.1 need a link-time name. curand is left out where its header is missing (we do not use it).
LIBCUDA=$(for f in "$CUDA_ROOT"/lib64/stubs/libcuda.so /usr/local/nvidia/lib64/libcuda.so* \
                 /usr/lib/x86_64-linux-gnu/libcuda.so* /usr/lib64/libcuda.so* \
                 $(ldconfig -p 2>/dev/null | awk '/libcuda\.so/ {print $NF}'); do [ -e "$f" ] && echo "$f"; done | head -n 1)
CONF=(--cuda-root="$CUDA_ROOT")
if [ -n "$LIBCUDA" ]; then
    mkdir -p "$BUILD/libcuda" && ln -sf "$LIBCUDA" "$BUILD/libcuda/libcuda.so"
    CONF+=(--cudadrv-lib-dir="$BUILD/libcuda")
fi
[ -f "$CUDA_ROOT/include/curand.h" ] || CONF+=(--no-cuda-enable-curand)
echo "libcuda for linking: ${LIBCUDA:-none found}; configure ${CONF[*]}"
( cd "$SRC" && "$PY" configure.py "${CONF[@]}" ) >"$RESULTS/pycuda_configure.log" 2>&1 || { cat "$RESULTS/pycuda_configure.log"; exit 2; }
start=$(date +%s)
( cd "$SRC" && "$PY" - <<'PYEOF' ) >"$RESULTS/pycuda_build.log" 2>&1
# setuptools compiles one extension's sources one by one; compile them in parallel instead.
import os, runpy, sys
from concurrent.futures import ThreadPoolExecutor
from setuptools._distutils import ccompiler

def parallel_compile(self, sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                     extra_preargs=None, extra_postargs=None, depends=None):
    macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
        output_dir, macros, include_dirs, sources, depends, extra_postargs)
    cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)
    def one(obj):
        src, ext = build[obj]
        self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
    with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        list(pool.map(one, objects))
    return objects

ccompiler.CCompiler.compile = parallel_compile
sys.argv = ["setup.py", "build_ext", "--inplace"]
runpy.run_path("setup.py", run_name="__main__")
PYEOF
build_rc=$?
echo "pycuda build: exit $build_rc in $(( $(date +%s) - start )) s"
if [ $build_rc -ne 0 ]; then tail -n 40 "$RESULTS/pycuda_build.log"; exit 2; fi
export PYTHONPATH="$SRC:$SITE:$REPO"
"$PY" -c "import pycuda, pycuda.driver as d; d.init(); print('pycuda', pycuda.VERSION_TEXT, 'on', d.Device(0).name(), 'sm', d.Device(0).compute_capability())" || exit 2

log "gpu tests (pytest -m gpu tests/gpu)"
"$PY" -m pytest -m gpu tests/gpu -v -rs -p no:cacheprovider 2>&1 | tee "$RESULTS/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

log "doctor (GPU lines)"
"$PY" -c "from edge_agent.inference.trt import health; [print(*f()) for f in (health.gpu_driver, health.tensorrt_check, health.pycuda_check, health.nvcc_check)]"

log "measurements (H2D pinned vs pageable; raw→input kernel vs PyTorch on this GPU)"
"$PY" -m edge_agent.inference.trt.measure | tee "$RESULTS/measurements.json"
exit $tests_rc
