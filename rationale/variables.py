"""The template variables of one step: what a prompt may show of a record, and nothing more.

Teacher prompts (``with_action=True``) get ``action`` and ``action_text`` and a context cut
around the acted-on element; blind prompts (verifier, training, evaluation) get neither, and a
head-and-tail cut. ``meta`` is never passed to a template. See ``prompts/README.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rationale.context import ContextCut, cut_context

if TYPE_CHECKING:
    from rationale.schema import ActionSpace
    from rationale.sessions import Step

__all__ = ["format_action", "prompt_variables"]


def format_action(action: Mapping[str, Any]) -> str:
    """A compact form of an action: ``click(search_results.view_product)``,
    ``type_and_submit(search_bar.input, "red shoes")``, ``terminate()``.

    ``name`` comes first and unquoted; every other field follows as JSON, in the dict's order.
    """
    args = []
    if isinstance(action.get("name"), str):
        args.append(action["name"])
    for key, value in action.items():
        if key not in ("type", "name"):
            args.append(json.dumps(value, ensure_ascii=False))
    return f"{action.get('type', '?')}({', '.join(args)})"


def _format_persona(persona: str | Mapping[str, Any] | None) -> str | None:
    """A persona as readable text: a string as is, a dict as ``key: value`` lines."""
    if persona is None:
        return None
    if isinstance(persona, str):
        return persona.strip() or None
    lines: list[str] = []
    _persona_lines(persona, 0, lines)
    return "\n".join(lines) or None


def _persona_lines(data: Mapping[str, Any], depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    for key, value in data.items():
        label = str(key).replace("_", " ")
        if value is None or value == "" or value == [] or value == {}:
            continue
        if isinstance(value, Mapping):
            lines.append(f"{pad}{label}:")
            _persona_lines(value, depth + 1, lines)
        elif isinstance(value, list):
            if all(not isinstance(v, (Mapping, list)) for v in value):
                lines.append(f"{pad}{label}: {', '.join(str(v) for v in value)}")
            else:
                lines.append(f"{pad}{label}:")
                for item in value:
                    if isinstance(item, Mapping):
                        _persona_lines(item, depth + 1, lines)
                    else:
                        lines.append(f"{pad}  {json.dumps(item, ensure_ascii=False)}")
        else:
            lines.append(f"{pad}{label}: {value}")


def prompt_variables(
    step: Step,
    *,
    max_context_tokens: int | None,
    with_action: bool,
    action_space: ActionSpace | None = None,
) -> tuple[dict[str, Any], ContextCut]:
    """The template variables of one step, and how its context was cut.

    Always: ``instruction``, ``persona``, ``context``, ``context_cut_tokens``, ``history`` (dicts
    with ``step``, ``action``, ``action_text``, ``rationale``), ``step``, ``action_space`` (dicts
    with ``type``, ``fields``, ``description``). Only with ``with_action``: ``action`` and
    ``action_text``, and the cut keeps the acted-on element. ``meta`` is never passed.
    """
    from rationale.schema import ActionSpace

    record = step.record
    action = record.action.model_dump()
    focus = action.get("name") if with_action and isinstance(action.get("name"), str) else None
    cut = cut_context(record.context, max_context_tokens, focus=focus)
    space = action_space or ActionSpace.default()
    variables: dict[str, Any] = {
        "instruction": record.instruction,
        "persona": _format_persona(record.persona),
        "context": cut.text,
        "context_cut_tokens": cut.cut_tokens,
        "history": [
            {
                "step": entry.step,
                "action": dict(entry.action),
                "action_text": format_action(entry.action),
                "rationale": entry.rationale,
            }
            for entry in step.history
        ],
        "step": record.step,
        "action_space": [
            {"type": t.name, "fields": dict(t.fields), "description": t.description}
            for t in space.types.values()
        ],
    }
    if with_action:
        variables["action"] = action
        variables["action_text"] = format_action(action)
    return variables, cut
