"""Prompt templates: loading, versioning and rendering one step into chat messages.

Data flows records -> prompts -> teacher. The step's variables come from `rationale.variables`
(which cuts the context with `rationale.context`, counting with `rationale.tokens`); this module
loads the template and renders them. The names of those modules are re-exported here, so
``from rationale.prompts import count_tokens, cut_context, prompt_variables`` keeps working.

- Teacher prompts (``with_action=True``) see the action the person took; blind prompts
  (``with_action=False``: verifier, training, evaluation) never do: ``action`` and
  ``action_text`` are undefined there (a template that uses them fails). ``meta`` is never
  passed to a template.

Templates are sandboxed Jinja2 files with the blocks ``system``, ``user`` and optionally
``assistant_prefix``; the contract is in ``prompts/README.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2 import StrictUndefined, TemplateNotFound, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from rationale.context import MIN_CONTEXT_TOKENS, ContextCut, cut_context
from rationale.errors import ConfigError
from rationale.paths import prompts_dir
from rationale.tokens import count_tokens
from rationale.variables import format_action, prompt_variables

if TYPE_CHECKING:
    from rationale.schema import ActionSpace
    from rationale.sessions import Step

__all__ = [
    "MIN_CONTEXT_TOKENS",
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


class PromptError(ConfigError):
    """A prompt template cannot be found, parsed or rendered."""


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


#: A Jinja comment, ``{# ... #}`` with its whitespace-control marks.
_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)


class PromptTemplate:
    """A loaded template: its ``name``, entry ``path``, ``version`` and the ``files`` it covers.

    ``version`` is the first 16 hex digits of a sha256 over the source of the template and of
    every template it includes, extends or imports, recursively, with Jinja comments left out:
    change what any of them renders and it changes; a comment (such as the ``rules:``
    declaration, which run.json's identity records on its own) leaves the cache valid. Build one
    with `load_template`.
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
            data = _COMMENT.sub("", source).encode("utf-8")
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
