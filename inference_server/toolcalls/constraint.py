"""Constrained decoding: a ConstraintPlan compiled into a per-sequence TokenConstraint (llguidance).

The grammar is Lark with inline JSON Schemas (`%json`), so one grammar holds a family's call syntax
and every declared tool's arguments schema, each compiled on its own (their `$ref`s resolve). A call
is `{"name": "<declared name>", "arguments": <schema-valid object>}` in the family's wrapper, the name
written before the arguments so a call streams. In `auto` mode the grammar is lazy: the model writes
freely until it writes the family's trigger, from there the call is constrained. While the text is
free no mask is computed at all (a free-text mask costs ~1 ms); only when the text ends in a prefix
of the trigger that some token could complete *and run past* does a probe matcher mask the next
token, so a call that starts always finishes valid.

A TokenConstraint lives on the engine's worker thread: fill_mask, then sample (apply_mask), then
accept, every step; stopped() ends the sequence when the grammar allows nothing more.

Landing: with the request's max_tokens in the plan, the last LANDING_TOKENS tokens of the budget
(the second half of a smaller one, so a short answer still says something) prefer, among the tokens
the grammar allows inside a call or a JSON answer, those that end it soonest: inside a string a
closing quote (one that leaves the string, not `", "` that opens the next; one followed by `}` or `]`
before one followed by a comma); outside, what closes an object or array (or ends the text), else a
quote, else a comma. An answer that would have been cut off mid-string ends valid instead (a small
model at temperature 1 can fill a string for a thousand tokens); `landed` tells that it happened.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from inference_server.engines.base import ToolSpec
from inference_server.toolcalls.families import FALLBACK, ToolFamily
from inference_server.toolcalls.schemas import grammar_schema

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

log = logging.getLogger(__name__)

ANY_OBJECT: dict[str, Any] = {"type": "object"}
LANDING_TOKENS = 64  # the end of the budget where closing tokens are preferred
_IN_STRING = 2  # landing tiers for inside a string; the rest are for outside

_MATCHER_CACHE = 32  # compiled grammars kept (Claude Code sends the same tools every request)


class ConstraintError(RuntimeError):
    """The grammar cannot go on (a token it did not allow, or an internal error): end the request."""


@dataclass(frozen=True)
class ConstraintPlan:
    """What to constrain, API-neutral; serving builds it from the request."""

    kind: Literal["json", "tools"]
    schema: dict[str, Any] | None = None  # kind "json": the answer's schema, None for any object
    tools: tuple[ToolSpec, ...] = ()
    mode: Literal["auto", "required", "named"] = "auto"
    name: str = ""  # mode "named": the one tool to call
    parallel: bool = True
    family: ToolFamily = FALLBACK
    max_tokens: int = 0  # the request's budget, for landing; 0: no landing


# -- tokenizers ----------------------------------------------------------------------------------


def tokenizer_from_llama_vocab(vocab: Any) -> LLTokenizer:
    """An LLTokenizer over a llama.cpp vocab (~1 s: build once per model). Every end-of-generation
    token ends a grammar, as every one ends generation."""
    import llama_cpp
    import llguidance.llamacpp

    n = llama_cpp.llama_vocab_n_tokens(vocab)
    eog = [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    with warnings.catch_warnings():  # the helper calls llama_token_get_attr, deprecated, once per token
        warnings.simplefilter("ignore", DeprecationWarning)
        return llguidance.llamacpp.lltokenizer_from_vocab(vocab, eos_token=eog or None)


def tokenizer_from_hf(
    tokenizer: Any, *, n_vocab: int | None = None, eos_tokens: list[int] | None = None
) -> LLTokenizer:
    """An LLTokenizer over a Hugging Face fast tokenizer (a `tokenizers.Tokenizer`, or a transformers
    tokenizer wrapping one); `n_vocab` is the model's logits width when it pads the vocabulary."""
    from llguidance import LLTokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(tokenizer, "_tokenizer") and not hasattr(backend, "to_str"):  # mlx-lm's TokenizerWrapper
        backend = getattr(tokenizer._tokenizer, "backend_tokenizer", tokenizer._tokenizer)
    if eos_tokens is None:  # mlx-lm's wrapper knows every end token; a transformers tokenizer its one
        ids = getattr(tokenizer, "eos_token_ids", None) or [getattr(tokenizer, "eos_token_id", None)]
        eos_tokens = sorted(t for t in ids if isinstance(t, int)) or None
    return LLTokenizer(backend.to_str(), n_vocab=n_vocab, eos_token=eos_tokens)


