"""Throughput and client CPU of `rationale synth` against a local OpenAI-compatible server.

The server (tests/openai_server.py, its own process) answers every request after a fixed latency.
Each client runs as its own process on the same records with an empty cache, and we report:

- achieved requests/s = requests made / wall time of the synthesis loop (run.json's wall_s);
- the ceiling min(concurrency / latency, rpm / 60) and the ratio achieved / ceiling;
- client CPU ms per record = user + system time of the client's whole process tree (start-up,
  imports and indexing included) / records.

Medians of ``--runs`` runs. Clients: our fast path (``--client fast``: aiohttp, JSON mode), our
litellm + instructor path (``--client litellm``), and bespokelabs-curator when its own venv exists
(``bash benchmarks/setup_curator.sh`` builds it; its pins cannot share our environment).

    .venv/bin/python benchmarks/synth_throughput.py [--records 2000] [--concurrency 64]
        [--latency 0.2] [--runs 3] [--clients fast,litellm,curator]

Goal on a 2-core machine: ratio >= 0.90 and <= 5 ms CPU per record.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "openai_server.py"
CURATOR_PY = ROOT / ".bench" / "curator-venv" / "bin" / "python"
CURATOR_CLIENT = ROOT / "benchmarks" / "curator_client.py"
WORDS = [
    "shirt",
    "linen",
    "blue",
    "size",
    "price",
    "rating",
    "review",
    "cart",
    "filter",
    "brand",
    "sale",
    "shoes",
    "lamp",
    "desk",
]


def make_records(path: Path, n: int, seed: int = 0) -> None:
    """n steps in sessions of 20, each with a ~1,500-character simplified-HTML context."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            items = "".join(
                f'<div name="results.item_{j}"><span>{" ".join(rng.choices(WORDS, k=6))}</span>'
                f'<a name="results.item_{j}.view">View</a></div>'
                for j in range(12)
            )
            action = (
                {"type": "click", "name": f"results.item_{rng.randrange(12)}.view"}
                if i % 5
                else {"type": "type_and_submit", "name": "search.box", "text": rng.choice(WORDS)}
            )
            record = {
                "session_id": f"s{i // 20}",
                "step": i % 20,
                "context": f"<page>{items}</page>",
                "action": action,
                "instruction": "Buy a linen shirt under $40.",
            }
            f.write(json.dumps(record) + "\n")


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{line.split()[1]}/v1"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(user + system CPU seconds of the command's whole process tree, its stdout).

    The child is reaped here, so RUSAGE_CHILDREN grows by its usage and that of every
    descendant it reaped in turn.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, proc.stdout


def run_ours(client: str, records: Path, url: str, n: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RATIONALE_HOME": f"{tmp}/home", "OPENAI_API_KEY": "sk-bench"}
        rationale = Path(sys.executable).parent / "rationale"
        cmd = [
            str(rationale), "synth", str(records), "-o", f"{tmp}/run",
            "--teacher", "openai/test-model", "--api-base", url, "--client", client,
            "--concurrency", str(concurrency), "--max-context-tokens", "2000",
            "--verifier", "none",
        ]  # fmt: skip
        cpu, _ = timed(cmd, env)
        report = json.loads(Path(f"{tmp}/run/run.json").read_text())
    if report["counts"]["accepted"] != n:
        raise SystemExit(f"{client}: {report['counts']} for {n} records")
    requests = report["requests"]["this_invocation"]
    return {"rps": requests / report["wall_s"], "cpu_ms": cpu * 1000 / n, "requests": requests}


def run_curator(records: Path, url: str, n: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(CURATOR_PY), str(CURATOR_CLIENT), "--api-base", url, "--records", str(records),
            "--concurrency", str(concurrency), "--model", "test-model", "--out", tmp,
        ]  # fmt: skip
        cpu, out = timed(cmd, {**os.environ, "HOME": tmp})
    result = json.loads(out.strip().splitlines()[-1])
    if result["responses"] != n:
        raise SystemExit(f"curator: {result['responses']} responses for {n} records")
    return {"rps": result["responses"] / result["wall_s"], "cpu_ms": cpu * 1000 / n,
            "requests": result["responses"]}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rpm", type=float, default=None, help="the server's rate limit, if any")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", default="fast,litellm,curator")
    args = ap.parse_args()
    clients = args.clients.split(",")
    if "curator" in clients and not CURATOR_PY.exists():
        print("curator: skipped, no .bench/curator-venv (bash benchmarks/setup_curator.sh)")
        clients.remove("curator")
    ceiling = args.concurrency / args.latency
    if args.rpm:
        ceiling = min(ceiling, args.rpm / 60)
    server, url = start_server(args.latency)
    results: dict[str, list[dict[str, float]]] = {c: [] for c in clients}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            records = Path(tmp) / "records.jsonl"
            make_records(records, args.records)
            for _ in range(args.runs):  # alternate clients, so drift on a shared machine hits all
                for client in clients:
                    if client == "curator":
                        r = run_curator(records, url, args.records, args.concurrency)
                    else:
                        r = run_ours(client, records, url, args.records, args.concurrency)
                    results[client].append(r)
    finally:
        server.kill()
        server.wait()
    print(
        f"{args.records} records, concurrency {args.concurrency}, latency {args.latency * 1000:.0f}"
        f" ms, ceiling {ceiling:.0f} req/s, median of {args.runs} runs"
    )
    print(f"{'client':<22}{'req/s':>8}{'ratio':>8}{'CPU ms/rec':>12}{'requests':>10}")
    ok = True
    for client, runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        cpu = statistics.median(r["cpu_ms"] for r in runs)
        reqs = statistics.median(r["requests"] for r in runs)
        name = {"fast": "rationale (fast path)", "litellm": "rationale (litellm)"}.get(
            client, client
        )
        print(f"{name:<22}{rps:>8.1f}{rps / ceiling:>8.2f}{cpu:>12.2f}{reqs:>10.0f}")
        if client == "fast":
            ok = rps / ceiling >= 0.90 and cpu <= 5.0
    print("goal (fast path: ratio >= 0.90, <= 5 ms CPU/record):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
