"""The record format: one pydantic model per record kind, plus the action space.

One JSON object per line is one step of a session (see README, "Record format"). The same
models are the file format, the library type and, later, the structured-output models sent to
teacher and verifier models, so each thing has one definition.

The action space is data, not code: a declaration (the default one below, or a user's TOML file)
lists the action types and their fields, and `ActionSpace` turns it into pydantic models. Each
field has a *kind* that fixes how it is normalised and compared:

- ``name``: a target identifier. Compared after Unicode NFKC, trimming, collapsing whitespace
  runs to one space, and case folding.
- ``text``: free text a person typed. Compared exactly after Unicode NFC, trimming and
  collapsing whitespace runs to one space; case and punctuation count.

`ActionSpace.canonical` and `ActionSpace.equal` are the only definition of "the same action";
the consistency filter and the evaluation both call them.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from rationale.errors import ConfigError

#: Version of the record format written by this package. Readers accept records without it.
SCHEMA_VERSION = 1

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


def _camel(type_name: str) -> str:
    return "".join(part.capitalize() for part in type_name.split("_")) + "Action"


NonBlank = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads JSON true/false as the integers 1/0 (and 1.0/0.0): a record
    # with "step": true would silently become step 1. A bool is never a number here.
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
    return value


def _not_bool_literal(value: Any) -> Any:
    if isinstance(value, bool):  # Literal[1] would otherwise accept true (True == 1)
        raise PydanticCustomError("literal_error", "Input should be 1")
    return value


#: An integer that is not a bool (``true`` is an error, not 1). Use it for every int field.
Integer = Annotated[int, BeforeValidator(_not_bool)]
#: A float that is not a bool.
Number = Annotated[float, BeforeValidator(_not_bool)]
#: The largest step number: the record index stores steps as sqlite's signed 64-bit INTEGER.
MAX_STEP = 2**63 - 1
#: A step number: 0 <= step <= MAX_STEP.
StepNumber = Annotated[Integer, Field(ge=0, le=MAX_STEP)]
SchemaVersion = Annotated[Literal[1], BeforeValidator(_not_bool_literal)]


@dataclass(frozen=True)
class ActionType:
    """One declared action type: its name, its fields (field -> kind) and a description."""

    name: str
    fields: Mapping[str, FieldKind] = field(default_factory=dict)
    description: str = ""


class ActionSpace:
    """A declared set of action types and the pydantic models derived from it.

    Build the default with `ActionSpace.default()`, a user's with `ActionSpace.from_file(path)`.
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
    def default(cls) -> ActionSpace:
        return _default_space()

    @classmethod
    def from_declaration(cls, decl: Mapping[str, Any], *, source: str = "<dict>") -> ActionSpace:
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
    def from_file(cls, path: str | Path) -> ActionSpace:
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

    # -- derived models -----------------------------------------------------------------------

    @cached_property
    def models(self) -> dict[str, type[BaseModel]]:
        """One pydantic model per action type, with ``type`` as its literal tag."""
        models = {}
        for t in self.types.values():
            fields: dict[str, Any] = {"type": (Literal[t.name], ...)}  # type: ignore[valid-type]
            for fname, kind in t.fields.items():
                # A target name must say something; typed text may be anything, even empty.
                fields[fname] = (NonBlank if kind == "name" else str, ...)
            models[t.name] = create_model(  # type: ignore[call-overload]
                _camel(t.name),
                __config__=ConfigDict(extra="forbid", frozen=True),
                __doc__=t.description or f"The {t.name} action.",
                **fields,
            )
        return models

    @cached_property
    def action_type(self) -> Any:
        """The discriminated union of all action models (an annotation for pydantic fields)."""
        members = tuple(self.models.values())
        union = members[0] if len(members) == 1 else Union[members]  # noqa: UP007
        return Annotated[union, Field(discriminator="type")]

    @cached_property
    def record_model(self) -> type[ActionRecord]:
        """`ActionRecord` with its ``action`` field typed by this space."""
        if self is _default_space():
            return ActionRecord
        return create_model(  # type: ignore[call-overload,no-any-return]
            "ActionRecord",
            __base__=ActionRecord,
            action=(self.action_type, ...),
        )

    @cached_property
    def prediction_model(self) -> type[BaseModel]:
        """The structured output a model returns: a rationale, then the action."""
        return create_model(  # type: ignore[call-overload,no-any-return]
            "Prediction",
            __config__=ConfigDict(extra="forbid"),
            __doc__="A short first-person rationale, then the action it leads to.",
            rationale=(str, Field(description="Why the person takes the action, first person.")),
            action=(self.action_type, ...),
        )

    @cached_property
    def action_only_model(self) -> type[BaseModel]:
        """The structured output of a model that predicts the action alone (e.g. a verifier)."""
        return create_model(  # type: ignore[call-overload,no-any-return]
            "ActionPrediction",
            __config__=ConfigDict(extra="forbid"),
            action=(self.action_type, ...),
        )

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


