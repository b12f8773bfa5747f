"""The real nvcc accepts the preprocessing kernel for the Jetson Orin (sm_87) and the lent GPUs (sm_90).

Compiles exactly the source pycuda's ``SourceModule`` would get (same
defines, ``no_extern_c``) for every (stored dtype, output dtype) pair, and
reads ptxas' report: no register spills, no stack frame. Skipped only where
the machine has no CUDA compiler (the CI and development machines have one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from edge_agent.inference.trt.preprocess_kernel import kernel_source


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.access(p, os.X_OK)), None)


pytestmark = pytest.mark.skipif(_nvcc() is None, reason="no CUDA compiler (nvcc) on this machine")


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"], ids=["orin", "hopper"])
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("raw_dtype", [np.int16, np.uint16], ids=["int16", "uint16"])
def test_kernel_compiles_without_spills(tmp_path, arch, raw_dtype, out_dtype):
    source = tmp_path / "kernel.cu"
    source.write_text(kernel_source(raw_dtype, out_dtype))
    proc = subprocess.run([_nvcc(), "--cubin", f"-arch={arch}", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                           str(source)], capture_output=True, text=True, timeout=120)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "Compiling entry function 'raw_to_input'" in report, "extern \"C\" keeps the name pycuda looks up"
    assert re.search(r"0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads", report), report
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    assert registers <= 64, f"{registers} registers per thread would limit occupancy at 256 threads per block"
    assert (tmp_path / "k.cubin").stat().st_size > 0
