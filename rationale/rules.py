"""The cheap rules of the consistency filter: checks of a rationale's text that need no model.

They run before the blind verifier (`rationale.judging`), and each can reject on its own, so a
rejected candidate costs no verifier call. Which rules apply is
declared by the teacher template (a ``{# rules: ... #}`` comment at its top; `template_rules`);
their thresholds live in `RulesConfig`. Two rules catch what small teachers do: copy a sentence
of the prompt itself (`copied_example`, against the phrases `template_examples` reads from the
template's source) and say the same sentence twice (`repeated_sentence`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from difflib import SequenceMatcher
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rationale.errors import ConfigError

#: Rules used when a template declares none (first person is a property of the persona the
#: template asks for, so only templates that ask for it declare it).
DEFAULT_RULES = (
    "empty", "too_short", "too_long", "hindsight", "pasted_action", "copied_example",
    "repeated_sentence",
)  # fmt: skip

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
#: Where a sentence ends: after . ! ? followed by a space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
#: Template phrases shorter than this are not examples ("the search box" is common speech).
_MIN_EXAMPLE_WORDS = 4


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
    copied_example_similarity: float = Field(
        0.8, gt=0, le=1,
        description="copied_example: reject when the rationale or one of its sentences is at least "
        "this similar (difflib ratio over normalised words) to a phrase of the template",
    )  # fmt: skip
    repeated_sentence_similarity: float = Field(
        0.85, gt=0, le=1,
        description="repeated_sentence: reject when two sentences of the rationale are at least "
        "this similar (1: only the same sentence, ignoring case and punctuation)",
    )  # fmt: skip


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


#: What `copied_example` compares against: each phrase as normalised words, and as written.
Phrases = tuple[tuple[tuple[str, ...], str], ...]


def _normal(text: str) -> tuple[str, ...]:
    """The words of ``text``, lower case, curly apostrophes straightened, punctuation dropped."""
    return tuple(
        w.strip("'-") for w in _WORD.findall(text.lower().replace("’", "'")) if w.strip("'-")
    )


@lru_cache(maxsize=16)
def _phrase_index(ex: Phrases) -> dict[str, tuple[int, ...]]:
    """word -> the positions in ``ex`` of the phrases that hold it (built once per template)."""
    index: dict[str, list[int]] = {}
    for i, (phrase, _) in enumerate(ex):
        for word in set(phrase):
            index.setdefault(word, []).append(i)
    return {word: tuple(at) for word, at in index.items()}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _similarity(a: tuple[str, ...], b: tuple[str, ...], threshold: float) -> float:
    """difflib's ratio of two word sequences, or 0 when it cannot reach ``threshold``."""
    if a == b:
        return 1.0
    if 2 * min(len(a), len(b)) < threshold * (len(a) + len(b)):
        return 0.0  # the length difference alone keeps the ratio below the threshold
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    return matcher.ratio() if matcher.quick_ratio() >= threshold else 0.0


def _empty(rationale: str, action: Mapping[str, Any], cfg: RulesConfig, ex: Phrases) -> str | None:
    return "empty: no rationale" if not rationale.strip() else None


def _too_short(
    rationale: str, action: Mapping[str, Any], cfg: RulesConfig, ex: Phrases
) -> str | None:
    n = len(_words(rationale))
    return f"too_short: {n} words < {cfg.min_words}" if 0 < n < cfg.min_words else None


def _too_long(
    rationale: str, action: Mapping[str, Any], cfg: RulesConfig, ex: Phrases
) -> str | None:
    n = len(_words(rationale))
    return f"too_long: {n} words > {cfg.max_words}" if n > cfg.max_words else None


def _first_person(
    rationale: str, action: Mapping[str, Any], cfg: RulesConfig, ex: Phrases
) -> str | None:
    if rationale.strip() and not FIRST_PERSON.search(rationale):
        return "first_person: no I, me, my or we"
    return None


def _hindsight(
    rationale: str, action: Mapping[str, Any], cfg: RulesConfig, ex: Phrases
) -> str | None:
    for pattern in cfg.hindsight_patterns:
        if m := re.search(pattern, rationale, re.IGNORECASE):
            return f"hindsight: {m.group(0)!r}"
    return None


def _pasted_action(
    rationale: str, action: Mapping[str, Any], cfg: RulesConfig, ex: Phrases
) -> str | None:
    text = rationale.strip().strip("\"'`.")
    if not text:
        return None
    if text.startswith("{") and '"type"' in text:
        return "pasted_action: the rationale is action JSON"
    name = str(action.get("name") or "")
    if name and len(name) >= cfg.pasted_action_share * len(text) and name.lower() in text.lower():
        return f"pasted_action: the rationale is the target name {name!r}"
    return None


