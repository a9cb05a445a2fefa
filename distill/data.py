"""SFT data: accepted rationales become (prompt, completion) examples for a student.

One example per accepted step. The prompt is the blind ``student`` template (system text, the
step's context cut to ``max_context_tokens`` without looking at the action, and the history as
`rationale.sessions.build_history` defines it); the completion is the paper's JSON,
``{"rationale": ..., "action": {...}}``, or ``{"action": {...}}`` for the action-only ablation
(``no_rationale``), built on exactly the same steps. Which steps have an accepted rationale is
read from the run folder or JSONL file by `distill.sources`.

Deviation from the paper, stated: the paper showed the student every earlier *context* of the
session (40k-token windows on 64 GPUs); here the prompt holds the current context and the earlier
*actions* (and, with ``history_rationales``, their rationales), to fit one GPU.

With ``session_mode`` a whole session is one multi-turn chat, as the paper did: a user turn per
step (its context) and an assistant turn per step (its answer); only the turns of accepted steps
are trained, the others are there as history. The turns are rendered by
`rationale.conversation`, which evaluation calls too, so a student is prompted as it was trained.
The loss mask is built here, turn by turn, since chat templates such as SmolLM2's have no
``{% generation %}`` markers.

Examples longer than ``max_seq_length`` student tokens lose their oldest history first (whole
turns in session mode), then more of their context; what was cut is counted and reported. Nothing
is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.sources import read_accepted

STUDENT_TEMPLATE = "student"


@dataclass
class SFTStats:
    """What building the data did."""

    steps: int = 0  # steps that became examples (or trained turns in session mode)
    examples: int = 0
    sessions: int = 0
    skipped_not_accepted: int = 0
    history_entries_dropped: int = 0
    examples_with_history_dropped: int = 0
    context_tokens_cut: int = 0  # by max_context_tokens, on the cl100k ruler
    examples_context_shrunk: int = 0  # cut further to fit max_seq_length
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class SFTExample:
    """One training example: a step (or a session) and how to render it."""

    session_id: str
    steps: list[Any]  # rationale.sessions.Step, in order
    answers: list[dict[str, Any] | None]  # the completion object per step; None = not trained
    drop: int = 0  # oldest history entries (single) or turns (session) left out
    context_budget: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class SFTData:
    """Accepted rationales of a run folder or a JSONL file, as student examples."""

    def __init__(
        self,
        data: str | Path,
        *,
        no_rationale: bool = False,
        session_mode: bool = False,
        max_context_tokens: int | None = 4000,
        history_rationales: bool = False,
        action_space: str | None = None,
        on_error: str = "fail",
    ) -> None:
        from rationale.prompts import load_template
        from rationale.schema import ActionSpace

        self.data = Path(data)
        self.no_rationale = no_rationale
        self.session_mode = session_mode
        self.max_context_tokens = max_context_tokens
        self.history_rationales = history_rationales
        self.on_error = on_error  # skip: bad lines are left out and listed in `skipped`
        self.skipped: list[str] = []
        self.template = load_template(STUDENT_TEMPLATE)
        self.stats = SFTStats()
        source = read_accepted(
            self.data, on_error=on_error, skipped=self.skipped, action_space=action_space
        )
        self.rationales = source.rationales
        self.history_source = source.history_source
        self.input_on_error = source.input_on_error  # the run's own choice for its input wins
        # Where the accepted rationales came from, for `caveats`: local teachers' names, and the
        # keys of rationales that no blind verifier checked.
        self.local_teachers = source.local_teachers
        self.unverified = source.unverified
        # a run folder's own declaration (None: the default space); a JSONL file's is the one given
        space_file = source.action_space
        self.space = ActionSpace.from_file(space_file) if space_file else ActionSpace.default()

    def caveats(self) -> list[str]:
        """What to say about the rationales' origin, on stderr and in the model card: a local
        teacher wrote them, or no blind verifier checked them. Empty when neither is known."""
        out = []
        if self.local_teachers:
            out.append(
                f"the rationales in {self.data} come from the offline local teacher "
                f"({', '.join(sorted(self.local_teachers))}), which is meant for trying the "
                "pipeline, not for training a useful student"
            )
        unverified = len(self.unverified & self.rationales.keys())
        if unverified:
            out.append(
                f"{unverified} of {len(self.rationales)} rationales in {self.data} were not "
                "checked by the blind verifier (the consistency filter was off), so some may not "
                "explain the action they precede"
            )
        return out

    def check(self) -> int:
        """The number of examples, counted without a tokenizer, so a run with nothing to train
        fails before any model is loaded; `DistillError` when there are none."""
        # Counting must not add to the stats or the skipped lines that tokenizing reports.
        stats, skipped, self.stats = self.stats, list(self.skipped), SFTStats()
        try:
            count = sum(1 for _ in self.examples())
        finally:
            self.stats, self.skipped = stats, skipped
        if not count:
            raise DistillError(
                f"{self.data}: no step with an accepted rationale to train on "
                "(run rationale synth, or check the run's accepted.jsonl)"
            )
        return count

    def answer(self, step: Any) -> dict[str, Any] | None:
        """The completion object of a step, or None if it has no accepted rationale."""
        key = (step.record.session_id, step.record.step)
        rationale = self.rationales.get(key)
        if rationale is None:
            return None
        return self.turns.answer(step.record.action.model_dump(), rationale)

    def examples(self) -> Iterator[SFTExample]:
        """Every example, in session order."""
        from rationale.records import RecordFile
        from rationale.sessions import fill_rationales, iter_steps

        with RecordFile(
            self.history_source,
            space=self.space,
            on_error=self.input_on_error,  # type: ignore[arg-type]
        ) as records:
            self.skipped += [str(e) for e in records.errors]
            for session in records.sessions():
                steps = list(iter_steps(session, with_rationales=self.history_rationales))
                if self.history_rationales:  # earlier steps' accepted synthesized rationales
                    steps = [fill_rationales(s, self.rationales) for s in steps]
                answers = [self.answer(s) for s in steps]
                trained = sum(a is not None for a in answers)
                self.stats.skipped_not_accepted += len(steps) - trained
                if not trained:
                    continue
                self.stats.sessions += 1
                if self.session_mode:
                    self.stats.steps += trained
                    yield SFTExample(steps[0].record.session_id, steps, answers,
                                     context_budget=self.max_context_tokens)  # fmt: skip
                    continue
                for step, answer in zip(steps, answers, strict=True):
                    if answer is not None:
                        self.stats.steps += 1
                        yield SFTExample(step.record.session_id, [step], [answer],
                                         context_budget=self.max_context_tokens)  # fmt: skip

    # -- rendering ----------------------------------------------------------------------------

    @property
    def turns(self) -> Any:
        """How this student's steps render (`rationale.conversation.TurnRenderer`), shared with
        evaluation so a student is prompted exactly as it was trained."""
        from rationale.conversation import TurnRenderer

        return TurnRenderer(self.template, self.space, with_rationale=not self.no_rationale)

    def _user(
        self, step: Any, *, drop: int, budget: int | None
    ) -> tuple[list[dict[str, str]], int]:
        """The system + user messages of one step with its ``drop`` oldest history entries left
        out, and the context tokens cut."""
        from dataclasses import replace

        step = replace(step, history=step.history[drop:]) if drop else step
        return self.turns.step_messages(step, max_context_tokens=budget)

    def conversation(self, ex: SFTExample) -> tuple[list[dict[str, str]], list[bool]]:
        """The chat of an example and, per message, whether it is a trained assistant turn."""
        if not self.session_mode:
            messages, cut = self._user(ex.steps[0], drop=ex.drop, budget=ex.context_budget)
            ex.meta["context_cut_tokens"] = cut
            answer = json.dumps(ex.answers[0], ensure_ascii=False)
            return [*messages, {"role": "assistant", "content": answer}], [False] * len(
                messages
            ) + [True]
        # Session mode (`rationale.conversation`): the system text once, then a user turn (that
        # step's context, no history: the earlier turns are the history) and an assistant turn
        # per step; a step with no accepted rationale answers with its action, untrained.
        from rationale.conversation import session_chat

        render = self.turns
        steps = list(zip(ex.steps, ex.answers, strict=True))[ex.drop :]
        turns = []
        for step, answer in steps:
            if answer is None:  # shown as history, untrained
                answer = render.answer(step.record.action.model_dump(), None)
            turns.append(render.turn(step, answer, max_context_tokens=ex.context_budget))
        ex.meta["context_cut_tokens"] = sum(t.cut_tokens for t in turns)
        trained = [False] * len(turns[0].head) if turns else []
        for _, answer in steps:
            trained += [False, answer is not None]
        return session_chat(turns), trained

    def trl_row(self, ex: SFTExample) -> dict[str, Any]:
        """The example in TRL's conversational format (prompt-completion, or messages)."""
        chat, trained = self.conversation(ex)
        if self.session_mode:
            return {"messages": chat, "trained_turns": [i for i, t in enumerate(trained) if t]}
        return {"prompt": chat[:-1], "completion": chat[-1:]}

    # -- tokenizing ---------------------------------------------------------------------------

    def tokenize(
        self, tokenizer: Any, max_seq_length: int
    ) -> tuple[list[dict[str, Any]], SFTStats]:
        """Every example as ``input_ids`` and ``completion_mask`` (1 on trained tokens), fitted
        into ``max_seq_length``: oldest history first, then the context, never silently."""
        rows = []
        for ex in self.examples():
            ids, mask = self._ids(ex, tokenizer)
            # the cut by max_context_tokens alone, before any fitting to max_seq_length
            self.stats.context_tokens_cut += ex.meta["context_cut_tokens"]
            shrunk = False
            history = len(ex.steps) if self.session_mode else len(ex.steps[0].history)
            while len(ids) > max_seq_length:
                if ex.drop < history - (1 if self.session_mode else 0):
                    ex.drop += 1
                else:
                    budget = ex.context_budget or self._context_len(ex)
                    if budget <= 64:
                        raise DistillError(
                            f"session {ex.session_id!r}: one step is longer than max_seq_length="
                            f"{max_seq_length} even with no history and a 64-token context; "
                            "raise --max-seq-length"
                        )
                    ex.context_budget = max(64, int(budget * 0.75))
                    shrunk = True
                ids, mask = self._ids(ex, tokenizer)
            if ex.drop:
                self.stats.examples_with_history_dropped += 1
                self.stats.history_entries_dropped += ex.drop
            self.stats.examples_context_shrunk += shrunk
            self.stats.examples += 1
            self.stats.prompt_tokens += len(mask) - sum(mask)
            self.stats.completion_tokens += sum(mask)
            rows.append({"input_ids": ids, "completion_mask": mask})
        return rows, self.stats

    def _context_len(self, ex: SFTExample) -> int:
        from rationale.prompts import count_tokens

        return max(count_tokens(s.record.context or "") for s in ex.steps)

    def _ids(self, ex: SFTExample, tokenizer: Any) -> tuple[list[int], list[int]]:
        """Token ids of the chat and the mask of its trained assistant turns."""
        chat, trained = self.conversation(ex)
        ids: list[int] = []
        mask: list[int] = []
        for i, is_trained in enumerate(trained):
            if chat[i]["role"] != "assistant":
                continue
            before = _encode(tokenizer, chat[:i], generation_prompt=True)
            through = _encode(tokenizer, chat[: i + 1], generation_prompt=False)
            if through[: len(before)] != before or len(before) < len(ids):
                raise DistillError(
                    "the student's chat template does not render a conversation as a prefix of "
                    "its continuation, so the loss mask cannot be built; use another base model "
                    "or give the tokenizer a plain chat template"
                )
            mask += [0] * (len(before) - len(ids)) + [int(is_trained)] * (
                len(through) - len(before)
            )
            ids = through
        return ids, mask


def _encode(tokenizer: Any, chat: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        chat, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    if hasattr(out, "input_ids"):  # some tokenizers return a BatchEncoding
        out = out["input_ids"]
    return list(out)


def prompt_format(data: SFTData, tokenizer: Any) -> dict[str, Any]:
    """The exact prompt format of the student, saved with it so evaluation prompts it the same
    way: the template (name, version, sources), the chat template, the options that shape it."""
    return {
        "template": data.template.name,
        "template_version": data.template.version,
        "template_sources": {
            Path(f).name: Path(f).read_text(encoding="utf-8") for f in data.template.files
        },
        "chat_template": getattr(tokenizer, "chat_template", None),
        "no_rationale": data.no_rationale,
        "session_mode": data.session_mode,
        "history_rationales": data.history_rationales,
        "max_context_tokens": data.max_context_tokens,
        "action_space": data.space.declaration(),
    }
