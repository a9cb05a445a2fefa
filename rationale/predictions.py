"""Reading a model's free-text answer as a prediction: a rationale and an action.

Models do not always return clean JSON. `parse_prediction` finds the answer in prose, code
fences, Python-dict style, trailing commas, a bare action object without the ``action``
wrapper, or a call in the action space's own words (``click(search.box)``,
``type_and_submit(search.box, "red shoes")``, ``terminate()``). The action comes back
validated against the action space, as a plain dict. It never raises: an answer it cannot
read is ``status="unparsed"`` with a one-line ``problem``.

It reads the answer, not words inside it (`rationale.answer_scan` finds the answer):
- thinking is not the answer: only the text after the last ``</think>`` is read, and a
  ``<think>`` never closed (cut by the token limit) ends the answer where it opens;
- the first decoded object with an ``action`` key is the verdict, valid or not: an invalid
  action there makes the answer unparsed with that object's problem. A later object does not
  overrule it (a model's answer is one object, and local generation stops after the first), nor
  do the words around it. An object whose action is only a placeholder (``{...}``, ``"..."``)
  is the prompt's format example echoed, and is skipped;
- a bare action object (``{"type": "click", ...}``) that validates answers where no object
  with an ``action`` key came before it;
- only where no object answered are ``click(x)`` calls and ``Action: X`` labels read, and
  never inside the quoted strings of an object (a rationale's "my action: terminate" is not an
  answer), except the value of an ``action`` key in an object that did not decode.

Work is bounded: only the first and last `MAX_SCAN` characters of the answer are searched,
objects are found by a linear brace scanner, and at most `MAX_CANDIDATES` objects per window
are decoded, within `DECODE_BUDGET` characters.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from rationale.action_space import normalize_name
from rationale.answer_scan import (
    DECODE_BUDGET,
    LITERAL_BUDGET,
    MAX_CANDIDATES,
    MAX_SCAN,
    answer_text,
    decode,
    objects,
    outside_strings,
    windows,
)
from rationale.schema import ActionSpace

__all__ = ["MAX_SCAN", "ParsedPrediction", "parse_prediction"]

#: The longest argument list of an action call that is read.
MAX_CALL_ARGS = 2_000

_CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\(")
_ACTION_LABEL = re.compile(r"(?i)\baction\**[ \t]*[:=][ \t*`]*([A-Za-z_]\w*)[ \t]*(\(?)")
_RATIONALE_LABEL = re.compile(r"(?im)^[ \t>*#_-]*(?:rationale|reason(?:ing)?)\**[ \t]*[:=]\**")
_NEXT_LABEL = re.compile(r"(?im)^[ \t>*#_-]*action\b")
_KEYWORD = re.compile(r"([A-Za-z_]\w*)\s*[=:]\s*(.*)", re.S)
_TYPE_SEPARATORS = re.compile(r"[\s-]+")
_PLACEHOLDER = re.compile(r"\s*(?:\.\.\.|\u2026)\s*")


@dataclass(frozen=True)
class ParsedPrediction:
    """A model's answer as read: the rationale and validated action, or why it was unreadable."""

    rationale: str | None
    action: dict[str, Any] | None
    status: Literal["ok", "unparsed"]
    problem: str | None
    raw: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Unreadable(Exception):
    """One candidate answer that is not a valid prediction; the message says why."""


def parse_prediction(text: str, space: ActionSpace) -> ParsedPrediction:
    """Read a model's answer: its first object with an ``action`` key, valid or not; else its
    first bare action object that validates; else its first action call or ``Action:`` label.

    The action is a dict of the type and its declared fields (other keys are dropped, as
    `ActionSpace.equal` ignores them), validated by the space's model for that type.
    """
    raw = text if isinstance(text, str) else ""
    try:
        if not isinstance(text, str):
            raise _Unreadable(f"the answer is a {type(text).__name__}, not text")
        rationale, action = _parse(text, space)
        return ParsedPrediction(rationale, action, "ok", None, raw)
    except _Unreadable as exc:
        problem = " ".join(str(exc).split())[:300]
    except Exception as exc:  # never raise on model output, whatever it holds
        problem = f"could not read the answer ({type(exc).__name__})"
    return ParsedPrediction(None, None, "unparsed", problem, raw)