def _copied_example(
    rationale: str, action: Mapping[str, Any], cfg: RulesConfig, ex: Phrases
) -> str | None:
    # The whole rationale and each of its sentences: a copied example may come with a tail.
    threshold = cfg.copied_example_similarity
    parts = [_normal(rationale)] + [_normal(s) for s in _sentences(rationale)]
    index = _phrase_index(ex)
    for words in dict.fromkeys(p for p in parts if len(p) >= _MIN_EXAMPLE_WORDS):
        # A cheap bound first, through an index of which phrases hold which word: the words a
        # phrase shares with the rationale cannot match more often than they occur in it.
        shared = Counter[int]()
        for word, n in Counter(words).items():
            for i in index.get(word, ()):
                shared[i] += n
        for i, n in shared.items():
            phrase, written = ex[i]
            if 2 * n < threshold * (len(words) + len(phrase)):
                continue
            if (score := _similarity(words, phrase, threshold)) >= threshold:
                shown = written if len(written) <= 100 else written[:97] + "..."
                return f"copied_example: {score:.0%} like the template's {shown!r}"
    return None


def _repeated_sentence(
    rationale: str, action: Mapping[str, Any], cfg: RulesConfig, ex: Phrases
) -> str | None:
    threshold = cfg.repeated_sentence_similarity
    seen: list[tuple[str, ...]] = []
    for sentence in _sentences(rationale):
        words = _normal(sentence)
        if not words:
            continue
        if any(_similarity(words, other, threshold) >= threshold for other in seen) or any(
            _repeats_clause(words, other, threshold) for other in seen
        ):
            return f"repeated_sentence: {sentence!r} says again what an earlier sentence said"
        seen.append(words)
    return None


#: A clause this long that comes back inside another sentence is a repetition (shorter ones,
#: "I want to", recur in honest rationales).
MIN_REPEATED_CLAUSE = 5


def _repeats_clause(a: tuple[str, ...], b: tuple[str, ...], threshold: float) -> bool:
    """The shorter of two sentences said again inside the longer one: "I want X, but I'm not
    sure what that item is. I'm not sure what the item is." (the local teacher's loop)."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    n = len(short)
    if n < MIN_REPEATED_CLAUSE or n == len(long_):
        return False
    return any(
        _similarity(short, long_[i : i + n], threshold) >= threshold
        for i in range(len(long_) - n + 1)
    )


RULES: dict[str, Callable[[str, Mapping[str, Any], RulesConfig, Phrases], str | None]] = {
    "empty": _empty,
    "too_short": _too_short,
    "too_long": _too_long,
    "first_person": _first_person,
    "hindsight": _hindsight,
    "pasted_action": _pasted_action,
    "copied_example": _copied_example,
    "repeated_sentence": _repeated_sentence,
}


def check_rules(
    rationale: str | None,
    action: Mapping[str, Any],
    rules: tuple[str, ...] = DEFAULT_RULES,
    config: RulesConfig | None = None,
    *,
    examples: Sequence[str] = (),
) -> list[str]:
    """The reasons the named rules reject ``rationale`` (empty when it passes them all).

    ``examples`` are the phrases `copied_example` compares against: the teacher template's own,
    from `template_examples`. With none given that rule passes everything.
    """
    config = config or RulesConfig()
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ConfigError(f"unknown rule(s) {', '.join(unknown)}; the rules are {', '.join(RULES)}")
    text = rationale or ""
    if "empty" in rules and (reason := _empty(text, action, config, ())):
        return [reason]  # nothing else can be said of an empty rationale
    phrases = _phrases(tuple(examples)) if "copied_example" in rules else ()
    return [
        r for name in rules if name != "empty" and (r := RULES[name](text, action, config, phrases))
    ]


@lru_cache(maxsize=16)
def _phrases(examples: tuple[str, ...]) -> Phrases:
    """``examples`` normalised, long enough to count and each once (cached: one set per run)."""
    phrases: dict[tuple[str, ...], str] = {}
    for example in examples:
        if len(words := _normal(example)) >= _MIN_EXAMPLE_WORDS:
            phrases.setdefault(words, example.strip())
    return tuple(phrases.items())


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


#: Jinja markup that is not text: the assistant prefix (the rationale starts with it by design),
#: comments, statements, expressions; and HTML tags.
_JINJA = re.compile(
    r"\{%-?\s*block\s+assistant_prefix\b.*?\{%-?\s*endblock\b.*?%\}|"
    r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}",
    re.S,
)
_TAG = re.compile(r"<[^<>\n]*>")
_QUOTED = re.compile(r'"([^"\n]+)"|“([^”\n]+)”')


def template_examples(template: Any) -> tuple[str, ...]:
    """The phrases of a template's own text that a rationale must not copy, render-free.

    Read from the source of the template and of every file it includes (``template.files``):
    everything outside Jinja markup, split into sentences, plus every double-quoted phrase (the
    example rationales, "I want to find a comfortable piece of clothing, ..."), HTML tags
    dropped. Variables are not rendered, so the step's own task and page never count.
    """
    found: list[str] = []
    for path in template.files:
        text = _JINJA.sub("\n", Path(path).read_text(encoding="utf-8"))
        for line in text.splitlines():
            found += (a or b for a, b in _QUOTED.findall(line))
            found += _sentences(_TAG.sub("\n", line))
    phrases = (p.strip(" -") for p in found)
    return tuple(dict.fromkeys(p for p in phrases if len(_normal(p)) >= _MIN_EXAMPLE_WORDS))


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
