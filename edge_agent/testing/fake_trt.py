"""FAKES of ``tensorrt`` and ``pycuda.driver`` — only for what cannot exist on this machine.

They model the rules the real libraries enforce so the runner's *logic* can be
tested here: CUDA contexts are per thread (every allocation, copy, free and
engine call needs a context current on the calling thread, and is logged with
the thread's name), device memory is a registry of byte buffers addressed by
integers, TensorRT's named-tensor API checks shapes against profile 0, and a
blob that is not a "fake engine" deserializes to None. The fake engine
computes the mean of each input sample, so data really flows host → device →
"engine" → host. Nothing here is evidence that the real libraries work: the
GPU tests (tests/gpu) and docs/TENSORRT.md say what was verified for real.
"""

from __future__ import annotations

import itertools
import threading
import types
from enum import Enum

import numpy as np
import onnx


class FakeCudaError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- pycuda.driver
def make_fake_cuda(device_name: str = "Fake Orin", capability=(8, 7), integrated: bool = True) -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")
    cuda.log = []                       # (operation, thread name)
    cuda.memory = {}                    # address -> uint8 array
    cuda.live = set()                   # addresses not yet freed
    cuda.stacks = {}                    # thread name -> context stack
    cuda.retained = 0
    counter = itertools.count(0x10000, 0x10000)
    tls = threading.local()

    def stack():
        if not hasattr(tls, "stack"):
            tls.stack = []
            cuda.stacks[threading.current_thread().name] = tls.stack
        return tls.stack

    def need_context(op):
        cuda.log.append((op, threading.current_thread().name))
        if not stack():
            raise FakeCudaError(f"{op}: explicit_context_dependent failed: invalid device context")

    cuda.need_context = need_context
    cuda.stack = stack
    cuda.init = lambda: None

    class Context:
        def push(self):
            cuda.log.append(("push", threading.current_thread().name))
            stack().append(self)

        @staticmethod
        def pop():
            cuda.log.append(("pop", threading.current_thread().name))
            if not stack():
                raise FakeCudaError("cannot pop: context stack empty")
            stack().pop()

        def detach(self):
            cuda.log.append(("detach", threading.current_thread().name))
            cuda.retained -= 1

    class Device:
        def __init__(self, ordinal):
            if ordinal >= 1:
                raise FakeCudaError("invalid device ordinal")

        @staticmethod
        def count():
            return 1

        def name(self):
            return device_name

        def compute_capability(self):
            return capability

        def get_attribute(self, attr):
            return {"INTEGRATED": int(integrated), "CAN_MAP_HOST_MEMORY": 1}[attr]

        def retain_primary_context(self):
            cuda.retained += 1
            return Context()

    class DeviceAllocation:
        def __init__(self, nbytes):
            need_context("mem_alloc")
            self.address = next(counter)
            cuda.memory[self.address] = np.zeros(nbytes, np.uint8)
            cuda.live.add(self.address)

        def __int__(self):
            return self.address

        def free(self):
            need_context("free")
            cuda.live.discard(self.address)

    class HostAllocation(bytearray):
        mapped_address = None

        def get_device_pointer(self):
            return self.mapped_address

        def free(self):
            need_context("free_host")
            if self.mapped_address is not None:
                cuda.live.discard(self.mapped_address)
            cuda.live.discard(id(self))

    def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
        need_context("pagelocked_empty")
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        alloc = HostAllocation(count * dtype.itemsize)
        cuda.live.add(id(alloc))
        arr = np.ndarray(shape, dtype, buffer=alloc)
        if mem_flags & cuda.host_alloc_flags.DEVICEMAP:
            alloc.mapped_address = next(counter)
            cuda.memory[alloc.mapped_address] = np.ndarray((count * dtype.itemsize,), np.uint8, buffer=alloc)
            cuda.live.add(alloc.mapped_address)
        return arr

    def _addr(ptr):
        return ptr.address if isinstance(ptr, DeviceAllocation) else int(ptr)

    def memcpy_htod_async(dest, src, stream=None, _op="memcpy_htod_async"):
        need_context(_op)
        src = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        cuda.memory[_addr(dest)][: src.size] = src

    def memcpy_dtoh_async(dest, src, stream=None):
        need_context("memcpy_dtoh_async")
        flat = dest.reshape(-1).view(np.uint8)
        flat[:] = cuda.memory[_addr(src)][: flat.size]

    class Stream:
        def __init__(self):
            need_context("stream_create")
            self.handle = next(counter)

        def synchronize(self):
            need_context("synchronize")

    class Event:
        """Records the wall clock (the fake runs everything synchronously)."""

        def __init__(self):
            self.t = None

        def record(self, stream=None):
            need_context("event_record")
            import time

            self.t = time.perf_counter()

        def synchronize(self):
            need_context("event_synchronize")

        def time_since(self, start):
            return (self.t - start.t) * 1000.0

    cuda.Context, cuda.Device, cuda.DeviceAllocation, cuda.Stream = Context, Device, DeviceAllocation, Stream
    cuda.Event = Event
    cuda.mem_alloc = DeviceAllocation
    cuda.pagelocked_empty = pagelocked_empty
    cuda.memcpy_htod_async = memcpy_htod_async
    cuda.memcpy_htod = lambda dest, src: memcpy_htod_async(dest, src, _op="memcpy_htod")
    cuda.memcpy_dtoh_async = memcpy_dtoh_async
    cuda.host_alloc_flags = types.SimpleNamespace(DEVICEMAP=2, PORTABLE=1)
    cuda.device_attribute = types.SimpleNamespace(INTEGRATED="INTEGRATED", CAN_MAP_HOST_MEMORY="CAN_MAP_HOST_MEMORY")
    cuda.device_view = lambda address, dtype, count: cuda.memory[address].view(dtype)[:count]
    return cuda


