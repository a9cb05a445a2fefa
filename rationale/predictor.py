"""The predictor: a model that simulates a person, one step or a batch at a time.

`Predictor.load(model)` takes what ``rationale eval --model`` takes (`resolve_model`):

- a ``rationale distill`` output folder (it holds ``prompt_format.json``): the student, prompted
  exactly as it was trained (`rationale.prompt_format`), its ``adapter/`` on its base (or its
  fully fine-tuned ``model/``, or ``merged/`` when there is no adapter);
- a local model: a Hugging Face model folder, a ``.gguf`` file, a base alias (``smollm2-135m``,
  ...) or ``hf:owner/name`` from the local Hugging Face cache (never downloaded), prompted with
  the ``predict`` template as a prompt-only baseline;
- anything else is a litellm model string (``openai/gpt-4o-mini``), a prompt-only baseline
  called through the synthesis clients: the fast path with ``api_base``, the same retries,
  cache, rate limits and cost accounting (`rationale.engine`).

`predict` / `predict_batch` take a `rationale.eval_cases.EvalCase`, a `rationale.sessions.Step`
or a plain dict (`as_step`) and return `Prediction`s: the rationale and the action, validated
against the action space, or why there is none. Local models generate in batches
(`rationale.hf_batch`, or vLLM on CUDA: `rationale.vllm_engine`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from rationale.errors import RationaleError, TeacherError
from rationale.eval_cases import as_step
from rationale.prompt_format import PromptFormat
from rationale.schema import ActionSpace

__all__ = ["ModelSpec", "Prediction", "Predictor", "as_step", "resolve_model"]

Kind = Literal["student", "local", "api"]


@dataclass(frozen=True)
class ModelSpec:
    """Where ``--model`` points and how it is run."""

    name: str
    kind: Kind
    label: str
    source: str | None = None  # local / student: the model folder (or hub id) to load
    gguf_file: str | None = None
    adapter: str | None = None  # student: the LoRA adapter folder
    folder: str | None = None  # student: the distill output folder
    max_seq_length: int | None = None  # student: what it was trained with


@dataclass(frozen=True)
class Prediction:
    """One predicted step: the parsed rationale and action, the raw answer and its cost."""

    rationale: str | None
    action: dict[str, Any] | None
    status: Literal["ok", "unparsed", "failed"]
    problem: str | None = None
    raw: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    cached: bool = False
    stop: str | None = None  # local models: "json", "eos" or "length" (cut by max_new_tokens)

    def as_dict(self) -> dict[str, Any]:
        """``{"rationale": ..., "action": ...}``, the answer a simulation uses."""
        return {"rationale": self.rationale, "action": self.action}


def resolve_model(model: str) -> ModelSpec:
    """What ``model`` names (see the module docstring). Nothing is loaded or downloaded."""
    from rationale.pricing import model_price

    path = Path(model).expanduser()
    if path.is_dir() and (path / "prompt_format.json").is_file():
        return _student(path, model)
    if path.is_file() and path.suffix != ".gguf":
        raise RationaleError(
            f"--model {model!r} is a file but not a model: give a .gguf file, a model folder, "
            "a distill output folder or a model string"
        )
    local = path.suffix == ".gguf" or path.is_dir() or model.startswith(("hf:", ".", "/", "~"))
    from distill.models import ALIASES, resolve_base  # reading a distill output needs its names

    if local or model in ALIASES:
        try:
            base = resolve_base(model.removeprefix("hf:"), "hf")
        except RationaleError as exc:
            raise RationaleError(f"--model: {exc}") from None
        label = base.alias or (Path(base.source).name if base.is_local else base.source)
        if base.gguf_file and not base.alias:
            label = Path(base.gguf_file).stem
        return ModelSpec(model, "local", label, base.source, base.gguf_file)
    provider, _, name = model.partition("/")
    if (name and provider and " " not in model) or model_price(model) is not None:
        return ModelSpec(model, "api", model)  # provider/model, or a name litellm's map knows
    raise RationaleError(
        f"--model {model!r} is not a distill output folder, a model folder, a .gguf file, an "
        f"alias ({', '.join(ALIASES)}), hf:owner/name, nor a litellm model string "
        "(provider/model, e.g. openai/gpt-4o-mini, or a name litellm knows, e.g. gpt-4o)"
    )


def _student(path: Path, name: str) -> ModelSpec:
    import json

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        base = config["base"]
        max_seq = config.get("config", {}).get("max_seq_length")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RationaleError(
            f"{path}: no readable config.json with the base model ({exc})"
        ) from None
    label = path.resolve().name
    if (path / "adapter" / "adapter_config.json").is_file():
        return ModelSpec(name, "student", label, base["source"], base.get("gguf_file"),
                         str(path / "adapter"), str(path), max_seq)  # fmt: skip
    for weights in ("model", "merged"):  # fully fine-tuned; or merged, the adapter gone
        if (path / weights / "config.json").is_file():
            return ModelSpec(name, "student", label, str(path / weights), None, None,
                             str(path), max_seq)  # fmt: skip
    raise RationaleError(f"{path}: none of adapter/, model/, merged/ holds a trained student")


class Predictor:
    """A loaded model and its prompt format: `predict` one step, `predict_batch` many."""

    def __init__(
        self, spec: ModelSpec, prompt: PromptFormat, *, engine: str = "auto",
        batch_size: int = 16, max_new_tokens: int = 256, temperature: float = 0.0,
        seed: int = 0, api_base: str | None = None, timeout: float = 60.0,
        threads: int | None = None, concurrency: int = 16, request_attempts: int = 6,
        client: str = "auto",
    ) -> None:  # fmt: skip
        if engine not in ("auto", "hf", "vllm"):
            raise RationaleError(f"engine {engine!r} is not one of auto, hf, vllm")
        self.spec, self.prompt, self.space = spec, prompt, prompt.space
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.temperature, self.seed, self.threads = temperature, seed, threads
        self.options = SimpleNamespace(
            concurrency=concurrency, max_cost=None, request_attempts=request_attempts,
            backoff=1.0, rpm=None, tpm=None,
        )  # fmt: skip
        self._generator: Any = None
        self._draws = 0
        self.client: Any = None
        if spec.kind == "api":
            from rationale.teacher import make_teacher

            self.engine, self.engine_reason = "api", "a litellm model string"
            self.client = make_teacher(spec.name, api_base=api_base, timeout=timeout,
                                       client=client)  # fmt: skip
            self.model_id = self.client.model_id
        else:
            self.engine, self.engine_reason = _choose_engine(engine)
            if engine == "auto" and self.engine == "vllm" and spec.gguf_file:
                self.engine, self.engine_reason = "hf", "a GGUF model (vllm needs a model folder)"
            self.model_id = ""  # set when the weights are loaded (`load`)

    @classmethod
    def load(
        cls, model: str, *, template: str | None = None, max_context_tokens: int | None = 6000,
        history_rationales: bool = False, action_space: str | None = None, eager: bool = True,
        **options: Any,
    ) -> Predictor:  # fmt: skip
        """Resolve ``model``, build its prompt format, and load a local model's weights now
        (``eager=False``: on first use)."""
        spec = resolve_model(model)
        if spec.kind == "student":
            if template is not None:
                raise RationaleError("a student is prompted with the template it was trained on: "
                                     "drop --template")  # fmt: skip
            fmt = PromptFormat.from_student(str(spec.folder), max_seq_length=spec.max_seq_length)
            if history_rationales and not fmt.history_rationales:
                fmt = replace(fmt, history_rationales=True)
        else:
            space = ActionSpace.from_file(action_space) if action_space else None
            fmt = PromptFormat.baseline(
                template=template, space=space, max_context_tokens=max_context_tokens,
                history_rationales=history_rationales,
            )  # fmt: skip
        predictor = cls(spec, fmt, **options)
        if eager and spec.kind != "api":
            predictor.generator  # noqa: B018  (loads the weights: minutes for a large model)
        return predictor

    @property
    def generator(self) -> Any:
        """The local generation engine, loaded on first use."""
        if self._generator is None:
            spec, chat = self.spec, self.prompt.chat_template
            if self.engine == "vllm":
                from rationale.vllm_engine import load_vllm

                self._generator = load_vllm(str(spec.source), adapter=spec.adapter,
                                            chat_template=chat)  # fmt: skip
            else:
                from rationale.hf_batch import load_generator

                self._generator = load_generator(
                    str(spec.source), gguf_file=spec.gguf_file, adapter=spec.adapter,
                    chat_template=chat, threads=self.threads,
                )  # fmt: skip
            self.model_id = self._generator.model_id
        return self._generator

    def identity(self) -> dict[str, Any]:
        """The model's facts for eval.json."""
        return {
            "name": self.spec.name, "label": self.spec.label, "kind": self.spec.kind,
            "id": self.model_id, "engine": self.engine, "engine_reason": self.engine_reason,
            "prompt": self.prompt.describe(),
        }  # fmt: skip

    def messages(self, item: Any) -> list[dict[str, str]]:
        """The prompt of one step (an `EvalCase`, a `Step` or a dict)."""
        from rationale.eval_cases import EvalCase

        if isinstance(item, EvalCase):
            return self.prompt.messages(item.step, item.earlier)
        return self.prompt.messages(as_step(item, self.space))

    def read(self, text: str, **usage: Any) -> Prediction:
        """A model's raw answer as a `Prediction`."""
        from rationale.predictions import parse_prediction

        parsed = parse_prediction(text, self.space)
        return Prediction(parsed.rationale, parsed.action, parsed.status, parsed.problem, text,
                          **usage)  # fmt: skip

    def predict(self, item: Any) -> Prediction:
        """One step's prediction."""
        return self.predict_batch([item])[0]

    def _draw(self) -> int:
        """0 when greedy (the same step, the same answer: an eval resumes from the cache);
        with a temperature, a new draw per call, so a simulated person varies."""
        if self.temperature == 0:
            return 0
        self._draws += 1
        return self._draws

    def predict_batch(self, items: list[Any], *, on_batch: Any = None) -> list[Prediction]:
        """The predictions of ``items``, in their order. ``on_batch(indices, predictions)`` is
        called as each batch of a local model finishes (an eval saves them as they come).
        Inside a running event loop, ``await apredict_batch(items)`` instead."""
        if self.spec.kind == "api":
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self._api_batch(items))
            raise RationaleError("predict_batch was called inside a running event loop: "
                                 "use `await predictor.apredict_batch(items)` there")  # fmt: skip
        draw = self._draw()
        gen = self.generator
        prompts = [gen.render(self.messages(item)) for item in items]
        out: list[Prediction | None] = [None] * len(items)

        def done(indices: list[int], outputs: list[Any]) -> None:
            preds = [self.read(o.text, prompt_tokens=o.prompt_tokens,
                               completion_tokens=o.completion_tokens, cost_usd=0.0, stop=o.stop)
                     for o in outputs]  # fmt: skip
            for i, p in zip(indices, preds, strict=True):
                out[i] = p
            if on_batch is not None:
                on_batch(indices, preds)

        gen.generate(
            prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            seed=self.seed + draw, batch_size=self.batch_size, on_batch=done,
        )  # fmt: skip
        return [p for p in out if p is not None]

    async def apredict_batch(self, items: list[Any]) -> list[Prediction]:
        """`predict_batch` for callers in an event loop (a local model generates in a thread)."""
        if self.spec.kind == "api":
            return await self._api_batch(items)
        return await asyncio.to_thread(self.predict_batch, items)

    # -- API models ---------------------------------------------------------------------------

    def cache_key(self, messages: list[dict[str, str]], draw: int = 0) -> str:
        from rationale.cache import cache_key
        from rationale.identity import answered_by

        params = {"temperature": self.temperature, "max_tokens": self.max_new_tokens,
                  "seed": self.seed + draw, "answer": "raw"}  # fmt: skip
        return cache_key(model=answered_by(self.client), messages=messages, params=params,
                         sample=draw, template_version=self.prompt.template.version)  # fmt: skip

    async def ask(
        self, engine: Any, limited: Any, messages: list[dict[str, str]], draw: int = 0
    ) -> Prediction:
        """One API prediction through ``engine`` (raises `rationale.engine.Pending` when the
        run is stopping); a request that failed after its retries is ``status="failed"``."""
        from rationale.completion import RawText
        from rationale.teacher import describe_error

        try:
            completion, cached = await engine.call(
                limited, messages, key=self.cache_key(messages, draw), assistant_prefix=None,
                temperature=self.temperature, max_tokens=self.max_new_tokens,
                seed=self.seed + draw, response_model=RawText,
            )  # fmt: skip
        except TeacherError as exc:
            error = describe_error(exc)
            return Prediction(None, None, "failed", f"{error['category']}: {error['message']}")
        return self.read(
            str(completion.data.get("text", "")), prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=None if cached else completion.cost_usd, cached=cached,
        )  # fmt: skip

    async def _api_batch(self, items: list[Any]) -> list[Prediction]:
        from rationale.engine import Engine

        engine = Engine(self.options, _NoLedger())
        limited = engine.limited(self.client, "predict")
        out: dict[int, Prediction] = {}

        async def process(i: int) -> bool:
            out[i] = await self.ask(engine, limited, self.messages(items[i]), self._draw())
            return True

        try:
            await engine.drive(iter(range(len(items))), process, todo=len(items), label="predict",
                               unit="cases", progress=False)  # fmt: skip
        finally:
            await self.client.aclose()
        if engine.error is not None:
            raise engine.error
        if engine.fatal is not None:
            raise RationaleError(f"{self.spec.name}: {engine.fatal}")
        return [out[i] for i in range(len(items))]


@dataclass
class _NoLedger:
    """Where a library call's request costs go: kept in memory (`entries`), not in a file."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def charge(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)

    def flush(self) -> None:
        return None


def _choose_engine(requested: str) -> tuple[str, str]:
    """hf or vllm, and why (vllm only with CUDA and vllm installed; never imported otherwise)."""
    from rationale.vllm_engine import vllm_available

    if requested == "hf":
        return "hf", "requested"
    ok, why = vllm_available()
    if requested == "vllm":
        if not ok:
            raise RationaleError(f"--engine vllm: {why}; use --engine hf (or auto)")
        return "vllm", "requested"
    return ("vllm", "CUDA and vllm available") if ok else ("hf", why)
