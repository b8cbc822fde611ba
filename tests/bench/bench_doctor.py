"""How much faster `doctor --fast` is than a full run when nothing changed (target: at least 10x).

Two measurements: the doctor itself (in process, what the cache saves) and the whole `inv doctor`
command line (what a user waits for, including Python and Invoke start-up, which no cache removes).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tasks.core import config, doctor
from tasks.core.console import print_table
from tasks.core.suites import write_bench_json

ROOT = Path(__file__).resolve().parents[2]
TARGET_RATIO = 10.0
RUNS = 3


def _median_s(action: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _in_process(state_dir: Path) -> tuple[float, float]:
    merged = config.read_yaml(config.CONFIG_FILE)
    merged["doctor"]["state_dir"] = str(state_dir)
    full = _median_s(lambda: doctor.doctor(merged, fast=False))
    fast = _median_s(lambda: doctor.doctor(merged, fast=True))
    return full, fast


def _command_line(state_dir: Path) -> tuple[float, float]:
    env = {**os.environ, "INVOKE_DOCTOR_STATE_DIR": str(state_dir)}
    base = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "doctor", "--json"]

    def run(*flags: str) -> None:
        subprocess.run([*base, *flags], env=env, cwd=ROOT, capture_output=True, check=False)

    return _median_s(run), _median_s(lambda: run("--fast"))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            "doctor (in process)": _in_process(Path(tmp) / "in-process"),
            "inv doctor (command line)": _command_line(Path(tmp) / "command-line"),
        }
    figures = {
        name: {"full_s": round(full, 4), "fast_s": round(fast, 4), "ratio": round(full / fast, 1)}
        for name, (full, fast) in rows.items()
    }
    table = [
        (name, f"{f['full_s']:.3f}", f"{f['fast_s']:.3f}", f"{f['ratio']:.1f}x")
        for name, f in figures.items()
    ]
    print_table(f"doctor rerun speed (median of {RUNS})", ["measured", "full s", "--fast s", "ratio"], table)
    path = write_bench_json("doctor", {"target_ratio": TARGET_RATIO, "runs": RUNS, "results": figures})
    print(f"wrote {path}")
    if figures["doctor (in process)"]["ratio"] < TARGET_RATIO:
        raise SystemExit(f"doctor --fast is under {TARGET_RATIO:g}x faster than a full run")


if __name__ == "__main__":
    main()
