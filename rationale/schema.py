"""The record format: one pydantic model per record kind.

One JSON object per line is one step of a session (see README, "Record format"). The same
models are the file format, the library type and, later, the structured-output models sent to
teacher and verifier models, so each thing has one definition.

The action models are derived from a declared action space (`rationale.action_space`, which
also defines when two actions are the same): `ActionSpace` turns a declaration into one model
per action type, the discriminated union of them, and the record and prediction models typed by
that union. `Action`, `Click`, `TypeAndSubmit` and `Terminate` are the default space's.
"""

from __future__ import annotations

from functools import cached_property
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

# The declaration and equality names are re-exported: `rationale.schema` was their home.
from rationale.action_space import (  # noqa: F401
    DEFAULT_DECLARATION,
    DEFAULT_PURCHASE_PATTERN,
    FIELD_KINDS,
    ActionType,
    DeclaredActionSpace,
    FieldKind,
    normalize_name,
    normalize_text,
)

#: Version of the record format written by this package. Readers accept records without it.
SCHEMA_VERSION = 1


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


class ActionSpace(DeclaredActionSpace):
    """A declared set of action types and the pydantic models derived from it.

    Build the default with `ActionSpace.default()`, a user's with `ActionSpace.from_file(path)`
    or `ActionSpace.from_declaration(mapping)`. Checking the declaration and comparing actions
    (`canonical`, `equal`, `is_purchase`, `outcome`) are inherited from
    `rationale.action_space.DeclaredActionSpace`.
    """

    @classmethod
    def default(cls) -> ActionSpace:
        """The paper's action space (`DEFAULT_DECLARATION`), built once."""
        return _default_space()

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