def _parse(text: str, space: ActionSpace) -> tuple[str | None, dict[str, Any]]:
    answer, thinking = answer_text(text)
    parts = windows(answer)
    problem = ""
    budget = [DECODE_BUDGET, LITERAL_BUDGET]
    for window in parts:
        for candidate in objects(window):
            value = decode(candidate, budget)
            if not isinstance(value, dict):
                continue
            has_action = "action" in (data := _fold_keys(value))
            if has_action and _is_placeholder(data["action"]):
                continue  # the prompt's format example, echoed before the answer
            try:
                return _from_object(value, space)
            except _Unreadable as exc:
                if has_action:
                    raise  # the verdict: no later object or word overrules it
                problem = problem or str(exc)
    for window in parts:
        try:
            found = _from_calls(outside_strings(window), space)
        except _Unreadable as exc:
            problem = problem or str(exc)
        else:
            if found is not None:
                return found
    if problem:
        raise _Unreadable(problem)
    if thinking == "cut":
        raise _Unreadable("the answer ends inside <think> (never closed: cut by the token limit?)")
    if thinking == "closed" and not answer.strip():
        raise _Unreadable("nothing after </think>: the thinking is not an answer")
    if re.search(r"""["']rationale["']\s*:""", answer[:MAX_SCAN]):
        raise _Unreadable("the answer has a rationale but no action")
    cut = f" (searched the first and last {MAX_SCAN} characters)" if len(answer) > MAX_SCAN else ""
    raise _Unreadable(f"no JSON object or action call found{cut}")


def _is_placeholder(value: Any, depth: int = 0) -> bool:
    """Whether an action is only ``...`` (``{...}``, ``"..."``): a format example, no answer."""
    if value is Ellipsis:
        return True
    if isinstance(value, str):
        return _PLACEHOLDER.fullmatch(value) is not None
    if depth < 2 and isinstance(value, (dict, list, tuple, set, frozenset)) and 0 < len(value) < 5:
        items = value.values() if isinstance(value, dict) else value
        return all(_is_placeholder(item, depth + 1) for item in items)
    return False


def _from_object(obj: dict[str, Any], space: ActionSpace) -> tuple[str | None, dict[str, Any]]:
    """A decoded object as a prediction: ``{rationale, action}`` or a bare action."""
    data = _fold_keys(obj)
    rationale = data.get("rationale")
    rationale = (rationale.strip() or None) if isinstance(rationale, str) else None
    if "action" in data:
        action = data["action"]
        if isinstance(action, str) and "(" not in action:
            action = {**data, "type": action}  # {"action": "click", "name": "x"}
        return rationale, _validate(action, space)
    if "type" in data:
        return rationale, _validate(data, space)
    raise _Unreadable(f"an object with keys {', '.join(map(str, obj))[:80]} has no action")


def _fold_keys(obj: dict[Any, Any]) -> dict[str, Any]:
    return {k.strip().casefold() if isinstance(k, str) else k: v for k, v in obj.items()}


def _validate(action: Any, space: ActionSpace) -> dict[str, Any]:
    """The action as a dict of its type and declared fields, validated by the space's model."""
    if isinstance(action, str):  # "click(search.box)" or "terminate"
        found = _from_calls(action, space)
        if found is not None:
            return found[1]
        spec = space.types.get(_type_name(action))
        if spec is not None and not spec.fields:
            return {"type": spec.name}
        raise _Unreadable(f"the action {action.strip()[:60]!r} is not an action call")
    if not isinstance(action, dict):
        raise _Unreadable(f"the action is a {type(action).__name__}, not an object")
    data = _fold_keys(action)
    if "type" not in data and len(data) == 1:  # {"click": {"name": "x"}}
        ((key, value),) = data.items()
        data = _fold_keys({**value, "type": key}) if isinstance(value, dict) else {"type": key}
    raw_type = data.get("type")
    if not isinstance(raw_type, str):
        raise _Unreadable("the action has no 'type'")
    spec = space.types.get(_type_name(raw_type))
    if spec is None:
        raise _unknown_type(raw_type, space)
    fields = {name: data[name] for name in spec.fields if name in data}
    try:
        model = space.models[spec.name].model_validate({"type": spec.name, **fields})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise _Unreadable(f"{spec.name} action: {where}: {err['msg']}") from None
    return dict(model.model_dump())


