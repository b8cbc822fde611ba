"""Server: start, stop and watch the OpenAI + Anthropic inference server on this host."""
