"""The OpenCL backend (``backend="opencl"``): kernel IR rendered as OpenCL C, one program per
compiled graph, run through pyopencl on a GPU or, with PoCL, on the CPU (docs/opencl.md)."""

from graphnn.backends.opencl.device import OpenCLError, list_devices, select_device
from graphnn.backends.opencl.executable import (
    DeviceValue,
    OpenCLBackend,
    OpenCLExecutable,
    Transfers,
)

__all__ = ["DeviceValue", "OpenCLBackend", "OpenCLError", "OpenCLExecutable", "Transfers",
           "list_devices", "select_device"]
