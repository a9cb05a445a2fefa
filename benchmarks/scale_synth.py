"""Requests/s of `rationale synth` in 1 process vs N shards on a local Ray cluster, in one run.

The fake teacher (tests/openai_server.py, its own process) answers after ``--latency``; with
``--concurrency`` requests in flight its ceiling is concurrency / latency (320 req/s by default),
which one client process cannot reach on the litellm + instructor path (~15 ms of CPU a record:
one core caps it near 70 req/s). So the second core, through a second shard, is what is measured.

For each setting the whole command is timed (start-up, the Ray cluster's start, merging) and so
is its synthesis alone (requests / the longest shard's wall_s in run.json). CPU per record is the
machine's busy CPU time over the command (/proc/stat: every process, Ray's raylet and workers
included, which are not children the command reaps) less the fake teacher's own (its
/proc/PID/stat), divided by the records: whatever else runs on the machine is counted too.
Each client gets an empty cache; the order alternates over ``--runs`` runs, medians reported.

    .venv/bin/python benchmarks/scale_synth.py [--records 1000] [--shards 2] [--runs 2]
        [--concurrency 64] [--latency 0.2] [--client litellm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_throughput import make_records, start_server, timed


def _busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    records: Path, url: str, n: int, args: argparse.Namespace, shards: int, server: int
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RATIONALE_HOME": f"{tmp}/home", "OPENAI_API_KEY": "sk-bench",
               "RAY_AUTH_MODE": "disabled"}  # fmt: skip
        cmd = [str(Path(sys.executable).parent / "rationale"), "synth", str(records),
               "-o", f"{tmp}/run", "--teacher", "openai/test-model", "--api-base", url,
               "--client", args.client, "--concurrency", str(args.concurrency),
               "--max-context-tokens", "2000", "--verifier", "none"]  # fmt: skip
        if shards > 1:
            cmd += ["--ray", "local", "--shards", str(shards)]
        t0, busy, served = time.monotonic(), _busy_s(), _process_s(server)
        timed(cmd, env)
        wall = time.monotonic() - t0
        cpu = (_busy_s() - busy) - (_process_s(server) - served)
        run_dirs = (
            sorted(Path(f"{tmp}/run/shards").iterdir()) if shards > 1 else [Path(f"{tmp}/run")]
        )
        infos = [json.loads((d / "run.json").read_text()) for d in run_dirs]
        merged = json.loads(Path(f"{tmp}/run/run.json").read_text())
    if merged["counts"]["accepted"] != n:
        raise SystemExit(f"{shards} shards: {merged['counts']} for {n} records")
    requests = sum(i["requests"]["this_invocation"] for i in infos)
    loop = max(i["wall_s"] for i in infos)
    return {"rps_loop": requests / loop, "rps_wall": requests / wall, "wall": wall,
            "cpu_ms": cpu * 1000 / n}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--client", default="litellm", choices=["litellm", "fast"])
    args = ap.parse_args()
    settings = [1, args.shards]
    server, url = start_server(args.latency)
    results: dict[int, list[dict]] = {s: [] for s in settings}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            records = Path(tmp) / "records.jsonl"
            make_records(records, args.records)
            for i in range(args.runs):
                for s in settings if i % 2 == 0 else settings[::-1]:
                    results[s].append(run(records, url, args.records, args, s, server.pid))
    finally:
        server.kill()
        server.wait()
    print(f"{args.records} records, client {args.client}, concurrency {args.concurrency} per "
          f"process, latency {args.latency * 1000:.0f} ms (ceiling "
          f"{args.concurrency / args.latency:.0f} req/s per process), {os.cpu_count()} CPUs, "
          f"median of {args.runs} runs")  # fmt: skip
    print(f"{'setting':<22}{'req/s (synthesis)':>18}{'req/s (whole cmd)':>19}{'wall s':>8}"
          f"{'client CPU ms/rec':>19}")  # fmt: skip
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in results.items()}
    for s in settings:
        name = "1 process" if s == 1 else f"{s} Ray shards"
        m = med[s]
        print(f"{name:<22}{m['rps_loop']:>18.1f}{m['rps_wall']:>19.1f}{m['wall']:>8.1f}"
              f"{m['cpu_ms']:>19.2f}")  # fmt: skip
    one, many = med[1], med[args.shards]
    print(
        f"speed-up of {args.shards} shards: {many['rps_loop'] / one['rps_loop']:.2f}x in "
        f"synthesis, {many['rps_wall'] / one['rps_wall']:.2f}x over the whole command"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
