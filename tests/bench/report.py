"""What every serving benchmark shares: quick or full mode, the machine's load, and the JSON it writes.

Quick mode is what `inv test.bench` and CI run; `BENCH_FULL=1` (or `--full`) adds peers and sizes.
A shared, loaded machine makes every figure noisy, so each table says the load average around it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from inference_server.settings import ServerSettings
from tasks.core import config, files

BENCH_DIR = config.PROJECT_ROOT / ".bench"


def full_mode() -> bool:
    return "--full" in sys.argv[1:] or os.environ.get("BENCH_FULL") == "1"


def threads(settings: ServerSettings) -> int:
    """The decode threads every target gets: the server's setting, else every CPU we may use."""
    return settings.threads or len(os.sched_getaffinity(0))


def cores() -> int:
    return len(os.sched_getaffinity(0))


def load_line(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    return (
        f"load average (1 min) before {before[0]:.2f}, after {after[0]:.2f} on {cores()} cores: "
        "a busy shared machine makes every figure noisy"
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    files.write_atomically(path, json.dumps(data, indent=2) + "\n")
    print(f"wrote {path.relative_to(config.PROJECT_ROOT)}")
