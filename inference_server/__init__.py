"""The llm-homelab inference server: OpenAI and Anthropic Messages APIs over local engines."""
