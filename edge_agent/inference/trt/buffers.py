"""Host and device buffers for one engine's I/O tensors, allocated once and reused.

Rules (pycuda ``driver`` API, CUDA Programming Guide §6.2.6 page-locked memory):

- host buffers are page-locked (``pagelocked_empty``) so copies can be async;
- device buffers come from ``mem_alloc`` and are passed to TensorRT as ``int``;
- ``mapped=True`` allocates mapped pinned memory
  (``host_alloc_flags.DEVICEMAP``) whose device pointer TensorRT reads
  directly: on a Jetson, CPU and GPU share DRAM and the copy disappears;
- everything is freed explicitly by :meth:`IOBuffers.free`, from the thread
  that owns the CUDA context — never in ``__del__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def volume(shape) -> int:
    """Number of elements of a concrete shape."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass
class TensorBuffer:
    """One I/O tensor: pinned host array sized for the largest shape, and its device pointer."""

    name: str
    dtype: np.dtype
    max_shape: tuple[int, ...]
    host: np.ndarray
    device_ptr: int
    mapped: bool
    _allocations: list = field(default_factory=list, repr=False)

    def host_view(self, shape) -> np.ndarray:
        """The first ``prod(shape)`` host elements viewed as ``shape`` (no copy)."""
        count = volume(shape)
        if count > self.host.size:
            raise ValueError(f"tensor {self.name!r}: shape {tuple(shape)} exceeds the allocated {self.max_shape}")
        return self.host[:count].reshape(tuple(shape))


class IOBuffers:
    """Buffers for a set of tensors, owned by one thread with the CUDA context current."""

    def __init__(self, cuda, *, mapped: bool = False) -> None:
        self._cuda = cuda
        self.mapped = bool(mapped)
        self.tensors: dict[str, TensorBuffer] = {}
        self.bytes_allocated = 0

    def allocate(self, name: str, dtype, max_shape) -> TensorBuffer:
        """Allocate host (+ device unless mapped) memory for ``max_shape`` elements of ``dtype``."""
        cuda = self._cuda
        dtype = np.dtype(dtype)
        count = max(volume(max_shape), 1)
        if self.mapped:
            host = cuda.pagelocked_empty(count, dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
            allocations = [host.base]
            device_ptr = int(host.base.get_device_pointer())
        else:
            host = cuda.pagelocked_empty(count, dtype)
            device = cuda.mem_alloc(host.nbytes)
            allocations = [device, host.base]  # freed in this order
            device_ptr = int(device)
        buf = TensorBuffer(name, dtype, tuple(int(d) for d in max_shape), host, device_ptr, self.mapped, allocations)
        self.tensors[name] = buf
        self.bytes_allocated += host.nbytes
        return buf

    def upload(self, name: str, array: np.ndarray, stream) -> TensorBuffer:
        """Copy ``array`` into the pinned host buffer and (unless mapped) start the async H2D copy."""
        buf = self.tensors[name]
        view = buf.host_view(array.shape)
        np.copyto(view, array, casting="same_kind")
        if not buf.mapped:
            self._cuda.memcpy_htod_async(buf.device_ptr, view, stream)
        return buf

    def start_download(self, name: str, shape, stream) -> np.ndarray:
        """Start the async D2H copy of ``shape`` elements; valid after ``stream.synchronize()``."""
        buf = self.tensors[name]
        view = buf.host_view(shape)
        if not buf.mapped:
            self._cuda.memcpy_dtoh_async(view, buf.device_ptr, stream)
        return view

    def free(self) -> None:
        """Free all memory now. Call from the owning thread with its context current."""
        for buf in self.tensors.values():
            while buf._allocations:
                buf._allocations.pop(0).free()
        self.tensors.clear()
        self.bytes_allocated = 0
