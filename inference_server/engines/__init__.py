"""Engines: the only code that touches a backend library (llama.cpp, mlx-lm)."""
