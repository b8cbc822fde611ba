"""Pick and build the engine for a model: by its format, unless the settings name one.

Backends are imported only here and only for the engine chosen, so a Linux host never imports mlx
and a Mac without llama-cpp-python can still serve MLX models.
"""

from __future__ import annotations

from inference_server.engines.base import Engine, EngineError
from inference_server.settings import EngineName, ModelFormat, ModelSpec, ServerSettings


def choose(engine: EngineName, model_format: ModelFormat) -> str:
    """`llama_cpp` for GGUF files (Metal on a Mac), `mlx` for MLX and safetensors directories."""
    wanted = engine
    if wanted == "auto":
        wanted = "llama_cpp" if model_format == "gguf" else "mlx"
    if wanted == "llama_cpp" and model_format != "gguf":
        raise EngineError(f"the llama_cpp engine needs a GGUF model, not {model_format}")
    if wanted == "mlx" and model_format == "gguf":
        raise EngineError("the mlx engine needs an MLX model directory (convert it: inv models.convert)")
    return wanted


def create(spec: ModelSpec, settings: ServerSettings) -> Engine:
    """The engine for one model, not yet started."""
    if choose(settings.engine, spec.format) == "llama_cpp":
        from inference_server.engines.llama_cpp_engine import LlamaCppEngine

        return LlamaCppEngine(
            spec.path,
            model_name=spec.name,
            context_size=spec.context_size,
            slots=spec.slots,
            prefix_cache_bytes=settings.prefix_cache_bytes,
            threads=settings.threads,
            rpc_servers=settings.rpc_servers,
            rpc_watch=settings.rpc_watch,
        )
    from inference_server.engines.mlx_engine import MlxEngine

    return MlxEngine(spec.path, model_name=spec.name, context_size=spec.context_size)
