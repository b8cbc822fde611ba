"""A minimal single-sequence llama.cpp sampling loop with a TokenConstraint, for the grammar tests.

It does what an engine step does for one sequence (fill the mask, apply it, sample at a temperature
with a seeded generator, accept, stop on end-of-generation or a finished grammar), on the real
bundled model, without the engine's batching. A prompt is decoded once and its KV kept, so many
seeds over one prompt cost only their own tokens.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference_server.engines.chat_template import ChatTemplate
from inference_server.toolcalls.constraint import (
    TokenConstraint,
    apply_mask,
    new_bitmask,
    tokenizer_from_llama_vocab,
)


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish: str  # "eog" | "grammar" | "length"


class DecodeLoop:
    def __init__(self, model_path: Path, n_ctx: int = 8192) -> None:
        import llama_cpp

        self.ll = llama_cpp
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's loading chatter
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = False
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = 512
        cparams.n_ubatch = 512
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.grammar_tokenizer = tokenizer_from_llama_vocab(self.vocab)
        self.template = ChatTemplate(self._metadata("tokenizer.chat_template"), bos_token="", eos_token="")
        self._prompt: list[int] = []
        self._prompt_logits: np.ndarray | None = None

    def close(self) -> None:
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)

    def _metadata(self, key: str) -> str | None:
        size = self.ll.llama_model_meta_val_str(self.model, key.encode(), None, 0)
        if size < 0:
            return None
        buf = ctypes.create_string_buffer(size + 1)
        self.ll.llama_model_meta_val_str(self.model, key.encode(), buf, size + 1)
        return buf.value.decode()

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self.ll.llama_token * (len(data) + 2))()
        n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    def _decode(self, tokens: list[int], start: int) -> None:
        for at in range(0, len(tokens), 512):
            chunk = tokens[at : at + 512]
            batch = self.ll.llama_batch_init(len(chunk), 0, 1)
            try:
                for i, token in enumerate(chunk):
                    batch.token[i] = token
                    batch.pos[i] = start + at + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = at + i == len(tokens) - 1
                batch.n_tokens = len(chunk)
                assert self.ll.llama_decode(self.ctx, batch) == 0
            finally:
                self.ll.llama_batch_free(batch)

    def _logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)).copy()

    def set_prompt(self, prompt: str) -> int:
        """Decode the prompt once; generations start from its KV. Returns its length in tokens."""
        self.ll.llama_memory_clear(self.mem, True)
        self._prompt = self.tokenize(prompt)
        self._decode(self._prompt, 0)
        self._prompt_logits = self._logits()
        return len(self._prompt)

    def generate(
        self,
        constraint: TokenConstraint | None,
        *,
        seed: int,
        temperature: float = 1.0,
        max_tokens: int = 256,
        trace: dict[str, Any] | None = None,
    ) -> Generation:
        assert self._prompt_logits is not None, "set_prompt first"
        n_prompt = len(self._prompt)
        self.ll.llama_memory_seq_rm(self.mem, 0, n_prompt, -1)
        rng = np.random.default_rng(seed)
        mask = new_bitmask(self.grammar_tokenizer.vocab_size)
        logits = self._prompt_logits.copy()
        out: list[int] = []
        finish = "length"
        fill: list[float] = []
        apply: list[float] = []
        for _ in range(max_tokens):
            t0 = time.perf_counter()
            if constraint is not None and constraint.fill_mask(mask):
                t1 = time.perf_counter()
                apply_mask(logits, mask)
                fill.append(t1 - t0)
                apply.append(time.perf_counter() - t1)
            token = _sample(logits, temperature, rng)
            if self.ll.llama_vocab_is_eog(self.vocab, token):
                finish = "eog"
                break
            out.append(token)
            if constraint is not None:
                constraint.accept(token)
                if constraint.stopped():
                    finish = "grammar"
                    break
            self._decode([token], n_prompt + len(out) - 1)
            logits = self._logits()
        if trace is not None:
            trace.update(fill=fill, apply=apply)
        text = b"".join(self.piece(t) for t in out).decode(errors="replace")
        return Generation(text, out, finish)


def _sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return int(rng.choice(p.size, p=p))
