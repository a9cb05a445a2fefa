"""Time and peak memory of reading a large record file.

Writes a synthetic record file (``--lines`` steps of ``--sessions`` sessions, lines shuffled, so a
session's steps lie scattered through the file in no order) to a temporary folder, then
runs each measurement as its own child process and reports its wall time and peak RSS
(``ru_maxrss`` of that one process, from ``os.wait4``):

a) ``rationale validate FILE --json`` on a fresh ``RATIONALE_HOME`` (validates, builds the index);
b) the same again (the index is reused);
c) ``RecordFile(path).steps()``: every step with its history, counted;
d) baseline: ``json.loads`` of every line into one list, i.e. holding the whole file in memory.

Counts are checked against what was generated. Run:

    .venv/bin/python benchmarks/reader_scale.py [--lines 1000000] [--sessions 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

LIBRARY_PASS = """
import sys
from rationale.records import RecordFile
with RecordFile(sys.argv[1]) as rf:
    print(sum(1 for _ in rf.steps()))
"""

IN_MEMORY = """
import json, sys
with open(sys.argv[1], "rb") as f:
    rows = [json.loads(line) for line in f]
print(len(rows))
"""

VOCABULARY = (
    "add to cart price rating reviews free shipping size color blue black small large pack "
    "organic coffee shoes laptop charger case cotton shirt deal save sold by seller in stock "
    "only left delivery tomorrow compare similar items customers also bought sponsored results"
)


def generate(path: Path, lines: int, sessions: int, rng: random.Random) -> None:
    """Write ``lines`` records of ``sessions`` sessions, in shuffled order, one line at a time."""
    cuts = sorted(rng.sample(range(1, lines), sessions - 1))
    # steps per session, each >= 1
    lengths = [b - a for a, b in zip([0, *cuts], [*cuts, lines], strict=True)]
    order = array("q")  # (session << 32 | step) for every line
    for k, n in enumerate(lengths):
        order.extend(range(k << 32 | 1, k << 32 | n + 1))
    rng.shuffle(order)
    words = VOCABULARY.split()
    blob = " ".join(rng.choice(words) for _ in range(4000))
    with open(path, "w", encoding="utf-8") as f:
        for code in order:
            k, step = code >> 32, code & 0xFFFFFFFF
            j = rng.randrange(10_000)
            if step == lengths[k] and rng.random() < 0.5:
                action = {"type": "terminate"}
            elif rng.random() < 0.25:
                action = {"type": "type_and_submit", "name": "search.box", "text": f"query {j}"}
            else:
                action = {"type": "click", "name": f"product.item_{j}"}
            start, size = rng.randrange(len(blob) - 2000), rng.randint(200, 2000)
            record = {
                "session_id": f"s{k}",
                "step": step,
                "context": blob[start : start + size],
                "action": action,
                "instruction": "buy something",
            }
            f.write(json.dumps(record) + "\n")


def measure(cmd: list[str], env: dict[str, str], workdir: Path) -> tuple[float, float, str]:
    """Run ``cmd`` as a child; (wall s, its own peak RSS in MiB, its stdout). Fails loudly."""
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[:3]} exited {proc.returncode}:\n{err_path.read_text()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out_path.read_text()  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=50_000)
    args = parser.parse_args()
    if not 1 <= args.sessions <= args.lines:
        parser.error("need 1 <= --sessions <= --lines")
    exe = Path(sys.executable).parent / "rationale"
    exe = str(exe) if exe.is_file() else shutil.which("rationale")
    if not exe:
        sys.exit("no rationale executable next to this python or on PATH")

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = tmp / "records.jsonl"
        start = time.perf_counter()
        generate(path, args.lines, args.sessions, random.Random(0))
        generated_s = time.perf_counter() - start
        env = os.environ | {"RATIONALE_HOME": str(tmp / "home")}

        def validate() -> tuple[float, float, str]:
            wall, rss, out = measure([exe, "validate", str(path), "--json"], env, tmp)
            stats = json.loads(out)
            got = (stats["sessions"], stats["steps"], len(stats["errors"]))
            if got != (args.sessions, args.lines, 0):
                sys.exit(
                    f"validate: (sessions, steps, errors) = {got}, expected "
                    f"{(args.sessions, args.lines, 0)}"
                )
            return wall, rss, f"{stats['sessions']} sessions, {stats['steps']} steps"

        def library(code: str, what: str) -> tuple[float, float, str]:
            wall, rss, out = measure([sys.executable, "-c", code, str(path)], env, tmp)
            if int(out) != args.lines:
                sys.exit(f"{what}: counted {out.strip()}, expected {args.lines}")
            return wall, rss, f"{int(out)} {what}"

        rows = [
            ("a) validate --json, builds index", validate()),
            ("b) validate --json, index reused", validate()),
            ("c) RecordFile.steps(), all steps", library(LIBRARY_PASS, "steps")),
            ("d) json.loads all lines to a list", library(IN_MEMORY, "dicts")),
        ]
        size_mib = path.stat().st_size / 2**20

    print(
        f"{args.lines} lines, {args.sessions} sessions, file {size_mib:.1f} MiB "
        f"(generated in {generated_s:.1f} s)"
    )
    print(f"{'measurement':<36} {'wall s':>8} {'peak RSS MiB':>13}  checked")
    for name, (wall, rss, checked) in rows:
        print(f"{name:<36} {wall:8.2f} {rss:13.1f}  {checked}")


if __name__ == "__main__":
    main()
