"""The action space as declared: its action types and fields, and when two actions are the same.

The action space is data, not code: a declaration (`DEFAULT_DECLARATION`, the paper's, or a
user's TOML file) lists the action types and their fields. `DeclaredActionSpace` checks it and
holds the one definition of action equality; `rationale.schema.ActionSpace` adds the pydantic
models derived from it. Each field has a *kind* that fixes how it is normalised and compared:

- ``name``: a target identifier. Compared after Unicode NFKC, trimming, collapsing whitespace
  runs to one space, and case folding.
- ``text``: free text a person typed. Compared exactly after Unicode NFC, trimming and
  collapsing whitespace runs to one space; case and punctuation count.

`canonical` and `equal` are the only definition of "the same action"; the consistency filter
and the evaluation both call them.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from rationale.errors import ConfigError

FieldKind = Literal["name", "text"]
FIELD_KINDS: tuple[str, ...] = ("name", "text")

#: Default purchase pattern, searched (case-insensitively) in the normalised name of a session's
#: last click: a name *segment* (the text between dots) that starts with a purchase phrase. So
#: ``product.buy_now`` and ``button.place_order_and_pay_now`` match, while ``tab.purchase_price``
#: and ``button.add_to_cart`` do not: adding to a cart or opening checkout is not a purchase.
DEFAULT_PURCHASE_PATTERN = (
    r"(^|\.)(buy[_ ]?now|buy[_ ]it[_ ]now|purchase[_ ]now|place[_ ](your[_ ])?order|pay[_ ]now|"
    r"submit[_ ](your[_ ])?order|complete[_ ](your[_ ])?(purchase|order)|"
    r"confirm[_ ](and[_ ]pay|(your[_ ])?order|purchase))([_ .]|$)"
)

#: The paper's action space (see ../shared/PAPER.md): click, type_and_submit, terminate.
DEFAULT_DECLARATION: dict[str, Any] = {
    "purchase_pattern": DEFAULT_PURCHASE_PATTERN,
    "action": {
        "click": {
            "description": "Click an interactive element.",
            "fields": {"name": "name"},
        },
        "type_and_submit": {
            "description": "Type text into an input element and submit it.",
            "fields": {"name": "name", "text": "text"},
        },
        "terminate": {
            "description": "Leave the site or close the window: the session ends.",
            "fields": {},
        },
    },
}

_WS = re.compile(r"\s+")
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def normalize_name(value: str) -> str:
    """Canonical form of a ``name`` field: NFKC, trimmed, whitespace collapsed, case folded."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", value)).strip().casefold()


def normalize_text(value: str) -> str:
    """Canonical form of a ``text`` field: NFC, trimmed, whitespace collapsed, case kept."""
    return _WS.sub(" ", unicodedata.normalize("NFC", value)).strip()


_NORMALIZERS = {"name": normalize_name, "text": normalize_text}


@dataclass(frozen=True)
class ActionType:
    """One declared action type: its name, its fields (field -> kind) and a description."""

    name: str
    fields: Mapping[str, FieldKind] = field(default_factory=dict)
    description: str = ""


_Space = TypeVar("_Space", bound="DeclaredActionSpace")


