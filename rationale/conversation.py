"""A student's chat, turn by turn: one definition that training and evaluation both call.

``distill.data.SFTData.conversation`` builds the chats a student is trained on and
`rationale.prompt_format.PromptFormat.messages` the prompts it is evaluated with; both render
through `TurnRenderer`, so a student is prompted exactly as it was trained.

In session mode a whole session is one chat: the system text once (the first shown step's),
then per step a user turn (that step's page and task, rendered with no history: the earlier
turns are the history) and an assistant turn with that step's answer, ``{"rationale",
"action"}`` where the step has a rationale and the student gives rationales, ``{"action"}``
otherwise. The step being predicted is a user turn with no answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from rationale.schema import ActionSpace
from rationale.sessions import Step

__all__ = ["Turn", "TurnRenderer", "session_chat"]

Message = dict[str, str]


@dataclass(frozen=True)
class Turn:
    """One step of a session chat: its system messages (shown once, by the chat's first turn),
    its user message, its assistant message (None for the step being predicted), and how many
    context tokens its page lost to the budget."""

    head: list[Message]
    user: Message
    reply: Message | None
    cut_tokens: int = 0


@dataclass(frozen=True)
class TurnRenderer:
    """How one student renders a step: its template, action space and answer format."""

    template: Any  # rationale.prompts.PromptTemplate
    space: ActionSpace
    with_rationale: bool = True

    def step_messages(
        self, step: Step, *, max_context_tokens: int | None
    ) -> tuple[list[Message], int]:
        """The system (if any) and user messages of ``step`` with its history as given,
        rendered blind, and the context tokens cut to fit ``max_context_tokens``."""
        from rationale.prompts import render_step

        prompt, cut = render_step(
            self.template, step, max_context_tokens=max_context_tokens, with_action=False,
            action_space=self.space, extra={"with_rationale": self.with_rationale},
        )  # fmt: skip
        return prompt.messages, cut.cut_tokens

    def answer(self, action: dict[str, Any], rationale: str | None) -> dict[str, Any]:
        """A step's answer object: with its rationale for a rationale student and a step that
        has one, the action alone otherwise (an action-only student, a step without one)."""
        if self.with_rationale and rationale:
            return {"rationale": rationale, "action": action}
        return {"action": action}

    def turn(
        self, step: Step, answer: dict[str, Any] | None, *, max_context_tokens: int | None
    ) -> Turn:
        """The session-chat turn of ``step`` (its history left out); ``answer`` None: the step
        being predicted, with no assistant message."""
        messages, cut = self.step_messages(
            replace(step, history=()), max_context_tokens=max_context_tokens
        )
        reply = None
        if answer is not None:
            reply = {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)}
        return Turn(messages[:-1], messages[-1], reply, cut)


def session_chat(turns: Sequence[Turn]) -> list[Message]:
    """The chat of ``turns``: the first turn's system messages, then each user and assistant
    message in order. Dropping leading turns (a budget) is slicing ``turns``."""
    chat = list(turns[0].head) if turns else []
    for turn in turns:
        chat.append(turn.user)
        if turn.reply is not None:
            chat.append(turn.reply)
    return chat
