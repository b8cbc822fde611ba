"""Tool calls and structured output: grammars for constrained decoding, and each family's call syntax.

families.py holds the one table of call formats; parser.py turns generated text into text and call
events; schemas.py checks and prepares JSON Schemas; constraint.py compiles a ConstraintPlan into the
per-sequence TokenConstraint an engine applies to its logits.
"""

from inference_server.toolcalls.constraint import (
    ConstraintError,
    ConstraintPlan,
    TokenConstraint,
    apply_mask,
    compile_constraint,
    new_bitmask,
    tokenizer_from_hf,
    tokenizer_from_llama_vocab,
)
from inference_server.toolcalls.families import FALLBACK, FAMILIES, ToolFamily, family_for_template
from inference_server.toolcalls.parser import CallArgs, CallEnd, CallParser, CallStart, Event, TextDelta
from inference_server.toolcalls.schemas import SchemaError, check_schema

__all__ = [
    "FALLBACK",
    "FAMILIES",
    "CallArgs",
    "CallEnd",
    "CallParser",
    "CallStart",
    "ConstraintError",
    "ConstraintPlan",
    "Event",
    "SchemaError",
    "TextDelta",
    "TokenConstraint",
    "ToolFamily",
    "apply_mask",
    "check_schema",
    "compile_constraint",
    "family_for_template",
    "new_bitmask",
    "tokenizer_from_hf",
    "tokenizer_from_llama_vocab",
]