def _type_name(raw: str) -> str:
    return _TYPE_SEPARATORS.sub("_", normalize_name(raw))


def _unknown_type(raw: str, space: ActionSpace) -> _Unreadable:
    return _Unreadable(f"action type {raw.strip()[:40]!r} is not one of {', '.join(space.types)}")


def _from_calls(s: str, space: ActionSpace) -> tuple[str | None, dict[str, Any]] | None:
    """The first action call in ``s`` (``click(x)``, ``Action: terminate``) that validates.

    None when ``s`` holds no call of a declared type; `_Unreadable` when one is malformed.
    """
    problem, tries = "", 0
    for m in _CALL.finditer(s):
        spec = space.types.get(_type_name(m.group(1)))
        if spec is None:
            continue
        tries += 1
        if tries > MAX_CANDIDATES:
            break
        args = _call_args(s, m.end())
        if args is None:
            problem = problem or f"the call {m.group(1)}( is not closed"
            continue
        try:
            return _rationale_label(s, m.start()), _validate(_bind(spec, args), space)
        except _Unreadable as exc:
            problem = problem or str(exc)
    for tries, m in enumerate(_ACTION_LABEL.finditer(s)):
        if tries >= MAX_CANDIDATES:
            break
        word, paren = m.group(1), m.group(2)
        spec = space.types.get(_type_name(word))
        if spec is None:
            problem = problem or str(_unknown_type(word, space))
        elif not paren and not spec.fields:
            return _rationale_label(s, m.start()), {"type": spec.name}
    if problem:
        raise _Unreadable(problem)
    return None


def _call_args(s: str, start: int) -> list[str] | None:
    """The raw arguments of a call whose ``(`` ends at ``start``; None if it is not closed."""
    args, buf, quote, depth = [], [], "", 0
    for c in s[start : start + MAX_CALL_ARGS]:
        if quote:
            buf.append(c)
            if c == quote:
                quote = ""
        elif c in "\"'`" and not "".join(buf).strip():
            quote = c
            buf.append(c)
        elif c == "(":
            depth += 1
            buf.append(c)
        elif c == ")" and depth:
            depth -= 1
            buf.append(c)
        elif c == ")":
            args.append("".join(buf))
            return [a for a in args if a.strip()] if len(args) == 1 else args
        elif c == "," and not depth:
            args.append("".join(buf))
            buf = []
        else:
            buf.append(c)
    return None


def _bind(spec: Any, args: list[str]) -> dict[str, Any]:
    """Positional and keyword call arguments bound to the type's declared fields, in order."""
    names = list(spec.fields)
    data: dict[str, Any] = {"type": spec.name}
    positional = []
    for arg in args:
        m = _KEYWORD.fullmatch(arg.strip())
        if m and m.group(1).casefold() in spec.fields:
            data[m.group(1).casefold()] = _unquote(m.group(2))
        else:
            positional.append(arg)
    free = [n for n in names if n not in data]
    if len(positional) > len(free) and free and spec.fields[free[-1]] == "text":
        # an unquoted text with commas: the last text field takes the rest
        keep = len(free) - 1
        positional = [*positional[:keep], ",".join(positional[keep:])]
    if len(positional) > len(free):
        raise _Unreadable(f"{spec.name} takes {len(names)} argument(s), got {len(args)}")
    for name, arg in zip(free, positional, strict=False):
        data[name] = _unquote(arg)
    return data


def _unquote(arg: str) -> str:
    arg = arg.strip()
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "\"'`":
        if arg[0] != "`":
            try:
                value = ast.literal_eval(arg)
                if isinstance(value, str):
                    return value
            except Exception:  # a malformed escape: take the text between the quotes
                pass
        return arg[1:-1]
    return arg


def _rationale_label(s: str, before: int) -> str | None:
    """The text after the last ``Rationale:`` label before ``before``, up to an action label."""
    last = None
    for m in _RATIONALE_LABEL.finditer(s, 0, before):
        last = m
    if last is None:
        return None
    nxt = _NEXT_LABEL.search(s, last.end(), before)
    text = s[last.end() : nxt.start() if nxt else before].strip().strip("*\"'` ")
    return text or None
