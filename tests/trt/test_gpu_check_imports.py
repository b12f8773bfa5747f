"""The prepared GPU check runs with only what the lent GPU machine has (no pydicom, paho, watchdog, ...).

scripts/gpu_check.sh gets one try on that machine: a stray import of a
package that is not there would waste it. Here those packages are made
unimportable in a child interpreter, which then collects and runs the
`gpu`-marked tests (they skip without pycuda) and the measurement module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ABSENT_THERE = ("pydicom", "paho", "watchdog", "pynetdicom", "amqtt", "jsonschema", "pylibjpeg", "gdcm",
                "jpeg_ls", "yaml")
BLOCK = f"import sys\nfor m in {ABSENT_THERE!r}: sys.modules[m] = None\n"


def _child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)


def test_gpu_tests_collect_and_measure_runs_without_the_agents_dependencies():
    proc = _child("import pytest\nsys.exit(pytest.main(['-m', 'gpu', 'tests/gpu', '-q', '-p', 'no:cacheprovider',"
                  " '-p', 'no:randomly']))")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stdout.lower()
    proc = _child("from edge_agent.inference.trt import health, measure, runner\n"
                  "print([f()[0] for f in (health.gpu_driver, health.tensorrt_check, health.pycuda_check)])\n"
                  "measure.main()")
    assert proc.returncode == 0, proc.stderr
    assert '"preprocess_32x512x512"' in proc.stdout


def test_the_block_is_real():
    proc = _child("import pydicom")
    assert proc.returncode != 0 and ("ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr)
