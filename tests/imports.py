"""What a real `inv` run imports: the property behind the command line's speed, which tests check
instead of timings (a loaded machine makes any timing lie)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_RUN_THEN_LIST = """
import sys
from invoke.main import program
try:
    program.run(["inv", *sys.argv[1:]])
except SystemExit:
    pass
print(sorted({name.split(".")[0] for name in sys.modules}), file=sys.stderr)
"""


def loaded_by_inv(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """The top-level modules `inv ARGS` loads, run from the checkout by this interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN_THEN_LIST, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    return set(ast.literal_eval(done.stderr.strip().splitlines()[-1]))
