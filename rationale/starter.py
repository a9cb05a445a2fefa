"""The commented starter workspace file that ``rationale init`` writes."""

from __future__ import annotations

import json
from pathlib import Path

from rationale.errors import ConfigError
from rationale.workspace import WORKSPACE_FILE

STARTER = """\
# rationale workspace: one table per stage; keys are the commands' long flag names
# (rationale synth --help lists them). Flags typed on a command line win over this file.
# Relative paths are relative to this file's folder; outputs default to runs/ beside it.
# `rationale run` runs every stage below in order; a rerun skips what is finished.

# [import]                     # EDIT: raw logs to records (or delete and set [split] input)
# format = "mind2web"          # or "opera"
# source = ["data/mind2web/train"]
# domain = ["Shopping"]
# max-sessions = 30            # a hash-chosen subset, to start small

[split]                        # whole sessions go to one side
input = {records}  # EDIT: your record file (rationale import ... writes one)
test-frac = 0.2
seed = 0

[synth]
teacher = "local"              # EDIT: e.g. "openai/gpt-4o-mini" (OPENAI_API_KEY in the env);
                               # "local" is a 135M model on CPU: no key, weak rationales
# verifier = "auto"            # the blind consistency check: the teacher (off for local)
# max-cost = 5.0               # USD cap of one invocation
# batch = true                 # the provider's batch API (openai/, anthropic/): half the price,
                               # answers within 24 h; `rationale run` again collects them
# template = "web_shopping"    # or "generic", or your own .jinja

[distill]
base = "smollm2-135m"          # EDIT: the student, e.g. "llama-3-8b" on a GPU
# max-steps = 100              # a cap on training steps
# max-seq-length = 2048

[eval]
# cases = "from-second"        # the paper's: each session's 2nd and later steps; "all": every step
# limit = 200                  # only the first N test cases
# batch-size = 16

[compare]
arms = ["base", "actions", "rationale", "teacher"]  # teacher: API teachers only
# reference = "rationale"
"""


def write_starter(folder: str | Path = ".", *, records: str | None = None,
                  force: bool = False) -> Path:  # fmt: skip
    """Write ``rationale.toml`` into ``folder``; refuses to overwrite one unless ``force``."""
    path = Path(folder) / WORKSPACE_FILE
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; edit it, or pass --force to overwrite it")
    # a JSON string is a valid TOML basic string: quotes and backslashes in the path survive
    text = STARTER.replace("{records}", json.dumps(records or "records.jsonl"))
    path.write_text(text, encoding="utf-8")
    return path