# ----------------------------------------------------------------------------- tensorrt


def make_fake_tensorrt(cuda: types.ModuleType, version: str = "10.3.0", *, dla_cores: int = 0,
                       shape=(3, 32, 32), profile=((1,), (4,), (8,))) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = Enum("TensorIOMode", "NONE INPUT OUTPUT")
    trt.DataType = Enum("DataType", "FLOAT HALF INT8 INT32 BOOL")
    trt.MemoryPoolType = Enum("MemoryPoolType", "WORKSPACE")
    major = int(version.split(".")[0])
    trt.BuilderFlag = Enum("BuilderFlag", "FP16 INT8 GPU_FALLBACK" if major < 11 else "GPU_FALLBACK")
    trt.DeviceType = Enum("DeviceType", "GPU DLA")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.built = []

    class ILogger:
        def __init__(self):
            pass

    trt.ILogger = ILogger
    batch_range = [p[0] for p in profile]
    shapes = [(b, *shape) for b in batch_range]

    class ExecutionContext:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, dims):
            cuda.need_context("set_input_shape")
            dims = tuple(int(d) for d in dims)
            if name != "input" or dims[1:] != shape or not batch_range[0] <= dims[0] <= batch_range[2]:
                return False
            self.shapes[name] = dims
            return True

        def get_tensor_shape(self, name):
            n = self.shapes.get("input", (-1,))[0]
            return (n, *shape) if name == "input" else (n, 1)

        def set_tensor_address(self, name, ptr):
            cuda.need_context("set_tensor_address")
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            cuda.need_context("execute_async_v3")
            n = self.shapes["input"][0]
            count = n * int(np.prod(shape))
            x = cuda.device_view(self.addresses["input"], np.float32, count).reshape(n, -1)
            cuda.device_view(self.addresses["probability"], np.float32, n)[:] = x.mean(axis=1)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["input", "probability"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_shape(self, name):
            return (-1, *shape) if name == "input" else (-1, 1)

        def get_tensor_profile_shape(self, name, index):
            return shapes

        def create_execution_context(self):
            cuda.need_context("create_execution_context")
            return ExecutionContext()

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, blob):
            cuda.need_context("deserialize_cuda_engine")
            if not bytes(blob).startswith(b"FAKEENGINE"):
                self.logger.log(types.SimpleNamespace(name="ERROR"), "Serialization assertion failed: "
                                "Version tag does not match")
                return None
            return Engine()

    class Network:
        def __init__(self, flags):
            self.flags = flags

    class Parser:
        def __init__(self, network, logger):
            self.errors = []

        def parse_from_file(self, path):
            model = onnx.load(path)
            self.errors = [f"unsupported op {n.op_type}" for n in model.graph.node if n.op_type == "Unsupported"]
            return not self.errors

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return b"CACHE" + self.blob[5:] + b"+"

    class Config:
        def __init__(self):
            self.flags, self.pool, self.profiles, self.cache = set(), {}, [], None
            self.default_device_type, self.DLA_core = trt.DeviceType.GPU, -1

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, blob):
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

    class Builder:
        num_DLA_cores = dla_cores
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            self.network = Network(flags)
            return self.network

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((network, config))
            return bytearray(b"FAKEENGINE" + repr(sorted(f.name for f in config.flags)).encode())

    trt.Runtime, trt.Builder, trt.OnnxParser = Runtime, Builder, Parser
    return trt


def install(monkeypatch, *, integrated: bool = True, **kwargs):
    """Put FakeCuda and FakeTensorRT into sys.modules for one test; returns (trt, cuda)."""
    import sys

    import edge_agent.inference.trt.loader as loader

    cuda = make_fake_cuda(integrated=integrated)
    trt = make_fake_tensorrt(cuda, **kwargs)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(loader, "_logger", None)
    return trt, cuda
