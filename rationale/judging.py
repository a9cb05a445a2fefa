"""Judging a candidate rationale: the template's cheap rules, then the blind verifier.

The teacher is told the true action, so "does the rationale agree with its action" filters
nothing. The verifier is not: it reads the context, the history and the rationale, predicts the
action, and the candidate is kept only when that prediction equals the true action under
`ActionSpace.equal`. Its prompt is rendered without the action (``with_action=False``).

Also here: the record a list of candidates ends in (`outcome`), and the messages that ask the
teacher to regenerate a rejected rationale with feedback (`regeneration`).
"""

from __future__ import annotations

import json
from typing import Any

from rationale.engine import Engine, Limited
from rationale.errors import TeacherError
from rationale.schema import Candidate, SynthError, SynthRecord, Verification


def _type_of(action: Any) -> str:
    return str(action.get("type")) if isinstance(action, dict) else "invalid"


class Judge:
    """Rules, then (when they pass and a verifier is set) the blind verifier."""

    def __init__(
        self,
        config: Any,
        engine: Engine,
        *,
        space: Any,
        teacher_template: Any,
        verifier: Limited | None,
        verifier_template: Any,
    ) -> None:
        from rationale.rules import template_examples, template_rules

        self.config, self.engine, self.space = config, engine, space
        self.rules = template_rules(teacher_template)
        self.examples = template_examples(teacher_template)
        self.verifier = verifier
        self.verifier_template = verifier_template

    def identity(self) -> dict[str, Any]:
        """What decides a verdict besides the models: the rules and their thresholds (part of
        a run folder's identity, so a resume never mixes verdicts of two rule sets)."""
        import hashlib

        thresholds = self.config.rules.model_dump_json().encode()
        return {
            "rules": list(self.rules),
            "rules_config": hashlib.sha256(thresholds).hexdigest()[:16],
        }

    async def judge(
        self, step: Any, rationale: str | None, sample: int, round_: int, prov: Any
    ) -> Candidate:
        """One candidate's verdict (a verifier fault makes it ``failed``)."""
        from rationale.rules import check_rules
        from rationale.teacher import describe_error

        tally = self.engine.tally
        truth = step.record.action.model_dump()
        reasons = check_rules(
            rationale, truth, self.rules, self.config.rules, examples=self.examples
        )
        base = {"rationale": rationale or None, "sample": sample, "round": round_,
                "provenance": prov}  # fmt: skip
        if reasons:
            tally.rule_rejections.update(r.split(":")[0] for r in reasons)
            return Candidate(state="rejected", reasons=reasons, **base)
        if self.verifier is None:
            return Candidate(state="accepted", **base)
        try:
            verification = await self.verify(step, rationale or "")
        except TeacherError as exc:
            return Candidate(state="failed", error=SynthError(**describe_error(exc)), **base)
        if verification.match:
            return Candidate(state="accepted", verification=verification, **base)
        tally.rule_rejections["verifier"] += 1
        return Candidate(
            state="rejected", reasons=["verifier: predicted another action"],
            verification=verification, **base,
        )  # fmt: skip

    async def verify(self, step: Any, rationale: str) -> Verification:
        """Ask the verifier, which never sees the action, to predict it from the rationale."""
        from rationale.cache import cache_key
        from rationale.identity import answered_by
        from rationale.prompts import render_step

        assert self.verifier is not None
        config = self.config
        prompt, _ = render_step(
            self.verifier_template, step,
            max_context_tokens=config.max_context_tokens, with_action=False,
            action_space=self.space, extra={"rationale": rationale},
        )  # fmt: skip
        params = {"temperature": 0.0, "max_tokens": config.verify_max_tokens,
                  "seed": config.seed, "response": "action"}  # fmt: skip
        key = cache_key(
            model=answered_by(self.verifier),
            messages=prompt.messages,
            params=params,
            sample=0,
            template_version=self.verifier_template.version,
        )
        completion, cached = await self.engine.call(
            self.verifier, prompt.messages, key=key, assistant_prefix=None,
            temperature=0.0, max_tokens=config.verify_max_tokens, seed=config.seed,
            response_model=self.space.action_only_model,
        )  # fmt: skip
        prediction = completion.data.get("action")
        match = self.space.equal(prediction, step.record.action)
        self.engine.tally.confusion[(step.record.action.type, _type_of(prediction), match)] += 1
        return Verification(
            model=self.verifier.model_id,
            prediction=prediction,
            match=match,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=completion.cost_usd,
            attempts=completion.attempts,
            cached=cached,
        )


def regeneration(
    messages: list[dict[str, str]], last: Candidate, record: Any
) -> list[dict[str, str]]:
    """The teacher's conversation extended with its rejected answer and why it was rejected."""
    from rationale.rules import feedback_message

    prediction = last.verification.prediction if last.verification else None
    return [
        *messages,
        {"role": "assistant", "content": json.dumps({"rationale": last.rationale})},
        {"role": "user", "content": feedback_message(
            last.rationale, last.reasons, prediction, record.action.model_dump()
        )},
    ]  # fmt: skip


def outcome(record: Any, candidates: list[Candidate], cut_tokens: int) -> SynthRecord:
    """A record's line from its candidates: accepted if any is, failed if the last failed.
    Every candidate stays on the line, so nothing paid for is lost."""
    accepted = [c for c in candidates if c.state == "accepted"]
    last = candidates[-1]
    verified = [c for c in candidates if c.verification is not None]
    chosen = accepted[0] if accepted else last
    if accepted:
        state: str = "accepted"
    elif last.state == "failed":
        state = "failed"
    else:
        state = "rejected"
    reasons: list[str] = []
    for c in candidates:
        reasons += [r for r in c.reasons if r not in reasons]
    return SynthRecord(
        state=state,  # type: ignore[arg-type]
        record=record if isinstance(record, dict) else record.dump(),
        rationale=chosen.rationale if accepted else None,
        reasons=[] if accepted else reasons,
        error=last.error if state == "failed" else None,
        provenance=chosen.provenance,
        prediction=verified[-1].verification.prediction if verified else None,  # type: ignore[union-attr]
        candidates=candidates,
        context_cut_tokens=cut_tokens,
    )
