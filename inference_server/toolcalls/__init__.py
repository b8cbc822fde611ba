"""Tool calls and structured output: grammars for constrained decoding, and each family's call syntax.

families.py holds the one table of call formats; parser.py turns generated text into text and call
events; schemas.py checks and prepares JSON Schemas; constraint.py compiles a ConstraintPlan into the
per-sequence TokenConstraint an engine applies to its logits.
"""
