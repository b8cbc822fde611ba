"""Pick and build the engine for a model: by its format, unless the settings name one.

Backends are imported only here and only for the engine chosen, so a Linux host never imports mlx
and a Mac without llama-cpp-python can still serve MLX models.
"""

from __future__ import annotations

from inference_server.engines.base import Engine, EngineError
from inference_server.settings import ServerSettings


def choose(settings: ServerSettings) -> str:
    """`llama_cpp` for GGUF files (Metal on a Mac), `mlx` for MLX and safetensors directories."""
    wanted = settings.engine
    if wanted == "auto":
        wanted = "llama_cpp" if settings.model_format == "gguf" else "mlx"
    if wanted == "llama_cpp" and settings.model_format != "gguf":
        raise EngineError(f"the llama_cpp engine needs a GGUF model, not {settings.model_format}")
    if wanted == "mlx" and settings.model_format == "gguf":
        raise EngineError("the mlx engine needs an MLX model directory (convert it: inv models.convert)")
    return wanted


def create(settings: ServerSettings) -> Engine:
    """The engine for these settings, not yet started."""
    if choose(settings) == "llama_cpp":
        from inference_server.engines.llama_cpp_engine import LlamaCppEngine

        return LlamaCppEngine(
            settings.model_path,
            model_name=settings.model_name,
            context_size=settings.context_size,
            slots=settings.slots,
            prefix_cache_bytes=settings.prefix_cache_bytes,
            threads=settings.threads,
        )
    from inference_server.engines.mlx_engine import MlxEngine

    return MlxEngine(settings.model_path, model_name=settings.model_name, context_size=settings.context_size)
