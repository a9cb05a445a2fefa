"""The consistency filter: cheap rules first, then a verifier that never sees the action.

The teacher is told the true action, so "does the rationale agree with its action" filters
nothing. The test that matters hides the action: a verifier model reads the context (cut
without looking at the action), the history and the candidate rationale, and predicts the
action; the rationale is kept only if that prediction equals the true action under
`ActionSpace.equal`, the one definition of action equality.

Cheap rules run before any verifier call and each can reject on its own. Which rules apply is
declared by the teacher template (a ``{# rules: ... #}`` comment at its top; `template_rules`);
their thresholds live in `RulesConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rationale.errors import ConfigError

#: Rules used when a template declares none (first person is a property of the persona the
#: template asks for, so only templates that ask for it declare it).
DEFAULT_RULES = ("empty", "too_short", "too_long", "hindsight", "pasted_action")

DEFAULT_HINDSIGHT = (
    r"\bthe (user|shopper|customer|person|human|annotator)\b",
    r"\b(given|true|correct|recorded|actual|above) action\b",
    r"\bas instructed\b",
    r"\bthe (task|instruction) (says|said|tells|told)\b",
    r"\b(he|she|they) (clicked|typed|selected|chose|decided)\b",
    r"\bwas (clicked|typed|selected)\b",
)
FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'll|i'd|me|my|mine|we|we're|our|us)\b", re.IGNORECASE)
_WORD = re.compile(r"[\w'’-]+")


class RulesConfig(BaseModel):
    """Thresholds of the cheap rules (``[rules]`` in a ``--config`` file)."""

    model_config = ConfigDict(extra="forbid")

    min_words: int = Field(4, ge=0, description="too_short: fewer words than this")
    max_words: int = Field(60, ge=1, description="too_long: more words than this")
    hindsight_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_HINDSIGHT),
        description="hindsight: regexes (case-insensitive) of meta-language",
    )
    pasted_action_share: float = Field(
        0.6, gt=0, le=1,
        description="pasted_action: reject when the target name or action JSON makes up at least "
        "this share of the rationale's characters",
    )  # fmt: skip


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _empty(rationale: str, action: Mapping[str, Any], cfg: RulesConfig) -> str | None:
    return "empty: no rationale" if not rationale.strip() else None


def _too_short(rationale: str, action: Mapping[str, Any], cfg: RulesConfig) -> str | None:
    n = len(_words(rationale))
    return f"too_short: {n} words < {cfg.min_words}" if 0 < n < cfg.min_words else None


def _too_long(rationale: str, action: Mapping[str, Any], cfg: RulesConfig) -> str | None:
    n = len(_words(rationale))
    return f"too_long: {n} words > {cfg.max_words}" if n > cfg.max_words else None


def _first_person(rationale: str, action: Mapping[str, Any], cfg: RulesConfig) -> str | None:
    if rationale.strip() and not FIRST_PERSON.search(rationale):
        return "first_person: no I, me, my or we"
    return None


def _hindsight(rationale: str, action: Mapping[str, Any], cfg: RulesConfig) -> str | None:
    for pattern in cfg.hindsight_patterns:
        if m := re.search(pattern, rationale, re.IGNORECASE):
            return f"hindsight: {m.group(0)!r}"
    return None


def _pasted_action(rationale: str, action: Mapping[str, Any], cfg: RulesConfig) -> str | None:
    text = rationale.strip().strip("\"'`.")
    if not text:
        return None
    if text.startswith("{") and '"type"' in text:
        return "pasted_action: the rationale is action JSON"
    name = str(action.get("name") or "")
    if name and len(name) >= cfg.pasted_action_share * len(text) and name.lower() in text.lower():
        return f"pasted_action: the rationale is the target name {name!r}"
    return None


RULES: dict[str, Callable[[str, Mapping[str, Any], RulesConfig], str | None]] = {
    "empty": _empty,
    "too_short": _too_short,
    "too_long": _too_long,
    "first_person": _first_person,
    "hindsight": _hindsight,
    "pasted_action": _pasted_action,
}


def check_rules(
    rationale: str | None,
    action: Mapping[str, Any],
    rules: tuple[str, ...] = DEFAULT_RULES,
    config: RulesConfig | None = None,
) -> list[str]:
    """The reasons the named rules reject ``rationale`` (empty when it passes them all)."""
    config = config or RulesConfig()
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ConfigError(f"unknown rule(s) {', '.join(unknown)}; the rules are {', '.join(RULES)}")
    text = rationale or ""
    if "empty" in rules and (reason := _empty(text, action, config)):
        return [reason]  # nothing else can be said of an empty rationale
    return [r for name in rules if name != "empty" and (r := RULES[name](text, action, config))]


def template_rules(template: Any) -> tuple[str, ...]:
    """The rules a teacher template declares (``rules: ...`` in its first comment), checked, or
    `DEFAULT_RULES` when it declares none."""
    names = template.declared_rules
    if names is None:
        return DEFAULT_RULES
    if unknown := [n for n in names if n not in RULES]:
        raise ConfigError(
            f"template {template.name!r} declares unknown rule(s) {', '.join(unknown)}; "
            f"the rules are {', '.join(RULES)}"
        )
    return names


def feedback_message(
    rationale: str | None,
    reasons: list[str],
    predicted: Mapping[str, Any] | None,
    truth: Mapping[str, Any],
) -> str:
    """What the teacher is told when its rationale was rejected, to write a better one."""
    from rationale.prompts import format_action

    done = format_action(truth)
    if predicted is not None:
        return (
            f"A reader who saw the same page, the earlier actions and your rationale, but not the "
            f"action, predicted {format_action(predicted)}; the person actually did {done}. Look "
            f"again: what on the page or in the earlier actions made them choose {done} rather "
            "than something else? Write a new rationale, one short first-person sentence, that "
            'leads to exactly that action. Answer with one JSON object: {"rationale": "..."}'
        )
    why = "; ".join(reasons) or "it was rejected"
    return (
        f"That rationale was rejected ({why}). Write a new one for the same action ({done}): one "
        "short first-person sentence, in the moment, without naming the element's identifier. "
        'Answer with one JSON object: {"rationale": "..."}'
    )