class Rationale(BaseModel):
    """The teacher's structured answer: the rationale alone (the teacher is told the action)."""

    rationale: str = Field(
        description="One short first-person sentence: why the person took the action, then."
    )


class HistoryEntry(BaseModel):
    """One earlier step as later steps see it: its action and, optionally, its rationale."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: StepNumber
    action: dict[str, Any]
    rationale: str | None = None


class ActionRecord(BaseModel):
    """One step of a session: what the person saw (`context`) and what they did (`action`).

    History is not stored here: `rationale.sessions.build_history` derives it from the earlier
    steps of the same session. `meta` is carried through untouched and never shown to a model.
    """

    # NaN and Infinity in meta or persona are written back as read, not turned into null.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: SchemaVersion = SCHEMA_VERSION
    session_id: str
    step: StepNumber
    context: str | None = None
    action: _DEFAULT_ACTION  # type: ignore[valid-type]  # noqa: F821  (set below)
    user_id: str | None = None
    instruction: str | None = None
    persona: str | dict[str, Any] | None = None
    rationale: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("session_id", "user_id", mode="before")
    @classmethod
    def _ids_may_be_integers(cls, value: Any) -> Any:
        # Logs often number sessions and users; an integer id is kept as its decimal string.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("session_id")
    @classmethod
    def _session_id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("session_id must not be empty")
        return value

    def dump(self) -> dict[str, Any]:
        """The record as one JSON-ready dict, as written to a file."""
        return self.model_dump(mode="json")


_DEFAULT_SPACE: ActionSpace | None = None


def _default_space() -> ActionSpace:
    global _DEFAULT_SPACE
    if _DEFAULT_SPACE is None:
        _DEFAULT_SPACE = ActionSpace.from_declaration(DEFAULT_DECLARATION, source="<default>")
    return _DEFAULT_SPACE


#: The default action union, e.g. for `TypeAdapter(Action).validate_python(...)`.
Action = _default_space().action_type
ActionRecord.model_rebuild(_types_namespace={"_DEFAULT_ACTION": Action})
Click = _default_space().models["click"]
TypeAndSubmit = _default_space().models["type_and_submit"]
Terminate = _default_space().models["terminate"]


# -- synthesis outputs --------------------------------------------------------------------------

SynthState = Literal["accepted", "rejected", "failed"]


class Provenance(BaseModel):
    """Where a rationale came from: enough to repeat or audit the call."""

    model_config = ConfigDict(extra="forbid")

    teacher: str
    template: str
    template_version: str
    prompt_hash: str
    seed: Integer
    sample: Integer = 0
    prompt_tokens: Integer | None = None
    completion_tokens: Integer | None = None
    cost_usd: Number | None = None
    attempts: Integer = 0
    cached: bool = False


class SynthError(BaseModel):
    """Why a record failed, after retries: the error class and its (redacted) message."""

    model_config = ConfigDict(extra="forbid")

    type: str
    category: str
    message: str


class Verification(BaseModel):
    """The blind verifier's verdict on one candidate: what it predicted, and whether that is the
    true action under `ActionSpace.equal`."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prediction: dict[str, Any] | None = None
    match: bool = False
    prompt_tokens: Integer | None = None
    completion_tokens: Integer | None = None
    cost_usd: Number | None = None
    attempts: Integer = 0
    cached: bool = False


class Candidate(BaseModel):
    """One rationale tried for a record: a sample of a round (round 0, then regenerations with
    feedback), the rules and verifier verdicts on it, and its own provenance."""

    model_config = ConfigDict(extra="forbid")

    rationale: str | None = None
    sample: Integer = 0
    round: Integer = 0
    state: SynthState
    reasons: list[str] = Field(default_factory=list)
    verification: Verification | None = None
    error: SynthError | None = None
    provenance: Provenance | None = None


class SynthRecord(BaseModel):
    """One line of a run's accepted/rejected/failed file: one input record and its outcome.

    ``record`` is the input line unchanged (a dict, so custom action spaces round-trip).
    ``rationale`` is the first accepted candidate's; ``candidates`` holds every candidate tried
    (with ``--keep all``, every accepted one is among them), so nothing paid for is lost.
    ``prediction`` is the verifier's prediction for the last candidate verified.
    """

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")  # as ActionRecord

    schema_version: SchemaVersion = SCHEMA_VERSION
    state: SynthState
    record: dict[str, Any]
    rationale: str | None = None
    reasons: list[str] = Field(default_factory=list)
    error: SynthError | None = None
    provenance: Provenance | None = None
    prediction: dict[str, Any] | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    context_cut_tokens: Integer = 0

    @property
    def accepted_rationales(self) -> list[str]:
        return [c.rationale for c in self.candidates if c.state == "accepted" and c.rationale]

    @property
    def key(self) -> tuple[str, int]:
        return (str(self.record["session_id"]), int(self.record["step"]))
