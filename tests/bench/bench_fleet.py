"""Benchmark: one task on three hosts, `fab -H a,b,c` (one after another) vs `inv fleet.run` (parallel).

Three real sshd hosts on loopback, each with its own checkout copy (tests/fixtures/sshd.py). Prints a
table and writes .bench/fleet.json. On a shared machine the figures are noisy: compare ratios.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from tasks.core.console import print_table
from tests.fixtures.sshd import ROOT, cli, start_lab

TASK = "models.catalog"
HOSTS = ["a", "b", "c"]
ROUNDS = 3


def timed(tool: str, config: Path, *args: str) -> float:
    started = time.perf_counter()
    done = cli(tool, config, *args)
    if done.returncode != 0:
        raise SystemExit(f"{tool} {' '.join(args)} failed: {done.stderr.strip()}")
    return time.perf_counter() - started


def main() -> None:
    lab = start_lab(HOSTS)
    try:
        config = lab.write_config(lab.root / "lab.yaml")
        hosts = ",".join(HOSTS)
        serial, parallel = [], []
        for _ in range(ROUNDS):  # interleaved, so load changes hit both alike
            serial.append(timed("fab", config, "-H", hosts, TASK))
            parallel.append(timed("inv", config, "fleet.run", TASK, "--hosts", hosts))
    finally:
        lab.stop()
    serial_s, parallel_s = statistics.median(serial), statistics.median(parallel)
    result = {
        "task": TASK,
        "hosts": len(HOSTS),
        "rounds": ROUNDS,
        "serial_fab_s": round(serial_s, 3),
        "parallel_fleet_s": round(parallel_s, 3),
        "speedup": round(serial_s / parallel_s, 2),
    }
    print_table(
        f"{TASK} on {len(HOSTS)} local sshd hosts (median of {ROUNDS})",
        ["how", "seconds"],
        [("fab -H a,b,c (serial)", f"{serial_s:.2f}"), ("inv fleet.run (parallel)", f"{parallel_s:.2f}")],
    )
    print(f"speedup: {result['speedup']}x")
    out = ROOT / ".bench" / "fleet.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
