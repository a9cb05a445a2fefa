"""The settings of `rationale eval` (`EvalConfig`) and what a rerun on an eval folder must share
with the run that made it (`EvalConfig.identity`, `check_same`).

The identity holds the settings that decide the answers, and what answered and what was asked
by content (`rationale.identity`): an API model's endpoint, a local model's weight digest and
the test file's digest. A folder whose finished cases were made by another identity is refused
with what changed and how to start over; `rationale run` moves such a folder to
``runs/.outdated/`` instead (`rationale.stage_runners.prepare`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from rationale.errors import RationaleError, redact
from rationale.shards import normal_shard

__all__ = ["EvalConfig", "check_same"]


class EvalConfig(BaseModel):
    """Everything that decides an evaluation; saved resolved in eval.json."""

    model_config = ConfigDict(extra="forbid")

    model: str
    data: str
    output: str
    cases: Literal["all", "from-second"] = "from-second"  # the paper's: 2nd and later steps
    limit: int | None = Field(None, ge=1)
    history_rationales: bool = False
    template: str | None = None  # prompt-only models; a student keeps its own
    max_context_tokens: int | None = Field(6000, ge=16)
    action_space: str | None = None
    on_error: Literal["fail", "skip"] = "fail"
    engine: Literal["auto", "hf", "vllm"] = "auto"
    batch_size: int = Field(16, ge=1)
    # the completion cap, named as synth's (--max-tokens); the old name is still read
    max_tokens: int = Field(
        256, ge=1, validation_alias=AliasChoices("max_tokens", "max_new_tokens")
    )
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    # API models
    api_base: str | None = None
    client: Literal["auto", "litellm", "fast"] = "auto"
    concurrency: int = Field(16, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    timeout: float = Field(60.0, gt=0)
    request_attempts: int = Field(6, ge=1)
    backoff: float = Field(1.0, ge=0)
    max_cost: float | None = Field(None, ge=0)
    # provider batch APIs (rationale.batch_engine)
    batch: bool = False
    wait: bool = False
    poll_interval: float = Field(60.0, gt=0)
    shard: str | None = None  # "K/N": one shard of the sessions (rationale.shards)
    _shard = field_validator("shard")(normal_shard)

    # scoring
    bootstrap: int = Field(1000, ge=1)

    def resolved(self) -> dict[str, Any]:
        data = json.loads(redact(self.model_dump_json()))
        for name in ("data", "output", "action_space"):
            if data.get(name):
                data[name] = str(Path(data[name]).resolve())
        if Path(self.model).expanduser().exists():
            data["model"] = str(Path(self.model).expanduser().resolve())
        return data  # type: ignore[no-any-return]

    def identity(self) -> dict[str, Any]:
        """What a rerun on the same folder must share (``--limit`` may grow; limits, budget
        and concurrency may change): the settings, and what answers and what is asked by
        content (`rationale.identity`): the endpoint of an API model, the digest of a local
        model's weights and of the test file's bytes."""
        from rationale.identity import endpoint, file_digest

        data = self.resolved()
        data["max_new_tokens"] = data.pop("max_tokens")  # the key eval folders already hold
        keys = ("model", "data", "cases", "shard", "history_rationales", "template",
                "max_context_tokens",
                "action_space", "max_new_tokens", "temperature", "seed")  # fmt: skip
        out = {k: data[k] for k in keys}
        out["endpoint"] = endpoint(self.api_base)
        out["model_digest"] = _model_digest(self.model)
        data_file = Path(self.data)
        out["data_digest"] = file_digest(data_file, remember=False) if data_file.is_file() else None
        return out


def _model_digest(model: str) -> str | None:
    """The content digest of a local ``--model`` (None for an API model; a model that cannot
    be resolved is refused later, by its loader, with the reason)."""
    from rationale.identity import model_digest
    from rationale.predictor import resolve_model

    try:
        spec = resolve_model(model)
    except RationaleError:
        return None
    return model_digest(spec)


#: How a changed identity is said; the other settings are named with their old and new value.
_CHANGED = {
    "model_digest": "the model's weights changed (same --model, other content)",
    "data_digest": "the test file changed (same path, other content)",
}


def check_same(folder: Any, before: dict[str, Any] | None, config: EvalConfig) -> None:
    """Refuse a folder that holds finished cases of another eval (a folder whose eval never
    finished a case is taken over)."""
    mine = config.identity()
    theirs = (before or {}).get("identity") or {}
    changed = [k for k, v in mine.items() if theirs.get(k) != v]
    if not before or not changed or not folder.has_cases():
        return
    diff = "; ".join(_CHANGED[k] if k in _CHANGED and k in theirs else
                     f"{k} {theirs.get(k)!r} -> {mine[k]!r}" for k in changed)  # fmt: skip
    raise RationaleError(
        f"{folder.path} holds an eval of another model, test file or settings ({diff}); its "
        "answers are not this model's: evaluate into a new -o (or delete the folder), or give "
        "the same model, file and flags to resume it"
    )
