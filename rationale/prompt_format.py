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
that chat up to its step, built by the code that built the training chat
(`rationale.conversation`): a user turn per earlier step with that step's page, and an
assistant turn with its true action (teacher forcing) and, for a rationale student, the
rationale the test record carries, as training showed the accepted one (``{"action"}`` alone
where there is none, as training did for a step without one). Oldest whole steps are dropped
first to fit the budget, as training drops them. What still differs from training, stated:
training fits the whole session into ``max_seq_length`` student tokens (a long session loses
its leading steps for every turn, and then context), while eval fits each case's chat up to
its step, counted on the cl100k ruler (+4 per message), so eval may keep earlier turns that
training dropped; and a test file without rationales gives a rationale student earlier turns
without them (`PromptFormat.history_note` says so).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rationale.conversation import TurnRenderer, session_chat
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
    student: bool = False  # read from a distill output folder (`from_student`)

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
            student=True,
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

    @property
    def turns(self) -> TurnRenderer:
        """How the steps render: the code the student's training chats were built with."""
        return TurnRenderer(self.template, self.space, with_rationale=self.with_rationale)

    def messages(self, step: Step, earlier: tuple[ActionRecord, ...] = ()) -> list[dict[str, str]]:
        """The chat for predicting ``step`` (``earlier``: the session's earlier records, used in
        session mode). Rendered blind: the step's action never reaches it."""
        render, budget = self.turns, self.max_context_tokens
        if not self.session_mode:
            return render.step_messages(step, max_context_tokens=budget)[0]
        # an earlier step answers as in training: with the rationale its record (or its history
        # entry) carries, for a rationale student; with its action alone otherwise
        known = {e.step: e.rationale for e in step.history if e.rationale}
        turns = []
        for r in earlier:
            answer = render.answer(r.action.model_dump(), r.rationale or known.get(r.step))
            turns.append(render.turn(Step(r, ()), answer, max_context_tokens=budget))
        turns.append(render.turn(step, None, max_context_tokens=budget))
        drop = 0  # whole leading steps, as training drops them (`SFTData.tokenize`)
        while drop < len(turns) - 1 and self._too_long(session_chat(turns[drop:])):
            drop += 1
        return session_chat(turns[drop:])

    def _too_long(self, chat: list[dict[str, str]]) -> bool:
        from rationale.prompts import count_tokens

        if self.max_prompt_tokens is None:
            return False
        return sum(count_tokens(m["content"]) + 4 for m in chat) > self.max_prompt_tokens

    def history_note(self, cases: Sequence[Any]) -> str | None:
        """One line for stderr when a student that saw rationales in its history (``--history-
        rationales``, or a session-mode rationale student's earlier turns) is evaluated on
        ``cases`` (`rationale.eval_cases.EvalCase`) whose history holds none; else None."""
        if not self.student:
            return None
        if self.session_mode:
            if not self.with_rationale:
                return None
            how = "session mode: earlier turns with the accepted rationales"
        elif self.history_rationales:
            how = "--history-rationales"
        else:
            return None
        seen = False  # a case with history (a first step has none)
        for case in cases:
            for earlier in (*case.earlier, *case.step.history):
                if earlier.rationale:
                    return None
                seen = True
        if not seen:
            return None
        return (f"note: the student was trained with rationales in its history ({how}); this "
                "file's history has none, so earlier turns carry actions only")  # fmt: skip
