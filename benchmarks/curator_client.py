"""Run bespokelabs-curator on rationale records against a local OpenAI-compatible server.

The comparison client of benchmarks/synth_throughput.py. It runs INSIDE its own venv
(``bash benchmarks/setup_curator.sh`` builds ``.bench/curator-venv``), never in the project's:

    .bench/curator-venv/bin/python benchmarks/curator_client.py \
        --api-base http://127.0.0.1:PORT/v1 --records records.jsonl \
        --concurrency 64 --model test-model --out DIR

Each record (``{"session_id", "step", "context", "action", "instruction", ...}``) becomes one
chat request (a short system message and a user message asking for a one-sentence first-person
rationale as JSON ``{"rationale": ...}``), sent through ``curator.LLM`` with ``backend="openai"``
(curator's own aiohttp client). The parsed rows are written to ``DIR/rationales.jsonl``, and the
last line of stdout is one JSON object::

    {"tool": "curator", "version": "0.1.31", "records": N, "responses": M, "wall_s": S,
     "concurrency": C, "failed": F, "errors": E}

``wall_s`` times the generation call (``llm(dataset)``) only; ``responses`` counts the rows that
came back and parsed; ``failed`` the requests curator gave up on; ``errors`` the failed attempts
(each one retried), so the server saw records + errors requests, plus the one rate-limit probe
that curator's OpenAI backend sends when the LLM is built (empty messages, outside ``wall_s``).

Offline and local only:
- ``--api-base`` must be a loopback address (127.0.0.0/8, localhost, ::1);
- TIKTOKEN_CACHE_DIR points at litellm's bundled tokenizers, LITELLM_LOCAL_MODEL_COST_MAP=True
  (else importing litellm fetches its price map from GitHub), TELEMETRY_ENABLED=false (PostHog),
  CURATOR_VIEWER unset (the hosted viewer), HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1;
- curator's cache is a fresh folder under DIR and CURATOR_DISABLE_CACHE=true, so every run sends
  every request (with a reused cache curator answers a repeated run from disk and calls nothing).

Rate limits are set to 1,000,000 requests/min and 10^9 tokens/min, so only ``--concurrency``
(curator's ``max_concurrent_requests``) limits it: curator blocks an estimate of ~4,500 tokens
per request in flight (its output estimate for a model it does not know is 4,096 tokens), so a
1,000,000 tokens/min budget would hold it to about 30 requests/s here.

Structured output: by default the request carries the same ``response_format`` that curator
builds for a pydantic ``response_format`` (``{"type": "json_schema", "json_schema": {"name":
"output_schema", "schema": ...}}``) but passed through ``generation_params``, and ``parse()``
validates the JSON with the pydantic model. ``--structured native`` gives curator the pydantic
model itself; with a ``base_url`` curator then first probes the server with its own test schema
(a ``User`` with ``name`` and ``age``) and refuses to run when the answer does not fit it, which a
server that always answers ``{"rationale": ...}`` never does.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse


def _offline_env() -> None:
    """Environment for a local, offline run; must be set before curator/litellm are imported."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        raise SystemExit("litellm is not installed: run inside .bench/curator-venv")
    tokenizers = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
    os.environ.update(
        {
            "TIKTOKEN_CACHE_DIR": str(tokenizers),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "TELEMETRY_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "CURATOR_DISABLE_CACHE": "true",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
    )
    for name in ("CURATOR_VIEWER", "BESPOKE_API_KEY", "POSTHOG_HOST", "OPENAI_BASE_URL"):
        os.environ.pop(name, None)
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost", "::1"]))
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = no_proxy


_offline_env()

from bespokelabs import curator  # noqa: E402  (after the environment is set)
from datasets import Dataset  # noqa: E402
from pydantic import BaseModel  # noqa: E402

SYSTEM = (
    "You help build a record of why people make the decisions they make. You will see one moment "
    "of a person's session: their task, the page they saw, and the action they actually took "
    "next. Write the rationale they most likely had at that moment.\n"
    'Rules: one short sentence in the first person, starting with "I"; say what they want and '
    'why this step serves it; use only what they knew then; never say "the user"; don\'t paste '
    "identifiers or markup.\n"
    'Answer with one JSON object and nothing else: {"rationale": "<one short first-person '
    'sentence>"}'
)

RPM = 1_000_000
TPM = 1_000_000_000
MAX_TOKENS = 256


def action_text(action: dict) -> str:
    """``click(results.item_3.view)``, ``type_and_submit(search.box, "linen")``."""
    args = [str(action[k]) for k in ("name",) if action.get(k) is not None]
    args += [json.dumps(action[k]) for k in ("text",) if action.get(k) is not None]
    return f"{action.get('type', 'act')}({', '.join(args)})"


def user_message(row: dict) -> str:
    action = json.loads(row["action"]) if isinstance(row["action"], str) else row["action"]
    parts = []
    if row.get("instruction"):
        parts.append(f"Task: {row['instruction']}")
    parts.append(f"Step {row.get('step', 0)} of session {row.get('session_id', '?')}.")
    if row.get("context"):
        parts.append(f"What they saw:\n{row['context']}")
    parts.append(f"The action they took: {action_text(action)}")
    parts.append("Why did they take it?")
    return "\n\n".join(parts)


def _loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Rationale(BaseModel):
    rationale: str


# Module-level classes: curator hashes prompt() and parse() with dill, which cannot pickle a
# class defined inside a function.
class RationaleLLM(curator.LLM):
    def prompt(self, row: dict) -> list[dict]:
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user_message(row)},
        ]

    def parse(self, row: dict, response) -> dict:
        # (Rationale is not named here: dill would try to pickle the pydantic class and warn.)
        if isinstance(response, str):  # the JSON text (the schema went through generation_params)
            rationale = json.loads(response)["rationale"]
        else:  # --structured native: curator already made a Rationale of it
            rationale = response.rationale
        if not isinstance(rationale, str) or not rationale.strip():
            raise ValueError(f"no rationale in {response!r}")
        return {"session_id": row["session_id"], "step": row["step"], "rationale": rationale}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--api-base", required=True, help="http://127.0.0.1:PORT/v1")
    ap.add_argument("--records", required=True, type=Path, help="records, one JSON object a line")
    ap.add_argument("--concurrency", type=int, default=64, help="max concurrent requests")
    ap.add_argument("--model", default="test-model")
    ap.add_argument("--out", required=True, type=Path, help="folder for rationales.jsonl")
    ap.add_argument(
        "--structured",
        choices=("generation-params", "native"),
        default="generation-params",
        help="how the JSON schema reaches curator (see the module docstring)",
    )
    args = ap.parse_args(argv)
    if not _loopback(args.api_base):
        raise SystemExit(f"--api-base must be a loopback address, not {args.api_base}")

    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="curator-cache-", dir=args.out))
    os.environ["CURATOR_CACHE_DIR"] = str(cache_dir)

    rows = []
    with open(args.records, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                rows.append(
                    {
                        "session_id": str(record.get("session_id", "")),
                        "step": int(record.get("step", 0)),
                        "context": record.get("context") or "",
                        "instruction": record.get("instruction") or "",
                        # a JSON string: actions differ in their fields, an Arrow struct would not
                        "action": json.dumps(record.get("action") or {}),
                    }
                )
    dataset = Dataset.from_list(rows)

    structured_native = args.structured == "native"
    generation_params: dict = {"max_tokens": MAX_TOKENS}
    if not structured_native:  # what curator itself sends for a pydantic response_format
        generation_params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output_schema", "schema": Rationale.model_json_schema()},
        }
    llm = RationaleLLM(
        model_name=args.model,
        backend="openai",
        response_format=Rationale if structured_native else None,
        generation_params=generation_params,
        backend_params={
            "base_url": args.api_base,
            "api_key": os.environ.get("OPENAI_API_KEY") or "sk-local-bench",
            "max_concurrent_requests": args.concurrency,
            "max_requests_per_minute": RPM,
            "max_tokens_per_minute": TPM,
            "max_retries": 3,
            "request_timeout": 120,
            "require_all_responses": False,
        },
    )

    start = time.perf_counter()
    response = llm(dataset, working_dir=str(cache_dir))
    wall = time.perf_counter() - start

    out_rows = response.dataset.to_list()
    with open(args.out / "rationales.jsonl", "w", encoding="utf-8") as f:
        for row in out_rows:
            f.write(json.dumps(row) + "\n")
    tracker = getattr(llm._request_processor, "tracker", None)
    errors = (
        tracker.num_other_errors + tracker.num_api_errors + tracker.num_rate_limit_errors
        if tracker is not None
        else None
    )
    print(
        json.dumps(
            {
                "tool": "curator",
                "version": curator.__version__,
                "records": len(rows),
                "responses": len(out_rows),
                "wall_s": round(wall, 4),
                "concurrency": args.concurrency,
                "failed": response.request_stats.failed,
                "errors": errors,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