class DeclaredActionSpace:
    """A checked declaration of action types, and the one definition of action equality.

    Use `rationale.schema.ActionSpace`, which adds the pydantic models derived from it.
    """

    def __init__(
        self,
        types: list[ActionType],
        *,
        purchase_pattern: str = DEFAULT_PURCHASE_PATTERN,
        purchase_type: str = "click",
        terminate_type: str = "terminate",
        source: str = "<default>",
    ) -> None:
        if not types:
            raise ConfigError(f"{source}: the action space declares no action types")
        self.types = {t.name: t for t in types}
        self.source = source
        try:
            self.purchase_re = re.compile(purchase_pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"{source}: purchase_pattern is not a valid regex: {exc}") from None
        self.purchase_pattern = purchase_pattern
        self.purchase_type = purchase_type
        self.terminate_type = terminate_type
        for t in types:
            if not _TYPE_NAME.match(t.name):
                raise ConfigError(
                    f"{source}: action type {t.name!r} must be lower_snake_case (a-z, 0-9, _)"
                )
            for fname, kind in t.fields.items():
                if fname == "type" or not _TYPE_NAME.match(fname):
                    raise ConfigError(
                        f"{source}: action.{t.name}.fields.{fname}: field names must be "
                        "lower_snake_case and not 'type'"
                    )
                if kind not in FIELD_KINDS:
                    raise ConfigError(
                        f"{source}: action.{t.name}.fields.{fname} = {kind!r}: "
                        f"the kind must be one of {', '.join(FIELD_KINDS)}"
                    )
        if purchase_type in self.types and "name" not in self.types[purchase_type].fields:
            raise ConfigError(f"{source}: purchase_type {purchase_type!r} has no 'name' field")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_declaration(
        cls: type[_Space], decl: Mapping[str, Any], *, source: str = "<dict>"
    ) -> _Space:
        """Build a space from a mapping shaped like `DEFAULT_DECLARATION`."""
        known = {"purchase_pattern", "purchase_type", "terminate_type", "action"}
        if unknown := set(decl) - known:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        actions = decl.get("action")
        if not isinstance(actions, Mapping) or not actions:
            raise ConfigError(
                f"{source}: declare at least one action type as a [action.NAME] table"
            )
        types = []
        for name, spec in actions.items():
            spec = spec or {}
            if not isinstance(spec, Mapping) or set(spec) - {"fields", "description"}:
                raise ConfigError(
                    f"{source}: action.{name} may only have the keys 'fields' and 'description'"
                )
            fields = spec.get("fields", {}) or {}
            if not isinstance(fields, Mapping):
                raise ConfigError(f"{source}: action.{name}.fields must be a table field = kind")
            types.append(
                ActionType(name=name, fields=dict(fields), description=spec.get("description", ""))
            )
        return cls(
            types,
            purchase_pattern=decl.get("purchase_pattern", DEFAULT_PURCHASE_PATTERN),
            purchase_type=decl.get("purchase_type", "click"),
            terminate_type=decl.get("terminate_type", "terminate"),
            source=source,
        )

    @classmethod
    def from_file(cls: type[_Space], path: str | Path) -> _Space:
        """Read a TOML action-space declaration (see README, "Custom action types")."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        path = Path(path)
        try:
            decl = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: action-space file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_declaration(decl, source=str(path))

    def declaration(self) -> dict[str, Any]:
        """The mapping this space was built from (round-trips through `from_declaration`)."""
        return {
            "purchase_pattern": self.purchase_pattern,
            "purchase_type": self.purchase_type,
            "terminate_type": self.terminate_type,
            "action": {
                t.name: {"description": t.description, "fields": dict(t.fields)}
                for t in self.types.values()
            },
        }

    # -- the one definition of action equality ------------------------------------------------

    def canonical(self, action: BaseModel | Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """The canonical form of an action: ``(("type", t), (field, normalised value), ...)``.

        Only the declared fields of the action's type take part, in declaration order. Raises
        `ValueError` for an action of an undeclared type or with a missing field.
        """
        data = action.model_dump() if isinstance(action, BaseModel) else action
        type_name = normalize_name(str(data.get("type", "")))
        spec = self.types.get(type_name)
        if spec is None:
            raise ValueError(f"action type {data.get('type')!r} is not in the action space")
        out = [("type", type_name)]
        for fname, kind in spec.fields.items():
            value = data.get(fname)
            if not isinstance(value, str):
                raise ValueError(f"{type_name} action has no string field {fname!r}")
            out.append((fname, _NORMALIZERS[kind](value)))
        return tuple(out)

    def equal(self, predicted: Any, truth: Any) -> bool:
        """True when two actions are the same under `canonical`; a malformed one never is."""
        try:
            return self.canonical(predicted) == self.canonical(truth)
        except (ValueError, AttributeError, TypeError):
            return False

    def is_purchase(self, action: BaseModel | Mapping[str, Any]) -> bool:
        """A click (the ``purchase_type``) whose name matches the purchase pattern."""
        try:
            canon = dict(self.canonical(action))
        except ValueError:
            return False
        return canon["type"] == self.purchase_type and bool(
            self.purchase_re.search(canon.get("name", ""))
        )

    def outcome(self, last_action: BaseModel | Mapping[str, Any]) -> str | None:
        """A session's outcome from its last action: ``purchase``, ``terminate`` or None."""
        if self.is_purchase(last_action):
            return "purchase"
        data = last_action.model_dump() if isinstance(last_action, BaseModel) else last_action
        if normalize_name(str(data.get("type", ""))) == self.terminate_type:
            return "terminate"
        return None