# -- masks ---------------------------------------------------------------------------------------

# For each byte of a bitmask, the 8 logit offsets it stands for: 0 (allowed) or -inf.
_BYTE_OFFSETS = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(bool),
    np.float32(0),
    np.float32(-np.inf),
).astype(np.float32)


def new_bitmask(vocab_size: int) -> np.ndarray:
    """One row of llguidance's layout: bit i of word i // 32 allows token i."""
    return np.full((vocab_size + 31) // 32, -1, dtype=np.int32)


def apply_mask(logits: np.ndarray, bitmask: np.ndarray) -> None:
    """Set the logits of disallowed tokens to -inf, in place (one gather and one add: ~0.1 ms for a
    49k vocabulary; llguidance.numpy's reference kernel takes ~0.9 ms)."""
    row = logits.reshape(-1)
    n = min(row.shape[0], bitmask.size * 32)
    offsets = np.take(_BYTE_OFFSETS, bitmask.reshape(-1).view(np.uint8), axis=0).reshape(-1)
    row[:n] += offsets[:n]
    row[n:] = -np.inf


# -- the constraint ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lazy:
    """How an auto-mode constraint finds the start of a call in free text."""

    trigger: bytes  # b"" for a start-only family
    trigger_token: int | None  # the trigger (a start-only family: its tag) as one special token
    risky_prefixes: frozenset[int]  # trigger[:k] after which a token can complete it and run on
    risky_anywhere: bool  # some token holds the whole trigger and more: mask all the time


class TokenConstraint:
    """One sequence's grammar state; used only on the engine's worker thread."""

    def __init__(
        self,
        template: LLMatcher,
        tokenizer: LLTokenizer,
        lazy: _Lazy | None,
        *,
        max_tokens: int = 0,
        landing: tuple[np.ndarray, ...] = (),
    ) -> None:
        self._template = template
        self._land_at = max(max_tokens - LANDING_TOKENS, max_tokens // 2) if max_tokens and landing else None
        self._landing = landing
        self._used = 0
        self._in_string = self._escape = False  # where the constrained JSON is, for landing
        self.landed = False  # the budget's end made the grammar close early
        self._tokenizer = tokenizer
        self._lazy = lazy
        self._armed = lazy is None  # the grammar holds for every token from now on
        self._free = False  # start-only family whose answer turned out to be text
        self._tail = b""
        start_active = lazy is None or lazy.risky_anywhere or not lazy.trigger
        self._matcher: LLMatcher | None = template.deep_copy() if start_active else None

    def fill_mask(self, bitmask: np.ndarray) -> bool:
        """Write the allowed tokens into `bitmask`; False (bitmask untouched) while unconstrained."""
        matcher = self._matcher
        if matcher is None:
            return False
        if bitmask.dtype != np.int32 or not bitmask.flags.c_contiguous:
            raise ValueError("the bitmask must be a contiguous int32 row (new_bitmask)")
        row = bitmask.reshape(-1)
        matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.size * 4)
        self._check(matcher)
        if self._land_at is not None and self._used >= self._land_at and self._armed:
            for tier in self._landing[:_IN_STRING] if self._in_string else self._landing[_IN_STRING:]:
                preferred = row & tier
                if preferred.any():
                    row[:] = preferred
                    self.landed = True
                    break
        return True

    def accept(self, token: int) -> None:
        """Advance by a sampled token (constrained or not)."""
        self._used += 1
        lazy = self._lazy
        if lazy is None or self._armed:
            self._consume(token)
            self._scan(self._tokenizer.decode_bytes([token]))
        elif not lazy.trigger:
            self._accept_at_start(token)
        elif not self._free:
            self._accept_free(token, lazy)

    def stopped(self) -> bool:
        """The grammar is complete and allows nothing more: end the sequence."""
        return self._armed and self._matcher is not None and self._matcher.is_stopped()

    # -- lazy mode -------------------------------------------------------------------------------

    def _accept_at_start(self, token: int) -> None:
        """Start-only families (llama3): a call is the whole answer or there is none."""
        self._consume(token)
        self._tail += self._tokenizer.decode_bytes([token])
        start = self._tail.lstrip()
        if start:
            if start.startswith(b"{") or token == self._lazy_tag():
                self._armed = True
                self._scan(start)
            else:
                self._free, self._matcher = True, None

    def _lazy_tag(self) -> int | None:
        return self._lazy.trigger_token if self._lazy is not None else None

    def _accept_free(self, token: int, lazy: _Lazy) -> None:
        probing = self._matcher is not None
        if probing:
            self._consume(token)
        text = self._tail + self._tokenizer.decode_bytes([token])
        if token == lazy.trigger_token or lazy.trigger in text:
            self._armed = True
            if token != lazy.trigger_token:
                self._scan(text[text.index(lazy.trigger) + len(lazy.trigger) :])
            if not probing:
                self._matcher = self._template.deep_copy()
                opened = (
                    [token] if token == lazy.trigger_token else self._tokenizer.tokenize_bytes(lazy.trigger)
                )
                if not self._matcher.consume_tokens(opened):
                    self._check(self._matcher)
            return
        self._tail = text[-(len(lazy.trigger) - 1) :] if len(lazy.trigger) > 1 else b""
        if lazy.risky_anywhere:
            return
        risky = any(self._tail.endswith(lazy.trigger[:k]) for k in lazy.risky_prefixes)
        if risky and not probing:
            self._matcher = self._template.deep_copy()
            if not self._matcher.consume_tokens(self._tokenizer.tokenize_bytes(self._tail)):
                self._check(self._matcher)
        elif not risky:
            self._matcher = None

    def _scan(self, data: bytes) -> None:
        """Follow the constrained text in or out of JSON strings (only landing needs to know)."""
        if self._land_at is None:
            return
        for byte in data:
            if self._escape:
                self._escape = False
            elif self._in_string and byte == 0x5C:  # backslash
                self._escape = True
            elif byte == 0x22:  # quote
                self._in_string = not self._in_string

    def _consume(self, token: int) -> None:
        matcher = self._matcher
        if matcher is not None and not matcher.consume_token(token):
            self._check(matcher)
            raise ConstraintError(f"token {token} is not allowed by the grammar")

    @staticmethod
    def _check(matcher: LLMatcher) -> None:
        if matcher.is_error():
            message = " ".join(matcher.get_error().split())[:500]
            log.error("grammar error: %s", message)
            raise ConstraintError(message)


# -- compiling -----------------------------------------------------------------------------------

_cache_lock = threading.Lock()
_matchers: OrderedDict[tuple[int, str], tuple[LLTokenizer, LLMatcher]] = OrderedDict()
_risks: dict[tuple[int, bytes], tuple[LLTokenizer, frozenset[int], bool]] = {}
_landings: dict[int, tuple[LLTokenizer, tuple[np.ndarray, ...]]] = {}


def compile_constraint(plan: ConstraintPlan, tokenizer: LLTokenizer) -> TokenConstraint:
    """The plan's grammar over this tokenizer (tens of ms for a dozen tools; cached; call off the loop)."""
    grammar = build_grammar(plan, tokenizer)
    template = _matcher(grammar, tokenizer)
    lazy = None
    if plan.kind == "tools" and plan.mode == "auto":
        trigger = plan.family.trigger.encode()
        special = _special_token(plan.family.trigger or plan.family.start_tag, tokenizer)
        risky, anywhere = _risky_prefixes(trigger, tokenizer) if trigger else (frozenset(), False)
        lazy = _Lazy(trigger, special, risky, anywhere)
    landing = _landing_masks(tokenizer) if plan.max_tokens else ()
    return TokenConstraint(template, tokenizer, lazy, max_tokens=plan.max_tokens, landing=landing)


def _matcher(grammar: str, tokenizer: LLTokenizer) -> LLMatcher:
    from llguidance import LLMatcher

    key = (id(tokenizer), grammar)
    with _cache_lock:
        hit = _matchers.get(key)
        if hit is not None:
            _matchers.move_to_end(key)
            return hit[1]
    matcher = LLMatcher(tokenizer, LLMatcher.grammar_from_lark(grammar), log_level=0)
    if matcher.is_error():
        raise ConstraintError(f"the grammar does not compile: {' '.join(matcher.get_error().split())[:300]}")
    with _cache_lock:
        _matchers[key] = (tokenizer, matcher)  # the tokenizer is kept so its id stays unique
        while len(_matchers) > _MATCHER_CACHE:
            _matchers.popitem(last=False)
    return matcher


def build_grammar(plan: ConstraintPlan, tokenizer: LLTokenizer) -> str:
    """The plan as a Lark grammar for llguidance."""
    if plan.kind == "json":
        schema = grammar_schema(plan.schema or ANY_OBJECT, "response schema")
        return f"start: answer\nanswer: %json {json.dumps(schema)}\n"
    fam = plan.family
    tools = [t for t in plan.tools if plan.mode != "named" or t.name == plan.name] or list(plan.tools)
    lines = [_call_rule(i, tool, fam) for i, tool in enumerate(tools)]
    lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
    if fam.call_id:
        lines.append("CALL_ID: /[a-zA-Z0-9]{9}/")
    parallel = plan.parallel and fam.parallel
    text = lambda s: _lark_text(s, tokenizer)  # noqa: E731
    if fam.array:
        calls = '"[" call (", " call)* "]"' if parallel else '"[" call "]"'
        lines.append(f"calls: {text(fam.opener)} calls_tail")
        lines.append(f"calls_tail: {text(fam.opener[len(fam.trigger) :])} {calls} {text(fam.closer)}")
    elif fam.trigger:
        block = f"{text(fam.opener)} call {text(fam.closer)}"
        more = f" ({text(fam.separator)} {block})*" if parallel else ""
        lines.append(f"calls: {block}{more}")
        lines.append(f"calls_tail: {text(fam.opener[len(fam.trigger) :])} call {text(fam.closer)}{more}")
    else:  # start-only: the call is the answer, maybe after the family's tag
        tag = f" | {text(fam.start_tag)} call" if fam.start_tag else ""
        lines.append(f"calls: call{tag}")
    if plan.mode != "auto":
        lines.insert(0, "start: calls")
    elif fam.trigger:
        special = _special_token(fam.trigger, tokenizer)
        by_token = f" | FREE <[{special}]> calls_tail" if special is not None else ""
        lines[:0] = [
            f"start: FREE | head calls_tail{by_token}",
            f"head[lazy]: FREE {json.dumps(fam.trigger)}",
            r"FREE: /(.|\n)*/",
        ]
    else:
        lines[:0] = [r"start: TEXT | SPACE? calls", r"TEXT: /\s*([^{\s](.|\n)*)?/", r"SPACE: /\s+/"]
    return "%llguidance {}\n" + "\n".join(lines) + "\n"


def _call_rule(i: int, tool: ToolSpec, fam: ToolFamily) -> str:
    """One declared tool's call: its name as a literal, then its arguments' schema."""
    schema = grammar_schema(tool.parameters or ANY_OBJECT, f"tool {tool.name!r}")
    head = json.dumps(
        f'{{"name": {json.dumps(tool.name, ensure_ascii=False)}, "{fam.args_key}": ', ensure_ascii=False
    )
    tail = '", \\"id\\": \\"" CALL_ID "\\"}"' if fam.call_id else '"}"'
    return f"call_{i}: {head} args_{i} {tail}\nargs_{i}: %json {json.dumps(schema)}"


def _lark_text(text: str, tokenizer: LLTokenizer) -> str:
    """`text` as Lark items: the vocabulary's special tokens as <[id]>, the rest as string literals."""
    if not text:
        return ""
    items: list[str] = []
    run = b""
    for token in tokenizer.tokenize_str(text, parse_special=True):
        if tokenizer.is_special_token(token):
            if run:
                items.append(json.dumps(run.decode(errors="replace"), ensure_ascii=False))
                run = b""
            items.append(f"<[{token}]>")
        else:
            run += tokenizer.decode_bytes([token])
    if run:
        items.append(json.dumps(run.decode(errors="replace"), ensure_ascii=False))
    return " ".join(items)


def _special_token(text: str, tokenizer: LLTokenizer) -> int | None:
    """The id of `text` when the vocabulary has it as one special token."""
    if not text:
        return None
    tokens = tokenizer.tokenize_str(text, parse_special=True)
    return tokens[0] if len(tokens) == 1 and tokenizer.is_special_token(tokens[0]) else None


def _landing_masks(tokenizer: LLTokenizer) -> tuple[np.ndarray, ...]:
    """The landing tiers as masks (cached per tokenizer), the first _IN_STRING for inside a string.
    In a string: tokens that begin with the one quote they hold and hold only closing bytes, first
    those without a comma. Outside: tokens of `"}]` that hold a `}` or `]`, and the end tokens;
    tokens of `"` alone; tokens of `, ` that hold a `,`."""
    hit = _landings.get(id(tokenizer))
    if hit is not None:
        return hit[1]
    masks = [np.zeros((tokenizer.vocab_size + 31) // 32, dtype=np.uint32) for _ in range(_IN_STRING + 3)]
    ends = set(tokenizer.eos_tokens)
    closing = set(b'"}], ')
    for token in range(tokenizer.vocab_size):
        raw = tokenizer.decode_bytes([token])
        piece = set(raw)
        tiers = []
        if raw.startswith(b'"') and raw.count(b'"') == 1 and piece <= closing:
            tiers.append(1 if ord(",") in piece else 0)
        if token in ends or (piece and piece <= set(b'"}]') and piece & set(b"}]")):
            tiers.append(_IN_STRING)
        elif piece and piece <= set(b'"'):
            tiers.append(_IN_STRING + 1)
        elif piece and piece <= set(b", ") and ord(",") in piece:
            tiers.append(_IN_STRING + 2)
        for tier in tiers:
            masks[tier][token // 32] |= np.uint32(1 << (token % 32))
    words = tuple(mask.view(np.int32) for mask in masks)
    _landings[id(tokenizer)] = (tokenizer, words)
    return words


def _risky_prefixes(trigger: bytes, tokenizer: LLTokenizer) -> tuple[frozenset[int], bool]:
    """Which trigger prefixes some token can complete while writing past the trigger (the grammar
    must mask the next token there), and whether a token holds the whole trigger and more."""
    key = (id(tokenizer), trigger)
    hit = _risks.get(key)
    if hit is not None:
        return hit[1], hit[2]
    ks: set[int] = set()
    anywhere = False
    for token in range(tokenizer.vocab_size):
        piece = tokenizer.decode_bytes([token])
        at = piece.find(trigger)
        if at >= 0 and at + len(trigger) < len(piece):
            anywhere = True
        for k in range(1, len(trigger)):
            rest = trigger[k:]
            if len(piece) > len(rest) and piece.startswith(rest):
                ks.add(k)
    _risks[key] = (tokenizer, frozenset(ks), anywhere)
    return frozenset(ks), anywhere
