"""How a model is prompted to predict a step: a student exactly as it was trained, a baseline
with the ``predict`` template.

A student is prompted from the ``prompt_format.json`` that ``rationale distill`` saved with it:
the template's own sources (written to ``$RATIONALE_HOME/prompt_formats/<version>/`` and loaded
from there, so a later edit of the shipped template cannot change what the student sees; the
version is checked), rationale or action-only, history rationales, the context budget, the
action space, session mode and the chat template. A prompt-only model gets the blind
``predict`` template (or ``--template``). Every prompt is rendered blind (``with_action=False``):
neither the true action nor ``meta`` can reach it.

In session mode (the student was trained on whole sessions as one chat) a case is prompted as
that chat up to its step: a user turn per earlier step with that step's page and an assistant
turn with its true action (teacher forcing), oldest turns dropped first to fit the budget.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rationale.errors import RationaleError
from rationale.schema import ActionRecord, ActionSpace
from rationale.sessions import Step

__all__ = ["BASELINE_TEMPLATE", "PromptFormat"]

BASELINE_TEMPLATE = "predict"


@dataclass(frozen=True)
class PromptFormat:
    """Everything that decides a model's prompt for a step, and `messages` to build it."""

    template: Any  # rationale.prompts.PromptTemplate
    space: ActionSpace
    with_rationale: bool = True
    history_rationales: bool = False
    max_context_tokens: int | None = 4000
    session_mode: bool = False
    chat_template: str | None = None
    max_prompt_tokens: int | None = None  # session mode: the chat's budget (cl100k tokens)

    @classmethod
    def baseline(
        cls,
        *,
        template: str | None = None,
        space: ActionSpace | None = None,
        max_context_tokens: int | None = 6000,
        history_rationales: bool = False,
    ) -> PromptFormat:
        """The prompt of a model that was not fine-tuned: ``predict`` unless ``template``."""
        from rationale.prompts import load_template

        return cls(
            load_template(template or BASELINE_TEMPLATE),
            space or ActionSpace.default(),
            max_context_tokens=max_context_tokens,
            history_rationales=history_rationales,
        )

    @classmethod
    def from_student(cls, folder: str | Path, *, max_seq_length: int | None = None) -> PromptFormat:
        """The prompt format saved with a ``rationale distill`` output folder."""
        from rationale.paths import state_dir
        from rationale.prompts import load_template

        path = Path(folder) / "prompt_format.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RationaleError(f"{folder}: no prompt_format.json, so this is not a rationale "
                                 "distill output folder") from None  # fmt: skip
        except ValueError as exc:
            raise RationaleError(f"{path}: not JSON ({exc})") from None
        try:
            name, version = saved["template"], saved["template_version"]
            sources: dict[str, str] = saved["template_sources"]
            space = ActionSpace.from_declaration(saved["action_space"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RationaleError(f"{path}: missing or bad field {exc}") from None
        bad = [f for f in sources if Path(f).name != f or not f.endswith(".jinja")]
        if bad:
            raise RationaleError(f"{path}: template source name {bad[0]!r} is not a .jinja file")
        where = state_dir() / "prompt_formats" / str(version)
        where.mkdir(parents=True, exist_ok=True)
        for file, text in sources.items():  # atomic: evals started together share the folder
            tmp = where / f".{file}.{os.getpid()}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, where / file)
        template = load_template(where / f"{name}.jinja")
        if template.version != version:
            raise RationaleError(
                f"{path}: the saved template sources give version {template.version}, not the "
                f"{version} the student was trained with; the file was edited or is incomplete"
            )
        session = bool(saved.get("session_mode"))
        return cls(
            template,
            space,
            with_rationale=not saved.get("no_rationale", False),
            history_rationales=bool(saved.get("history_rationales")),
            max_context_tokens=saved.get("max_context_tokens"),
            session_mode=session,
            chat_template=saved.get("chat_template"),
            max_prompt_tokens=max_seq_length if session else None,
        )

    def describe(self) -> dict[str, Any]:
        """The prompt's facts for eval.json."""
        return {
            "template": self.template.name,
            "version": self.template.version,
            "with_rationale": self.with_rationale,
            "history_rationales": self.history_rationales,
            "max_context_tokens": self.max_context_tokens,
            "session_mode": self.session_mode,
            "chat_template": self.chat_template is not None,
        }

    def _render(self, step: Step) -> list[dict[str, str]]:
        from rationale.prompts import render_step

        prompt, _ = render_step(
            self.template, step, max_context_tokens=self.max_context_tokens, with_action=False,
            action_space=self.space, extra={"with_rationale": self.with_rationale},
        )  # fmt: skip
        return prompt.messages

    def messages(self, step: Step, earlier: tuple[ActionRecord, ...] = ()) -> list[dict[str, str]]:
        """The chat for predicting ``step`` (``earlier``: the session's earlier records, used in
        session mode). Rendered blind: the step's action never reaches it."""
        if not self.session_mode:
            return self._render(step)
        turns: list[list[dict[str, str]]] = []
        for record in earlier:
            user = self._render(Step(record, ()))[-1]
            answer: dict[str, Any] = {"action": record.action.model_dump()}
            if self.with_rationale and self.history_rationales and record.rationale:
                answer = {"rationale": record.rationale, **answer}
            reply = {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)}
            turns.append([user, reply])
        current = self._render(replace(step, history=()))
        head, last = current[:-1], current[-1]
        while turns and self._too_long(head, turns, last):
            turns.pop(0)
        return [*head, *(m for turn in turns for m in turn), last]

    def _too_long(
        self, head: list[dict[str, str]], turns: list[list[dict[str, str]]], last: dict[str, str]
    ) -> bool:
        from rationale.prompts import count_tokens

        if self.max_prompt_tokens is None:
            return False
        chat = [*head, *(m for turn in turns for m in turn), last]
        return sum(count_tokens(m["content"]) + 4 for m in chat) > self.max_prompt_tokens
