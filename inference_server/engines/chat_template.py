"""A model's own Jinja chat template, rendered the way llama-server and transformers render it.

llama.cpp's C `llama_chat_apply_template` only pattern-matches well-known templates and drops parts
of them (SmolLM2's default system prompt, for one), so the template text from the GGUF metadata is
rendered with a sandboxed Jinja environment instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NoReturn

from inference_server.engines.base import ChatMessage, EngineError, ToolSpec

# What llama-server falls back to when a model ships no template.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> NoReturn:
    raise EngineError(f"chat template: {message}")


class ChatTemplate:
    """Renders messages into a prompt ending where the assistant's answer begins."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(source or CHATML)
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        from jinja2 import TemplateError

        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                add_generation_prompt=True,
            )
        except TemplateError as exc:
            raise EngineError(f"chat template: {exc}") from None
