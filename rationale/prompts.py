"""Prompt templates: the variables of one step, a context cut to a token budget, and rendering.

Data flows records -> prompts -> teacher: this module turns one `Step` into chat messages.

- Teacher prompts (``with_action=True``) see the action the person took: the variables ``action``
  and ``action_text`` exist, and a context too long for its budget is cut around the acted-on
  element (``focus``) so the teacher sees what was clicked.
- Blind prompts (``with_action=False``: verifier, training, evaluation) never see it: the two
  variables are undefined (a template that uses them fails), and the cut keeps the head and tail
  of the context, so nothing in the prompt can depend on the action.
- ``meta`` is never passed to a template.

Tokens are counted with tiktoken's ``cl100k_base``, read offline from the copy bundled with
litellm (found without importing litellm, which takes seconds). If tiktoken or that file is
missing, a token is taken to be 4 characters. See `count_tokens`.

Templates are sandboxed Jinja2 files with the blocks ``system``, ``user`` and optionally
``assistant_prefix``; the contract is in ``prompts/README.md``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import sys
import threading
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
from jinja2 import StrictUndefined, TemplateNotFound, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from rationale.errors import ConfigError
from rationale.paths import prompts_dir

if TYPE_CHECKING:
    from rationale.schema import ActionSpace
    from rationale.sessions import Step

__all__ = [
    "ContextCut",
    "PromptError",
    "PromptTemplate",
    "RenderedPrompt",
    "count_tokens",
    "cut_context",
    "format_action",
    "load_template",
    "prompt_variables",
    "render_step",
    "shipped_templates",
]

#: The entry point of a template given as a folder.
FOLDER_ENTRY = "template.jinja"
#: The blocks a template may define; ``user`` is required.
BLOCKS = ("system", "user", "assistant_prefix")
#: The smallest context budget: two cut markers and a little text must fit.
MIN_CONTEXT_TOKENS = 32


class PromptError(ConfigError):
    """A prompt template cannot be found, parsed or rendered."""


# -- token counting -----------------------------------------------------------------------------

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# tiktoken names a cached file by the sha1 of the URL it would download it from.
_CL100K_CACHE_NAME = hashlib.sha1(_CL100K_URL.encode()).hexdigest()


class _Tiktoken:
    """cl100k_base. Tokens are token ids; offsets map through their UTF-8 byte lengths."""

    name = "tiktoken cl100k_base"

    def __init__(self, encoding: Any) -> None:
        self._enc = encoding

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: text that looks like a special token (<|endoftext|>) is plain text.
        return self._enc.encode_ordinary(text)  # type: ignore[no-any-return]

    def decode(self, tokens: Sequence[int]) -> str:
        # A cut inside a multi-byte character decodes to U+FFFD; callers re-count the result.
        return self._enc.decode(list(tokens))  # type: ignore[no-any-return]

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def token_span(self, text: str, tokens: Sequence[int], start: int, end: int) -> tuple[int, int]:
        """Indexes of the first and last tokens holding characters ``start`` to ``end - 1``."""
        ends = list(
            itertools.accumulate(len(self._enc.decode_single_token_bytes(t)) for t in tokens)
        )

        def index(char: int) -> int:
            byte = len(text[:char].encode("utf-8"))
            return min(bisect_right(ends, byte), len(tokens) - 1)

        return index(start), index(end - 1)


class _Chars:
    """The fallback: a token is 4 characters, so counts are ``ceil(len(text) / 4)``."""

    name = "characters / 4 (tiktoken unavailable)"

    def encode(self, text: str) -> list[str]:
        return [text[i : i + 4] for i in range(0, len(text), 4)]

    def decode(self, tokens: Sequence[str]) -> str:
        return "".join(tokens)

    def count(self, text: str) -> int:
        return math.ceil(len(text) / 4)

    def token_span(self, text: str, tokens: Sequence[str], start: int, end: int) -> tuple[int, int]:
        return min(start // 4, len(tokens) - 1), min((end - 1) // 4, len(tokens) - 1)


_TOKENIZER: _Tiktoken | _Chars | None = None
_TOKENIZER_LOCK = threading.Lock()


def _litellm_tokenizers_dir() -> Path | None:
    """litellm's bundled tiktoken cache, located without importing litellm."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "litellm_core_utils" / "tokenizers"
        if folder.is_dir():
            return folder
    return None


