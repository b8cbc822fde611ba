"""llama.cpp's RPC backend: the devices of `rpc-server`s, registered before a model loads.

llama-cpp-python 0.3.36 takes an `rpc_servers` argument and ignores it, so the devices are added as
llama.cpp's own tools do (common/arg.cpp): ggml_backend_reg_by_name("RPC"), its
"ggml_backend_rpc_add_server" entry point, ggml_backend_register. All through ctypes on the library
llama-cpp-python loaded, so the registry is the one the model loads from. Each endpoint is registered
once per process (llama.cpp keeps them for the process's life).

A broken RPC connection aborts the whole process inside llama.cpp (RPC_STATUS_ASSERT): whoever keeps
the connections must report a lost helper before a decode touches it (see the engine's `watch`).
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from inference_server.engines.base import EngineError

_registered: dict[str, list[str]] = {}  # endpoint -> its device names


def _ggml() -> Any:
    """The ggml functions, looked up through the llama library llama-cpp-python loaded."""
    from llama_cpp import llama_cpp as binding

    lib = binding._lib
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_register.restype = None
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    return lib


def has_rpc() -> bool:
    """This llama-cpp-python was built with GGML_RPC."""
    return bool(_ggml().ggml_backend_reg_by_name(b"RPC"))


def add_servers(endpoints: Sequence[str]) -> list[str]:
    """Register every `host:port` rpc-server's devices; their names (RPC0, RPC1, ...) in order."""
    if not endpoints:
        return []
    lib = _ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise EngineError(
            "this llama-cpp-python has no RPC backend: rebuild it with GGML_RPC (bash bootstrap.sh)"
        )
    address = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
    if not address:
        raise EngineError("llama.cpp's RPC backend has no ggml_backend_rpc_add_server")
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(address)
    names: list[str] = []
    for endpoint in endpoints:
        if endpoint not in _registered:
            server = add_server(endpoint.encode())
            if not server:
                raise EngineError(f"rpc-server at {endpoint} reports no devices")
            lib.ggml_backend_register(server)
            count = lib.ggml_backend_reg_dev_count(server)
            devices = [lib.ggml_backend_reg_dev_get(server, i) for i in range(count)]
            _registered[endpoint] = [lib.ggml_backend_dev_name(d).decode() for d in devices]
        names += _registered[endpoint]
    return names


def layer_split(n_layer: int, helpers: int) -> int:
    """`n_gpu_layers` for an even share of the layers on each helper and the rest on this host's CPU
    (llama.cpp offloads the last ones, and counts the output as one more)."""
    return n_layer // (helpers + 1) * helpers + 1 if helpers else 0


def helpers_share(helpers: int) -> float:
    """About what part of a model's layers the helpers hold under `layer_split`."""
    return helpers / (helpers + 1)


@dataclass
class Placement:
    """Where llama.cpp put the model, as its load log says: layers and weight bytes per device."""

    layers: dict[str, int] = field(default_factory=dict)
    weight_bytes: dict[str, int] = field(default_factory=dict)

    def read(self, text: str) -> None:
        for line in text.splitlines():
            if (found := _ASSIGNED.search(line)) is not None:
                self.layers[found["dev"]] = self.layers.get(found["dev"], 0) + 1
            elif (found := _BUFFER.search(line)) is not None:
                device = _device_of(found["buffer"])
                size = int(float(found["mib"]) * 2**20)
                self.weight_bytes[device] = self.weight_bytes.get(device, 0) + size


_ASSIGNED = re.compile(r"layer +\d+ assigned to device (?P<dev>\S+),")
_BUFFER = re.compile(r"load_tensors: +(?P<buffer>\S+) model buffer size = +(?P<mib>[\d.]+) MiB")
_RPC_BUFFER = re.compile(r"RPC(?P<index>\d+)\[(?P<endpoint>[^\]]+)\]")


def _device_of(buffer: str) -> str:
    """The device a weight buffer is on: an RPC buffer is named by its index on its server
    ("RPC0[127.0.0.1:5000]"), a device by its index in the process ("RPC1"); CPU_Mapped is the CPU."""
    if (rpc := _RPC_BUFFER.fullmatch(buffer)) is not None and rpc["endpoint"] in _registered:
        return _registered[rpc["endpoint"]][int(rpc["index"])]
    return buffer.split("_")[0]


@contextmanager
def placement() -> Iterator[Placement]:
    """Read llama.cpp's log while a model loads (its per-layer lines are debug ones, printed nowhere),
    then give the log back to llama-cpp-python's handler."""
    import llama_cpp
    from llama_cpp import _logger

    found = Placement()
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: Any) -> None:
        lines.append(text.decode(errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield found
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        found.read("".join(lines))
