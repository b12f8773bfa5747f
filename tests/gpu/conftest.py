"""GPU tests: need pycuda and a CUDA device (run by scripts/gpu_check.sh; deselected by `-m "not gpu"`).

Only numpy, onnx and pycuda are needed here (no pydicom), so the lent GPU
machine can run them with the wheels the script carries.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def cuda():
    """pycuda.driver with the primary context of device 0 pushed in this thread (popped and released after)."""
    driver = pytest.importorskip("pycuda.driver", reason="pycuda is not installed")
    driver.init()
    if driver.Device.count() == 0:
        pytest.skip("no CUDA device")
    ctx = driver.Device(0).retain_primary_context()
    ctx.push()
    try:
        yield driver
    finally:
        driver.Context.pop()
        ctx.detach()
