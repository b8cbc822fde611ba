"""Ollama's API (/api/*) on the same pool and engines."""
