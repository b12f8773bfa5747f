"""Check the TensorRT Python API names edge-agent uses against real TensorRT bindings, without a GPU.

TensorRT's libraries (libnvinfer) come only from NVIDIA's index or JetPack, so
the bindings cannot be imported here; but the ``tensorrt-cuXX-bindings``
wheels on PyPI hold the pybind11 module, whose method, property and enum
names and docstrings are plain strings in ``tensorrt.so``. This script
downloads the wheel (or takes one), reads those strings and reports, for
each name the runner, loader and builder use, whether that TensorRT knows it.
Word-level matching: a name present only inside a docstring still counts, and
so does one that is the tail of a longer identifier (the linker merges
"INPUT" into "CONDITIONAL_INPUT"), so this catches typos and removed APIs,
not wrong receivers.

    python scripts/check_trt_api.py 10.3.0 11.4.0.106
    python scripts/check_trt_api.py --wheel path/to/tensorrt_cu12_bindings-*.whl
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# What edge_agent/inference/trt/ calls (runner.py, loader.py, builder.py, describe.py).
USED = {
    "module": ["Builder", "Runtime", "OnnxParser", "ILogger", "TensorIOMode", "DataType", "MemoryPoolType",
               "BuilderFlag", "DeviceType", "NetworkDefinitionCreationFlag"],
    "engine": ["num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape",
               "get_tensor_profile_shape", "create_execution_context"],
    "context": ["set_input_shape", "set_tensor_address", "execute_async_v3"],
    "runtime": ["deserialize_cuda_engine"],
    "builder": ["create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network", "num_DLA_cores"],
    "config": ["set_memory_pool_limit", "set_flag", "add_optimization_profile", "create_timing_cache",
               "set_timing_cache", "default_device_type", "DLA_core"],
    "profile": ["set_shape"],
    "parser": ["parse_from_file", "num_errors", "get_error"],
    "enums": ["INPUT", "WORKSPACE", "GPU_FALLBACK", "DLA"],
}
# Builder flags the builder only uses where they exist (hasattr): reported, not required.
OPTIONAL = {"Enable FP16 layer selection": "BuilderFlag.FP16", "Enable Int8 layer selection": "BuilderFlag.INT8",
            "EXPLICIT_BATCH": "NetworkDefinitionCreationFlag.EXPLICIT_BATCH (TensorRT < 10 only)",
            "platform_has_fast_fp16": "Builder.platform_has_fast_fp16 (read with a default)"}


def _wheel(version: str, folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                    str(folder), f"tensorrt-cu12-bindings=={version}"], check=True)
    return next(folder.glob(f"tensorrt_cu12_bindings-{version}-*.whl"))


def _strings(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if re.search(r"tensorrt[^/]*\.so$", n))
        data = z.read(name)
    return "\n".join(m.decode("ascii", "replace") for m in re.findall(rb"[\x20-\x7e\t\n]{3,}", data))


def check(wheel: Path) -> bool:
    text = _strings(wheel)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))

    def known(name: str) -> bool:
        return name in words or any(w.endswith("_" + name) for w in words)

    missing = [(group, n) for group, names in USED.items() for n in names if not known(n)]
    print(f"{wheel.name}:")
    for group, names in USED.items():
        print(f"  {group:<8} " + " ".join(n if known(n) else f"MISSING:{n}" for n in names))
    for marker, what in OPTIONAL.items():
        print(f"  optional {what}: {'present' if marker in text else 'absent'}")
    return not missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("versions", nargs="*", default=["10.3.0"], help="tensorrt-cu12-bindings versions to fetch")
    ap.add_argument("--wheel", action="append", default=[], help="a bindings wheel already on disk")
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        wheels = [Path(w) for w in args.wheel] or [_wheel(v, Path(tmp)) for v in args.versions]
        for w in wheels:
            ok = check(w) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
