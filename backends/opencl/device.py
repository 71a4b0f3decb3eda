"""OpenCL platforms and devices: listing them, choosing one, and their limits.

``select_device("gpu" | "cpu" | index | name substring)``; ``GRAPHNN_OPENCL_DEVICE`` overrides the
choice a program makes (so one script runs on another device unchanged). Indices count the
devices of all platforms in the order ``list_devices`` prints them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from graphnn.errors import GraphnnError

NO_PLATFORM = ("no OpenCL platform found. For OpenCL on the CPU install PoCL with "
               "`pip install \"pyopencl[pocl]\"`; for a GPU install its vendor's OpenCL driver "
               "(ICD): NVIDIA's driver, ROCm's or Intel's compute runtime")


class OpenCLError(GraphnnError, RuntimeError):
    """No OpenCL platform or device as asked, a build failure, or a device without a feature
    (such as float64) that the graph needs."""


def _cl() -> Any:
    try:
        import pyopencl as cl
    except ImportError as e:  # pyopencl is a dependency, but its native part may fail to load
        raise OpenCLError(f"pyopencl cannot be imported ({e}); {NO_PLATFORM}") from None
    return cl


@dataclass(frozen=True)
class DeviceInfo:
    """One device and the limits kernels are sized by (bytes, work-items, MHz)."""

    index: int
    platform: str
    name: str
    kind: str  # "gpu", "cpu", "accelerator"
    compute_units: int
    max_work_group_size: int
    local_mem_bytes: int
    global_mem_bytes: int
    max_clock_mhz: int
    fp64: bool
    version: str
    vector_width: int = 1  # preferred float vector width: elements per elementwise work-item

    def line(self) -> str:
        return (f"[{self.index}] {self.name} ({self.kind}, {self.platform}): "
                f"{self.compute_units} compute units, max work-group {self.max_work_group_size}, "
                f"local memory {self.local_mem_bytes // 1024} KiB, global memory "
                f"{self.global_mem_bytes / 2**30:.1f} GiB, {self.max_clock_mhz} MHz, "
                f"fp64 {'yes' if self.fp64 else 'no'}, float vector width {self.vector_width}, "
                f"{self.version}")


def _kind(device: Any) -> str:
    cl = _cl()
    t = device.type
    if t & cl.device_type.GPU:
        return "gpu"
    if t & cl.device_type.CPU:
        return "cpu"
    return "accelerator"


def all_devices() -> list[Any]:
    """Every device of every platform, in a stable order (platform, then device).

    Raises:  OpenCLError (saying how to install one) when there is no platform or no device.
    """
    cl = _cl()
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader reports "no platforms" as an error
        platforms = []
    devices = []
    for p in platforms:
        try:
            devices.extend(p.get_devices())
        except cl.Error:
            continue
    if not devices:
        raise OpenCLError(NO_PLATFORM)
    return devices


def info(device: Any, index: int) -> DeviceInfo:
    return DeviceInfo(index, device.platform.name.strip(), device.name.strip(), _kind(device),
                      device.max_compute_units, device.max_work_group_size,
                      device.local_mem_size, device.global_mem_size, device.max_clock_frequency,
                      bool(device.double_fp_config), device.version.strip(),
                      max(int(device.preferred_vector_width_float), 1))


def list_devices() -> list[DeviceInfo]:
    """``DeviceInfo`` for every device (what ``graphnn devices`` prints)."""
    return [info(d, i) for i, d in enumerate(all_devices())]


def select_device(spec: str | int | None = None) -> Any:
    """The pyopencl device for ``spec``: ``GRAPHNN_OPENCL_DEVICE`` if set, else ``spec``.

    ``spec``: None or "any" (a GPU if there is one, else the first device), "gpu", "cpu", an
    index into ``list_devices()``, or a case-insensitive substring of a device or platform name.

    Raises:  OpenCLError naming the devices there are when none matches.
    """
    env = os.environ.get("GRAPHNN_OPENCL_DEVICE")
    if env:
        spec = env
    devices = all_devices()
    kinds = [_kind(d) for d in devices]
    if spec is None or spec == "any":
        return devices[kinds.index("gpu")] if "gpu" in kinds else devices[0]
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        i = int(spec)
        if 0 <= i < len(devices):
            return devices[i]
    elif spec in ("gpu", "cpu", "accelerator"):
        if spec in kinds:
            return devices[kinds.index(spec)]
    else:
        for d in devices:
            if spec.lower() in f"{d.name} {d.platform.name}".lower():
                return d
    listing = "\n  ".join(info(d, i).line() for i, d in enumerate(devices))
    raise OpenCLError(f"no OpenCL device matches {spec!r}"
                      f"{' (from GRAPHNN_OPENCL_DEVICE)' if env else ''}; devices:\n  {listing}")