def _verified_cache_file(folder: str | Path | None) -> bool:
    if not folder:
        return False
    path = Path(folder) / _CL100K_CACHE_NAME
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == _CL100K_SHA256
    except OSError:
        return False


def _load_tokenizer() -> _Tiktoken | _Chars:
    bundled = _litellm_tokenizers_dir()
    if bundled is not None and "TIKTOKEN_CACHE_DIR" not in os.environ:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
    try:
        import tiktoken
    except ImportError:
        return _Chars()
    # tiktoken downloads a missing or corrupt file; ask it only for a file verified here, so the
    # network is never touched. Its cache folder is resolved the way tiktoken resolves it.
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    try:
        if _verified_cache_file(cache_dir):
            return _Tiktoken(tiktoken.get_encoding("cl100k_base"))
        if _verified_cache_file(bundled):
            # The user's own cache folder lacks cl100k_base: read litellm's copy this once.
            saved = os.environ.get("TIKTOKEN_CACHE_DIR")
            os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
            try:
                return _Tiktoken(tiktoken.get_encoding("cl100k_base"))
            finally:
                if saved is None:
                    del os.environ["TIKTOKEN_CACHE_DIR"]
                else:
                    os.environ["TIKTOKEN_CACHE_DIR"] = saved
    except Exception:  # any failure to build the encoding means the fallback, never a crash
        return _Chars()
    return _Chars()


def _tokenizer() -> _Tiktoken | _Chars:
    global _TOKENIZER
    if _TOKENIZER is None:
        with _TOKENIZER_LOCK:
            if _TOKENIZER is None:
                _TOKENIZER = _load_tokenizer()
    return _TOKENIZER


def count_tokens(text: str) -> int:
    """Tokens in ``text``: tiktoken ``cl100k_base`` if available offline, else ``ceil(len / 4)``.

    cl100k_base is read from litellm's bundled tiktoken cache (``TIKTOKEN_CACHE_DIR`` is set to
    it unless already set). Student and teacher tokenizers differ; this is one shared ruler for
    budgets and reports, not an exact count for any one model.
    """
    tok = _tokenizer()
    return _count_cached(tok, text) if len(text) > 256 else tok.count(text)


@functools.lru_cache(maxsize=64)
def _count_cached(tok: Any, text: str) -> int:
    # Long texts that repeat (a template's system prompt, sent with every record) are counted
    # once per tokenizer.
    return tok.count(text)


# -- cutting a context to a budget --------------------------------------------------------------


@dataclass(frozen=True)
class ContextCut:
    """A context as shown to a model, and how much of it was cut.

    ``original_tokens`` counts the whole context; ``kept_tokens`` counts the tokens of that same
    encoding that were kept (markers excluded); ``cut_tokens = original_tokens - kept_tokens``,
    which is also the sum of the numbers written in the markers. ``count_tokens(text)`` is at
    most the budget.
    """

    text: str | None
    original_tokens: int
    kept_tokens: int
    cut_tokens: int
    how: Literal["none", "around-target", "head-tail"]


def _marker(n: int) -> str:
    return f"[... {n} tokens cut ...]"


