"""The settings of `rationale eval` (`EvalConfig`) and what a rerun on an eval folder must share
with the run that made it (`EvalConfig.identity`, `check_same`).

The identity holds the settings that decide the answers, and what answered and what was asked
by content (`rationale.identity`): an API model's endpoint, a local model's weight digest and
the test file's digest. A folder whose finished cases were made by another identity is refused
with what changed and how to start over; `rationale run` moves such a folder to
``runs/.outdated/`` instead (`rationale.stage_runners.prepare`).
"""

from __future__ import annotations

import contextlib
import hashlib
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
        and concurrency may change): the settings, and by content (`rationale.identity`) what
        answers and what is asked: an API model's endpoint, a local model's weights (a student's
        with its prompt format), a prompt-only model's template, the action space and the test
        file."""
        from rationale.identity import file_digest

        data = self.resolved()
        data["max_new_tokens"] = data.pop("max_tokens")  # the key eval folders already hold
        keys = ("model", "data", "cases", "shard", "history_rationales", "template",
                "max_context_tokens",
                "action_space", "max_new_tokens", "temperature", "seed")  # fmt: skip
        out = {k: data[k] for k in keys}
        out.update(_model_content(self.model, self.api_base, self.template))
        for key, path in (("data_digest", self.data), ("action_space_digest", self.action_space)):
            file = Path(path) if path else None
            out[key] = file_digest(file, remember=False) if file and file.is_file() else None
        return out


def _model_content(model: str, api_base: str | None, template: str | None) -> dict[str, Any]:
    """``endpoint`` (an API model's), ``model_digest`` (a local model's weights; a student's
    with its prompt format) and ``template_version`` (a prompt-only model's template, by its
    content). A model that cannot be resolved is refused later, by its loader, with the reason.
    """
    from rationale.identity import effective_api_base, endpoint, file_digest, model_digest
    from rationale.predictor import resolve_model

    out: dict[str, Any] = {"endpoint": None, "model_digest": None, "template_version": None}
    try:
        spec = resolve_model(model)
    except RationaleError:
        return out
    if spec.kind == "api":
        out["endpoint"] = endpoint(effective_api_base(model, api_base))
    else:
        digest = model_digest(spec)
        folder = Path(spec.folder) if spec.folder else None
        if digest and folder and (folder / "prompt_format.json").is_file():
            fmt = file_digest(folder / "prompt_format.json", remember=False)
            digest = hashlib.sha256(f"{digest}\0{fmt}".encode()).hexdigest()
        out["model_digest"] = digest
    if spec.kind != "student":
        from rationale.prompt_format import BASELINE_TEMPLATE
        from rationale.prompts import load_template

        # a template that does not load is refused by the predictor, with the reason
        with contextlib.suppress(RationaleError, OSError):
            out["template_version"] = load_template(template or BASELINE_TEMPLATE).version
    return out


#: How a changed identity is said; the other settings are named with their old and new value.
_CHANGED = {
    "model_digest": "the model's weights changed (same --model, other content)",
    "data_digest": "the test file changed (same path, other content)",
    "template_version": "the prompt template changed (same name, other content)",
    "action_space_digest": "the action space file changed (same path, other content)",
}
#: Keys an eval folder written before evals recorded content lacks.
_CONTENT = ("model_digest", "data_digest")


def check_same(folder: Any, before: dict[str, Any] | None, config: EvalConfig) -> None:
    """Refuse a folder that holds finished cases of another eval (a folder whose eval never
    finished a case is taken over)."""
    if before is None and folder.has_cases():
        raise RationaleError(
            f"{folder.path} holds finished cases but no eval.json, so nothing says which model "
            "and test file made them; evaluate into a new -o (or delete the folder)"
        )
    mine = config.identity()
    theirs = (before or {}).get("identity") or {}
    changed = [k for k, v in mine.items() if theirs.get(k) != v]
    if not before or not changed or not folder.has_cases():
        return
    if not all(k in theirs for k in _CONTENT):
        raise RationaleError(
            f"{folder.path} holds an eval written before evals recorded the model and test file "
            "they read by content, so its answers cannot be checked against this model; "
            "evaluate into a new -o (or delete the folder)"
        )
    diff = "; ".join(_CHANGED[k] if k in _CHANGED and k in theirs else
                     f"{k} {theirs.get(k)!r} -> {mine[k]!r}" for k in changed)  # fmt: skip
    raise RationaleError(
        f"{folder.path} holds an eval of another model, test file or settings ({diff}): "
        "evaluate into a new -o (or delete the folder), or give the same model, file and flags "
        "to resume it"
    )
