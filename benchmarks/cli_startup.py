"""Start-up time of the ``rationale`` command.

Measures the wall time of ``rationale --help`` (3 warm-up runs, then ``--runs`` timed runs) next to
``python -c pass`` as the interpreter's own start-up, and lists the slowest imports behind
``import rationale.cli`` (``python -X importtime``, cumulative). Prints PASS if the median of
``rationale --help`` is under 0.5 s, else FAIL and exits 1. The subprocesses get a fresh
temporary ``RATIONALE_HOME``.

    .venv/bin/python benchmarks/cli_startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_S = 0.5
WARMUP = 3


def rationale_exe() -> str:
    exe = Path(sys.executable).parent / "rationale"
    if exe.is_file():
        return str(exe)
    found = shutil.which("rationale")
    if not found:
        sys.exit("no rationale executable next to this python or on PATH")
    return found


def timed(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    times = []
    for i in range(WARMUP + runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> tuple[float, float, float, float]:
    ordered = sorted(times)
    p90 = ordered[max(0, -(-9 * len(ordered) // 10) - 1)]  # nearest rank
    return ordered[0], statistics.median(ordered), p90, ordered[-1]


def top_imports(env: dict[str, str], count: int = 8) -> list[tuple[int, int, str]]:
    """(cumulative us, self us, module) of the slowest imports under ``import rationale.cli``."""
    cmd = [sys.executable, "-X", "importtime", "-c", "import rationale.cli"]
    err = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        self_us, cumulative, module = line.split(":", 1)[1].split("|")
        rows.append((int(cumulative), int(self_us), module.strip()))
    return sorted(rows, reverse=True)[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        env = os.environ | {"RATIONALE_HOME": home}
        commands = {
            "rationale --help": [rationale_exe(), "--help"],
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        results = {name: summary(timed(cmd, args.runs, env)) for name, cmd in commands.items()}
        imports = top_imports(env)

    print(f"wall time in seconds, {args.runs} runs after {WARMUP} warm-up runs")
    print(f"{'command':<18} {'min':>7} {'median':>7} {'p90':>7} {'max':>7}")
    for name, values in results.items():
        print(f"{name:<18} " + " ".join(f"{v:7.3f}" for v in values))
    print("\nslowest imports under `import rationale.cli` (python -X importtime)")
    print(f"{'cumulative s':>12} {'self s':>8}  module")
    for cumulative, self_us, module in imports:
        print(f"{cumulative / 1e6:12.4f} {self_us / 1e6:8.4f}  {module}")

    median = results["rationale --help"][1]
    ok = median < LIMIT_S
    print(
        f"\n{'PASS' if ok else 'FAIL'}: median of `rationale --help` {median:.3f} s "
        f"({'<' if ok else '>='} {LIMIT_S} s)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