def cut_context(
    context: str | None, max_tokens: int | None, *, focus: str | None = None
) -> ContextCut:
    """Fit ``context`` into ``max_tokens`` tokens, marking where text was removed.

    A context that fits (or no budget, or no context) comes back unchanged. Otherwise:

    - with ``focus`` (the acted-on element's name; only teacher prompts pass it) found in the
      context (first ``name="focus"``, then ``name='focus'``, then the bare string, ignoring
      case), a window centred on its first occurrence is kept, with ``[... N tokens cut ...]``
      on its own line before and/or after it ("around-target");
    - else the first two thirds of the room go to the head and the rest to the tail, with
      ``\\n[... N tokens cut ...]\\n`` between them ("head-tail").

    Cuts fall on token boundaries and the result is re-counted, so ``count_tokens(text)`` never
    exceeds ``max_tokens``.
    """
    if max_tokens is not None and max_tokens < MIN_CONTEXT_TOKENS:
        raise ConfigError(
            f"max_context_tokens={max_tokens} is too small to cut a context into: use at least "
            f"{MIN_CONTEXT_TOKENS}, or no limit"
        )
    if context is None:
        return ContextCut(None, 0, 0, 0, "none")
    tok = _tokenizer()
    tokens = tok.encode(context)
    n = len(tokens)
    if max_tokens is None or n <= max_tokens:
        return ContextCut(context, n, n, 0, "none")

    span = _find_focus(context, focus) if focus else None
    if span is not None:
        first, last = tok.token_span(context, tokens, *span)  # type: ignore[arg-type]

        def around(room: int) -> tuple[str, int]:
            centre = (first + last + 1) // 2
            start = max(0, min(centre - room // 2, n - room, first))
            end = min(n, start + room)
            text = tok.decode(tokens[start:end])
            if start > 0:
                text = _marker(start) + "\n" + text
            if end < n:
                text = text + "\n" + _marker(n - end)
            return text, end - start

        overhead = 2 * tok.count(_marker(n) + "\n")
        text, kept = _fit(around, max_tokens, max_tokens - overhead, tok)
        return ContextCut(text, n, kept, n - kept, "around-target")

    def head_tail(room: int) -> tuple[str, int]:
        head = math.ceil(room * 2 / 3)
        tail = room - head
        text = tok.decode(tokens[:head]) + "\n" + _marker(n - room) + "\n"
        return text + (tok.decode(tokens[n - tail :]) if tail else ""), room

    overhead = tok.count("\n" + _marker(n) + "\n")
    text, kept = _fit(head_tail, max_tokens, max_tokens - overhead, tok)
    return ContextCut(text, n, kept, n - kept, "head-tail")


def _fit(build: Any, budget: int, room: int, tok: _Tiktoken | _Chars) -> tuple[str, int]:
    """The largest ``room`` (context tokens kept) found whose built text fits ``budget``.

    Re-tokenising decoded slices and markers can differ by a few tokens from the estimate (and
    a window at one end needs one marker, not two), so the result is counted: shrunk by the
    overshoot until it fits, then grown into the slack a few times while it still fits.
    """
    room = max(room, 0)
    while True:
        text, kept = build(room)
        over = tok.count(text) - budget
        if over <= 0 or room == 0:
            break
        room = max(0, room - over)
    for _ in range(3):
        if over >= 0:
            break
        grown_text, grown_kept = build(room - over)
        grown_over = tok.count(grown_text) - budget
        if grown_over > 0:
            break
        room, over, text, kept = room - over, grown_over, grown_text, grown_kept
    return text, kept


def _find_focus(context: str, focus: str) -> tuple[int, int] | None:
    """Character span of the first ``name="focus"``, ``name='focus'`` or bare ``focus``."""
    escaped = re.escape(focus)
    for pattern in (rf'name="{escaped}"', rf"name='{escaped}'", escaped):
        if match := re.search(pattern, context, re.IGNORECASE):
            return match.span()
    return None


# -- the variables of one step ------------------------------------------------------------------


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


# -- templates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedPrompt:
    """Chat messages (system, if not empty, then user) and the text the reply starts with."""

    messages: list[dict[str, str]]
    assistant_prefix: str | None


class _PinnedLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that reads each file once: what is rendered is what was hashed."""

    def __init__(self, searchpath: Sequence[Path]) -> None:
        super().__init__([str(p) for p in searchpath])
        self._pinned: dict[str, tuple[str, str | None]] = {}

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        if template not in self._pinned:
            source, filename, _ = super().get_source(environment, template)
            self._pinned[template] = (source, filename)
        source, filename = self._pinned[template]
        return source, filename, lambda: True  # type: ignore[return-value]


def _tojson(value: Any, indent: int | None = None) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; a prompt is not HTML.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _environment(searchpath: Sequence[Path]) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=_PinnedLoader(searchpath),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["tojson"] = _tojson
    return env


class PromptTemplate:
    """A loaded template: its ``name``, entry ``path``, ``version`` and the ``files`` it covers.

    ``version`` is the first 16 hex digits of a sha256 over the source of the template and of
    every template it includes, extends or imports, recursively: change any of them and it
    changes. Build one with `load_template`.
    """

    def __init__(self, name: str, path: Path, searchpath: Sequence[Path]) -> None:
        self.name = name
        self.path = path
        self._env = _environment(searchpath)
        entry = path.name
        sources = self._collect(entry)
        self.files: tuple[Path, ...] = tuple(Path(filename) for _, filename in sources)
        digest = hashlib.sha256()
        for source, _ in sources:
            data = source.encode("utf-8")
            digest.update(f"{len(data)}:".encode())
            digest.update(data)
        self.version = digest.hexdigest()[:16]
        self.declared_rules = _declared_rules(sources[0][0])
        try:
            self._template = self._env.get_template(entry)
        except TemplateSyntaxError as exc:  # pragma: no cover  (parsed in _collect already)
            raise self._syntax_error(exc) from None

    def __repr__(self) -> str:
        return f"PromptTemplate({self.name!r}, path={str(self.path)!r}, version={self.version!r})"

    @property
    def _where(self) -> str:
        return f"template {self.name!r} ({self.path})"

    def _collect(self, entry: str) -> list[tuple[str, str]]:
        """(source, filename) of the entry and everything it references, depth first."""
        seen: set[str] = set()
        out: list[tuple[str, str]] = []

        def visit(name: str, referrer: str | None) -> None:
            if name in seen:
                return
            seen.add(name)
            try:
                source, filename, _ = self._env.loader.get_source(self._env, name)  # type: ignore[union-attr]
            except TemplateNotFound:
                if referrer is None:
                    raise PromptError(f"{self._where}: file not found") from None
                if name in optional:
                    return
                folders = ", ".join(str(p) for p in self._env.loader.searchpath)  # type: ignore[union-attr]
                raise PromptError(
                    f"{self._where}: {referrer} references {name!r}, which is not in {folders}; "
                    "fix the name or add the file"
                ) from None
            out.append((source, filename))
            try:
                ast = self._env.parse(source, name, filename)
            except TemplateSyntaxError as exc:
                raise self._syntax_error(exc) from None
            for node in ast.find_all(nodes.Include):
                if node.ignore_missing and isinstance(node.template, nodes.Const):
                    optional.add(node.template.value)
            for ref in meta.find_referenced_templates(ast):
                if ref is None:
                    raise PromptError(
                        f"{self._where}: {name} includes, extends or imports a template by a "
                        "computed name; write the file name literally so the version can cover it"
                    )
                visit(ref, name)

        optional: set[str] = set()
        visit(entry, None)
        return out

    def _syntax_error(self, exc: TemplateSyntaxError) -> PromptError:
        where = exc.filename or exc.name or self.path
        return PromptError(
            f"{self._where}: syntax error in {where} line {exc.lineno}: {exc.message}"
        )

    def render(self, **variables: Any) -> RenderedPrompt:
        """Render each block with ``variables``: messages and the assistant prefix."""
        ctx = self._template.new_context(variables)
        try:
            # The top level runs first: it sets up extends, imports and top-level sets that the
            # blocks may use. Its own output (text outside the blocks) is discarded.
            for _ in self._template.root_render_func(ctx):
                pass
            parts = {
                block: "".join(ctx.blocks[block][0](ctx)) if block in ctx.blocks else None
                for block in BLOCKS
            }
        except Exception:
            raise self._render_error() from None
        system = (parts["system"] or "").strip()
        user = (parts["user"] or "").strip()
        if parts["user"] is None:
            raise PromptError(f"{self._where}: defines no 'user' block; add {{% block user %}}")
        if not user:
            raise PromptError(f"{self._where}: the 'user' block rendered empty")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        return RenderedPrompt(messages, parts["assistant_prefix"] or None)

    def _render_error(self) -> PromptError:
        """The exception being handled, as a PromptError naming the template file and line."""
        exc = sys.exc_info()[1]
        try:
            self._env.handle_exception()  # re-raises with template frames in the traceback
        except Exception as rewritten:
            exc = rewritten
        location = ""
        templates = {str(f) for f in self.files}
        tb = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename in templates:
                location = f" (at {Path(filename).name} line {tb.tb_lineno})"
            tb = tb.tb_next
        if isinstance(exc, SecurityError):
            return PromptError(f"{self._where}: refused by the sandbox: {exc}{location}")
        if isinstance(exc, UndefinedError):
            match = re.fullmatch(r"'(.+)' is undefined", str(exc))
            if match is None:
                return PromptError(f"{self._where}: {exc}{location}")
            variable = match.group(1)
            hint = (
                "; it exists only in prompts that may see the action (with_action=True)"
                if variable in ("action", "action_text")
                else "; check its spelling against prompts/README.md"
            )
            return PromptError(f"{self._where}: variable {variable!r} is undefined{location}{hint}")
        if isinstance(exc, TemplateSyntaxError):
            return self._syntax_error(exc)
        return PromptError(f"{self._where}: {type(exc).__name__}: {exc}{location}")


def shipped_templates() -> dict[str, Path]:
    """The shipped templates by name, found recursively under `rationale.paths.prompts_dir`.

    A file ``x.jinja`` is named ``x``; a ``template.jinja`` is named after its folder. Partials
    (file names starting with ``_``) are not listed.
    """
    root = prompts_dir()
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.jinja")):
        if path.name.startswith("_"):
            continue
        name = path.parent.name if path.name == FOLDER_ENTRY and path.parent != root else path.stem
        if name in found:
            raise PromptError(f"two shipped templates are named {name!r}: {found[name]}, {path}")
        found[name] = path
    return found


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.endswith(".jinja") or value in (".", "..")


def load_template(
    name_or_path: str | os.PathLike[str] | None = None, *, default: str = "web_shopping"
) -> PromptTemplate:
    """Load a template: None (``default``), a shipped name, a ``.jinja`` file or a folder.

    A folder must hold ``template.jinja``, its entry point; its other files can be included.
    A template can include files from its own folder and, after them, the shipped partials.
    """
    if name_or_path is None:
        name_or_path = default
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
        shipped = shipped_templates()
        if name_or_path in shipped:
            path = shipped[name_or_path]
            return PromptTemplate(name_or_path, path, _searchpath(path.parent))
        if not Path(name_or_path).exists():
            raise PromptError(
                f"no template named {name_or_path!r}; shipped: {', '.join(sorted(shipped))}, "
                "or pass a .jinja file or a folder holding template.jinja"
            )
    path = Path(name_or_path).expanduser().resolve()
    if path.is_dir():
        entry = path / FOLDER_ENTRY
        if not entry.is_file():
            raise PromptError(
                f"template folder {path} has no {FOLDER_ENTRY}: name its entry point that"
            )
        return PromptTemplate(path.name, entry, _searchpath(path))
    if path.is_file():
        return PromptTemplate(path.stem, path, _searchpath(path.parent))
    raise PromptError(
        f"template {str(name_or_path)!r} not found: pass a shipped name "
        f"({', '.join(sorted(shipped_templates()))}), a .jinja file or a folder"
    )


def _searchpath(folder: Path) -> list[Path]:
    shipped = prompts_dir().resolve()
    return [folder] if folder == shipped else [folder, shipped]


def render_step(
    template: PromptTemplate,
    step: Step,
    *,
    max_context_tokens: int | None,
    with_action: bool,
    action_space: ActionSpace | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[RenderedPrompt, ContextCut]:
    """`prompt_variables` then `PromptTemplate.render`: one step's prompt and its context cut.

    ``extra`` adds variables of a stage's own (the verifier's ``rationale``); it cannot add
    ``action``, ``action_text`` or ``meta`` to a blind prompt.
    """
    variables, cut = prompt_variables(
        step,
        max_context_tokens=max_context_tokens,
        with_action=with_action,
        action_space=action_space,
    )
    if extra:
        if forbidden := {"action", "action_text", "meta"} & set(extra):
            raise PromptError(f"extra variables may not include {', '.join(sorted(forbidden))}")
        variables.update(extra)
    return template.render(**variables), cut


_FIRST_COMMENT = re.compile(r"\A\s*\{#-?(.*?)-?#\}", re.S)
_RULES_LINE = re.compile(r"^\s*rules\s*:\s*(.*)$", re.M)


def _declared_rules(source: str) -> tuple[str, ...] | None:
    """The rule names a template declares in its first comment (``rules: empty too_short``)."""
    comment = _FIRST_COMMENT.match(source)
    if comment and (line := _RULES_LINE.search(comment.group(1))):
        return tuple(n for n in re.split(r"[\s,]+", line.group(1).strip()) if n)
    return None
