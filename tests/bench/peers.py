"""The servers the benchmarks run, on free loopback ports: this project's own and its peers.

Ours starts and stops as `inv server.start` / `server.stop` do. llama.cpp's own `llama-server` is
built from the source that the pinned llama-cpp-python sdist vendors (same llama.cpp as our engine),
without native CPU tuning like our wheel, and cached under .bench/ so later runs start at once; it
serves with our context, slots and threads over one unified KV cache, as our engine does, so one
request may use the whole context. llama-cpp-python's bundled server needs its `[server]` extra.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from inference_server.settings import ServerSettings
from tests.bench.load import QUESTIONS, Stream, chat_request, stream_chat
from tests.ports import free_port

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
PORTABLE_CMAKE_ARGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"]


class PeerUnavailable(Exception):
    """The peer cannot run here; the message says why, for the benchmark's skip line."""


@dataclass(frozen=True)
class Served:
    """A running server as a client sees it."""

    url: str
    model: str = "default"
    api_key: str = ""

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None


def chat_turn(served: Served, max_tokens: int) -> Callable[[int], Awaitable[Stream]]:
    """Stream i of a round: one OpenAI chat stream with its own question."""

    def start(i: int) -> Awaitable[Stream]:
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        return stream_chat(
            served.url, chat_request(served.model, messages, max_tokens), headers=served.headers
        )

    return start


@contextlib.contextmanager
def this_server(settings: ServerSettings) -> Iterator[Served]:
    """This project's server on a free port with a key, started and stopped as the tasks do."""
    from tasks.core import config, server_state
    from tasks.core import server as core

    served = settings.model_copy(update={"port": free_port(), "api_key": "bench"})
    with tempfile.TemporaryDirectory(prefix="bench-server-") as state:
        files = server_state.StateFiles(Path(state))
        core.start(served, files, config.load().server.start_timeout_s)
        try:
            yield Served(served.url, served.default_model, served.api_key)
        finally:
            core.stop(files, served.stop_grace_s)


@contextlib.contextmanager
def llama_server(settings: ServerSettings, bench_dir: Path, threads: int) -> Iterator[Served]:
    """llama-server (built on first use) on the same GGUF, context, slots and threads."""
    binary = build_llama_server(bench_dir / "llama-server")
    port = free_port()
    cmd = llama_server_cmd(
        binary, settings.default.path, port,
        slots=settings.default.slots, context=settings.default.context_size, threads=threads,
    )  # fmt: skip
    with running(cmd, port, bench_dir / "logs" / "llama-server.log") as url:
        yield Served(url)


def build_llama_server(scratch: Path) -> Path:
    """llama-server built once from the vendored llama.cpp; later calls return the cached binary."""
    binary = scratch / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    if not shutil.which("cmake"):
        raise PeerUnavailable("cmake is not installed")
    scratch.mkdir(parents=True, exist_ok=True)
    log = scratch / "build.log"
    with log.open("w") as out:

        def step(*cmd: str) -> None:
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=scratch).returncode:
                raise PeerUnavailable(f"`{' '.join(cmd[:4])} ...` failed; see {log}")

        if not any(scratch.glob("llama_cpp_python-*.tar.gz")):
            pip = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps"]
            step(*pip, "-d", ".", LLAMA_CPP_PYTHON)
        source = scratch / "source"
        if not source.exists():
            archive = next(scratch.glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(archive) as tar:
                tar.extractall(scratch / "sdist", filter="data")
            vendored = next((scratch / "sdist").glob("llama_cpp_python-*/vendor/llama.cpp"))
            vendored.rename(source)
        step(
            "cmake", "-S", "source", "-B", "build", "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
            *PORTABLE_CMAKE_ARGS, "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF",
        )  # fmt: skip
        step("cmake", "--build", "build", "--target", "llama-server", "-j", str(os.cpu_count() or 2))
    return binary


@contextlib.contextmanager
def running(cmd: list[str], port: int, log: Path, timeout_s: float = 120) -> Iterator[str]:
    """Start a server, wait for its /health, yield its base URL, and stop it afterwards."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise PeerUnavailable(f"{Path(cmd[0]).name} exited with {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"{Path(cmd[0]).name} did not answer within {timeout_s:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def llama_server_cmd(
    binary: Path, model: Path, port: int, *, slots: int, context: int, threads: int
) -> list[str]:
    return [
        str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
        "-c", str(context), "-np", str(slots), "--kv-unified",
        "-t", str(threads), "-tb", str(threads), "--jinja",
    ]  # fmt: skip


def llama_cpp_python_server_cmd(model: Path, port: int, *, context: int, threads: int) -> list[str]:
    """The bundled server, told not to cut earlier streams off when a new request arrives."""
    try:
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
    except ImportError as exc:
        raise PeerUnavailable(f"llama-cpp-python[server] is not installed ({exc.name})") from None
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", str(context), "--n_threads", str(threads),
        "--n_threads_batch", str(threads), "--interrupt_requests", "False",
    ]  # fmt: skip
