"""Prompt templates: variables, context cuts, rendering, loading, versions."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import modules_loaded_by

import rationale.prompts as prompts
import rationale.tokens as tokens
from rationale.errors import ConfigError
from rationale.paths import prompts_dir
from rationale.prompts import (
    ContextCut,
    PromptError,
    PromptTemplate,
    RenderedPrompt,
    count_tokens,
    cut_context,
    format_action,
    load_template,
    prompt_variables,
    render_step,
    shipped_templates,
)
from rationale.schema import ActionRecord, ActionSpace
from rationale.sessions import Step, iter_steps

SENTINEL = "META-SENTINEL-7f3a"

ACTIONS = {
    "click": {"type": "click", "name": "search_results.trail_runner_2.view_product"},
    "type_and_submit": {"type": "type_and_submit", "name": "search_bar.input", "text": "red shoes"},
    "terminate": {"type": "terminate"},
}

PAGE = (
    '<div name="search_bar"><input name="search_bar.input" placeholder="Search"/></div>'
    '<div name="search_results">'
    '<div name="search_results.trail_runner_2"><span>Trail Runner 2</span><span>$89.00</span>'
    '<a name="search_results.trail_runner_2.view_product">View</a></div>'
    '<div name="search_results.road_glide"><span>Road Glide</span><span>$120.00</span>'
    '<a name="search_results.road_glide.view_product">View</a></div></div>'
)

# A long page: the acted-on element sits in the middle, far from both ends.
LONG_PAGE = (
    "".join(
        f'<div name="results.item_{i}"><span>Item {i} 商品 ünï</span></div>\n' for i in range(400)
    )
    + '<button name="results.item_target.add_to_cart">Add to cart</button>\n'
    + "".join(f'<div name="results.more_{i}"><span>More {i}</span></div>\n' for i in range(400))
)


def make_steps(
    *,
    action: dict[str, Any] | None = None,
    context: str | None = PAGE,
    instruction: str | None = "Buy trail running shoes under $100.",
    persona: str | dict[str, Any] | None = None,
    history: bool = True,
    with_rationales: bool = True,
) -> Step:
    """The last step of a session: two earlier steps (if ``history``) then the step under test."""
    last = {
        "session_id": "s1",
        "step": 2,
        "context": context,
        "action": action or ACTIONS["click"],
        "instruction": instruction,
        "persona": persona,
        "meta": {"secret": SENTINEL, "url": f"https://example.com/{SENTINEL}"},
    }
    earlier = [
        {
            "session_id": "s1",
            "step": 0,
            "context": None,
            "action": ACTIONS["type_and_submit"],
            "instruction": instruction,
            "rationale": "I want shoes I can take on muddy trails.",
            "meta": {"secret": SENTINEL},
        },
        {
            "session_id": "s1",
            "step": 1,
            "context": PAGE,
            "action": {"type": "click", "name": "filters.price.under_100"},
            "instruction": instruction,
            "meta": {"secret": SENTINEL},
        },
    ]
    rows = [*earlier, last] if history else [last]
    records = [ActionRecord.model_validate(row) for row in rows]
    return list(iter_steps(records, with_rationales=with_rationales))[-1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


# A blind template that uses every variable a blind prompt has.
BLIND = """
{% block system %}Predict the next action. Actions:
{% for t in action_space %}
- {{ t.type }}({{ t.fields | join(", ") }}): {{ t.description }}
{% endfor %}
{% endblock %}
{% block user %}
Step {{ step }}. Task: {{ instruction }}. Persona: {{ persona }}.
{% include "_history.jinja" %}
{% for h in history %}{{ h.step }} {{ h.action | tojson }} {{ h.rationale }}
{% endfor %}
Cut: {{ context_cut_tokens }}
{{ context }}
{% endblock %}
"""


@pytest.fixture(params=["tiktoken", "chars"])
def tokenizer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test under each token counter: tiktoken cl100k_base and the 4-characters fallback."""
    if request.param == "chars":
        monkeypatch.setattr(tokens, "_TOKENIZER", tokens._Chars())
    elif not isinstance(tokens.tokenizer(), tokens._Tiktoken):
        pytest.skip("tiktoken's cl100k_base is not available offline here")
    return str(request.param)


# -- every shipped template renders -------------------------------------------------------------

SHIPPED = sorted(shipped_templates())
BLIND_SHIPPED = ["predict", "student", "verifier"]  # prompts that must never see the action
TEACHER_SHIPPED = [n for n in SHIPPED if n not in BLIND_SHIPPED]
CANDIDATE = "I want sturdy trail shoes, so I open the first pair that says waterproof."
BLIND_EXTRA = {"rationale": CANDIDATE, "with_rationale": True}  # the verifier's and the student's

VARIANTS = {
    "full": {"persona": {"age_range": "25-34", "hobbies": ["running", "hiking"]}},
    "string-persona": {"persona": "A nurse who runs on weekends."},
    "bare": {"context": None, "instruction": None, "persona": None, "history": False},
    "no-context": {"context": None},
    "no-history": {"history": False},
}


def test_the_shipped_templates_are_the_documented_ones() -> None:
    assert {"web_shopping", "generic"} <= set(SHIPPED)
    assert all(not path.name.startswith("_") for path in shipped_templates().values())
    readme = (prompts_dir() / "README.md").read_text(encoding="utf-8")
    for name in SHIPPED:
        assert f"`{name}`" in readme


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("action_type", sorted(ACTIONS))
@pytest.mark.parametrize("name", TEACHER_SHIPPED)
def test_every_shipped_template_renders(name: str, action_type: str, variant: str) -> None:
    template = load_template(name)
    step = make_steps(action=ACTIONS[action_type], **VARIANTS[variant])
    rendered, cut = render_step(template, step, max_context_tokens=None, with_action=True)

    assert isinstance(rendered, RenderedPrompt)
    assert [m["role"] for m in rendered.messages] == ["system", "user"]
    system, user = (m["content"] for m in rendered.messages)
    assert "rationale" in system and '{"rationale":' in system  # the answer format
    assert format_action(ACTIONS[action_type]) in user
    assert rendered.assistant_prefix.startswith("I ")
    assert not re.search(r"\bNone\b", user), "a missing value leaked as 'None'"
    assert "{{" not in user and "{%" not in user
    assert "\n\n\n" not in user, "a tag left a run of blank lines"
    if step.record.context is None:
        assert cut.how == "none" and "not available" in user
    else:
        assert PAGE in user
    if step.history:
        assert "type_and_submit(search_bar.input" in user
        assert "muddy trails" in user  # an earlier rationale, when history rationales are on
    else:
        assert "first action of the session" in user
    if variant == "full":
        assert "age range: 25-34" in user and "hobbies: running, hiking" in user


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("action_type", sorted(ACTIONS))
@pytest.mark.parametrize("name", BLIND_SHIPPED)
def test_every_blind_template_renders_without_the_action(
    name: str, action_type: str, variant: str
) -> None:
    template = load_template(name)
    step = make_steps(action=ACTIONS[action_type], **VARIANTS[variant])
    rendered, _ = render_step(
        template, step, max_context_tokens=None, with_action=False,
        extra=BLIND_EXTRA,
    )  # fmt: skip
    system, user = (m["content"] for m in rendered.messages)
    assert '{"action"' in system or '"action": {...}' in system
    if name == "verifier":
        assert CANDIDATE in user
    other = make_steps(action=ACTIONS["terminate" if action_type != "terminate" else "click"],
                       **VARIANTS[variant])  # fmt: skip
    same, _ = render_step(template, other, max_context_tokens=None, with_action=False,
                          extra=BLIND_EXTRA)  # fmt: skip
    assert same == rendered  # nothing of the action reaches a blind prompt
    assert not re.search(r"\bNone\b", user) and "\n\n\n" not in user
    for action_type_name in ACTIONS:  # the whole action space is offered
        assert f'"type": "{action_type_name}"' in system
    with pytest.raises(PromptError, match="action"):
        render_step(template, step, max_context_tokens=None, with_action=False,
                    extra={**BLIND_EXTRA, "action": {}})  # fmt: skip


def test_the_shipped_templates_are_found_recursively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), root)
    write(root / "support" / "agent.jinja", "{% block user %}{{ action_text }}{% endblock %}\n")
    write(root / "games" / "template.jinja", "{% block user %}{{ step }}{% endblock %}\n")
    write(root / "support" / "_part.jinja", "not a template of its own\n")
    monkeypatch.setattr(prompts, "prompts_dir", lambda: root)

    found = shipped_templates()
    assert found["agent"] == root / "support" / "agent.jinja"
    assert found["games"] == root / "games" / "template.jinja"
    assert "_part" not in found and "_history" not in found
    for name in found:  # every one of them renders, found recursively
        variables = prompt_variables(make_steps(), max_context_tokens=None, with_action=True)[0]
        rendered = load_template(name).render(**variables, **BLIND_EXTRA)
        assert rendered.messages[-1]["role"] == "user"


# -- the action and meta never leak -------------------------------------------------------------


@pytest.mark.parametrize("with_action", [True, False])
def test_meta_never_reaches_a_prompt(tmp_path: Path, with_action: bool) -> None:
    step = make_steps(persona={"age": "30"})
    variables, _ = prompt_variables(step, max_context_tokens=None, with_action=with_action)
    assert SENTINEL not in json.dumps(variables, ensure_ascii=False)
    assert "meta" not in variables
    names = TEACHER_SHIPPED if with_action else BLIND_SHIPPED
    templates = [load_template(name) for name in names]
    templates.append(load_template(write(tmp_path / "blind.jinja", BLIND)))
    for template in templates:
        rendered, _ = render_step(
            template, step, max_context_tokens=None, with_action=with_action,
            extra=BLIND_EXTRA,
        )  # fmt: skip
        assert SENTINEL not in json.dumps(rendered.messages, ensure_ascii=False)


def test_variables_with_and_without_the_action() -> None:
    step = make_steps(action=ACTIONS["type_and_submit"])
    blind, _ = prompt_variables(step, max_context_tokens=None, with_action=False)
    teacher, _ = prompt_variables(step, max_context_tokens=None, with_action=True)
    common = {
        "instruction",
        "persona",
        "context",
        "context_cut_tokens",
        "history",
        "step",
        "action_space",
    }
    assert set(blind) == common
    assert set(teacher) == common | {"action", "action_text"}
    assert teacher["action"] == ACTIONS["type_and_submit"]
    assert teacher["action_text"] == 'type_and_submit(search_bar.input, "red shoes")'
    assert blind["step"] == 2
    assert blind["history"][0] == {
        "step": 0,
        "action": ACTIONS["type_and_submit"],
        "action_text": 'type_and_submit(search_bar.input, "red shoes")',
        "rationale": "I want shoes I can take on muddy trails.",
    }
    assert [t["type"] for t in blind["action_space"]] == ["click", "type_and_submit", "terminate"]
    assert blind["action_space"][1]["fields"] == {"name": "name", "text": "text"}
    assert blind["action_space"][2]["description"]


def test_a_custom_action_space_reaches_the_template() -> None:
    space = ActionSpace.from_declaration(
        {
            "action": {
                "click": {"fields": {"name": "name"}},
                "scroll": {"description": "Scroll the page.", "fields": {"direction": "name"}},
            }
        }
    )
    variables, _ = prompt_variables(
        make_steps(), max_context_tokens=None, with_action=True, action_space=space
    )
    assert variables["action_space"][1] == {
        "type": "scroll",
        "fields": {"direction": "name"},
        "description": "Scroll the page.",
    }
    user = load_template("generic").render(**variables).messages[0]["content"]
    assert "- scroll(direction): Scroll the page." in user


@pytest.mark.parametrize("budget", [None, 64, 300])
def test_a_blind_prompt_does_not_depend_on_the_action(tmp_path: Path, budget: int | None) -> None:
    template = load_template(write(tmp_path / "blind.jinja", BLIND))
    # The page holds both targets, so a cut that looked at the action would differ.
    page = LONG_PAGE.replace("results.item_target", "search_results.trail_runner_2")
    rendered = []
    for action in (
        ACTIONS["click"],
        {"type": "click", "name": "results.item_target.add_to_cart"},
        ACTIONS["type_and_submit"],
        ACTIONS["terminate"],
    ):
        step = make_steps(action=action, context=page)
        prompt, cut = render_step(template, step, max_context_tokens=budget, with_action=False)
        assert cut.how == ("none" if budget is None else "head-tail")
        rendered.append(prompt)
    assert all(prompt == rendered[0] for prompt in rendered)


@pytest.mark.parametrize("variable", ["action", "action_text"])
def test_the_action_is_undefined_in_a_blind_prompt(tmp_path: Path, variable: str) -> None:
    template = load_template(
        write(
            tmp_path / "peek.jinja",
            f"{{% block user %}}\nx {{{{ {variable} }}}}\n{{% endblock %}}\n",
        )
    )
    step = make_steps()
    assert template.render(**prompt_variables(step, max_context_tokens=None, with_action=True)[0])
    with pytest.raises(PromptError, match=rf"variable '{variable}' is undefined.*with_action=True"):
        render_step(template, step, max_context_tokens=None, with_action=False)
    for name in TEACHER_SHIPPED:  # the teacher templates need the action: blind, they fail loudly
        with pytest.raises(PromptError, match="is undefined"):
            render_step(load_template(name), step, max_context_tokens=None, with_action=False)


def test_a_template_for_both_modes_can_test_for_the_action(tmp_path: Path) -> None:
    template = load_template(
        write(
            tmp_path / "both.jinja",
            """
            {% block user %}
            {% if action is defined %}Explain {{ action_text }}.{% else %}Predict.{% endif %}
            {% endblock %}
            """,
        )
    )
    step = make_steps()
    blind, _ = render_step(template, step, max_context_tokens=None, with_action=False)
    teacher, _ = render_step(template, step, max_context_tokens=None, with_action=True)
    assert blind.messages == [{"role": "user", "content": "Predict."}]
    assert teacher.messages[0]["content"].startswith("Explain click(")


# -- template errors ----------------------------------------------------------------------------


def test_an_undefined_variable_names_the_template_and_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "mine.jinja", "{% block user %}\nhello\n{{ foo }}\n{% endblock %}\n")
    template = load_template(path)
    with pytest.raises(PromptError) as err:
        render_step(template, make_steps(), max_context_tokens=None, with_action=True)
    message = str(err.value)
    assert message.startswith(f"template 'mine' ({path}): variable 'foo' is undefined")
    assert "mine.jinja line 3" in message


def test_a_missing_attribute_is_an_error_too(tmp_path: Path) -> None:
    template = load_template(
        write(tmp_path / "t.jinja", "{% block user %}{{ action.nme }}{% endblock %}")
    )
    with pytest.raises(PromptError, match=r"template 't' .*has no attribute 'nme'"):
        render_step(template, make_steps(), max_context_tokens=None, with_action=True)


@pytest.mark.parametrize(
    "expression",
    ["''.__class__.__mro__", "''.__class__", "history.__class__.__base__.__subclasses__()"],
)
def test_a_sandbox_violation_is_a_prompt_error(tmp_path: Path, expression: str) -> None:
    template = load_template(
        write(
            tmp_path / "evil.jinja", f"{{% block user %}}\n{{{{ {expression} }}}}\n{{% endblock %}}"
        )
    )
    with pytest.raises(PromptError, match=r"template 'evil' .*refused by the sandbox.*unsafe"):
        render_step(template, make_steps(), max_context_tokens=None, with_action=True)


def test_a_syntax_error_names_the_template_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.jinja", "{% block user %}\nfine\n{% if %}\n{% endblock %}\n")
    with pytest.raises(PromptError, match=r"template 'broken' \(.*\): syntax error in .*line 3"):
        load_template(path)


def test_a_syntax_error_in_an_included_partial_names_it(tmp_path: Path) -> None:
    write(tmp_path / "_part.jinja", "one\ntwo {{ x }\n")
    path = write(
        tmp_path / "main.jinja", '{% block user %}{% include "_part.jinja" %}{% endblock %}'
    )
    with pytest.raises(
        PromptError, match=r"template 'main' .*syntax error in .*_part\.jinja line 2"
    ):
        load_template(path)


def test_a_missing_include_fails_at_load(tmp_path: Path) -> None:
    path = write(
        tmp_path / "main.jinja", '{% block user %}{% include "_nope.jinja" %}{% endblock %}'
    )
    with pytest.raises(PromptError, match=r"references '_nope.jinja', which is not in"):
        load_template(path)


def test_a_computed_include_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path / "main.jinja", "{% block user %}{% include step ~ '.jinja' %}{% endblock %}"
    )
    with pytest.raises(PromptError, match="computed name"):
        load_template(path)


def test_a_template_without_a_user_block_is_an_error(tmp_path: Path) -> None:
    template = load_template(write(tmp_path / "t.jinja", "{% block usr %}hi{% endblock %}"))
    with pytest.raises(PromptError, match="no 'user' block"):
        template.render(
            **prompt_variables(make_steps(), max_context_tokens=None, with_action=True)[0]
        )


def test_blocks_render_separately(tmp_path: Path) -> None:
    template = load_template(
        write(
            tmp_path / "t.jinja",
            """
            ignored text outside the blocks
            {% set greeting = "Hello" %}
            {% block system %}  {% endblock %}
            {% block user %}
              {{ greeting }}, step {{ step }}
            {% endblock %}
            """,
        )
    )
    rendered = template.render(step=3)
    assert rendered.messages == [
        {"role": "user", "content": "Hello, step 3"}
    ]  # empty system left out
    assert rendered.assistant_prefix is None


def test_extends_and_imports_work_and_count_in_the_version(tmp_path: Path) -> None:
    write(tmp_path / "_macros.jinja", "{% macro shout(x) %}{{ x | upper }}!{% endmacro %}")
    write(
        tmp_path / "base.jinja",
        """
        {% from "_macros.jinja" import shout %}
        {% block system %}Base rules.{% endblock %}
        {% block user %}{{ shout(instruction) }}{% endblock %}
        {% block assistant_prefix %}{"rationale": "I {% endblock %}
        """,
    )
    child = write(
        tmp_path / "child.jinja",
        '{% extends "base.jinja" %}{% block system %}{{ super() }} And mine.{% endblock %}',
    )
    template = load_template(child)
    rendered = template.render(instruction="buy socks")
    assert rendered.messages == [
        {"role": "system", "content": "Base rules. And mine."},
        {"role": "user", "content": "BUY SOCKS!"},
    ]
    assert rendered.assistant_prefix == '{"rationale": "I '
    assert {p.name for p in template.files} == {"child.jinja", "base.jinja", "_macros.jinja"}
    before = template.version
    write(tmp_path / "_macros.jinja", "{% macro shout(x) %}{{ x | upper }}!!{% endmacro %}")
    assert load_template(child).version != before


def test_tojson_writes_plain_json(tmp_path: Path) -> None:
    template = load_template(
        write(tmp_path / "t.jinja", "{% block user %}{{ x | tojson }}{% endblock %}")
    )
    assert template.render(x={"a": "<b> & 'c'"}).messages[0]["content"] == '{"a": "<b> & \'c\'"}'


# -- loading and versions -----------------------------------------------------------------------


def test_load_by_name_default_file_and_folder(tmp_path: Path) -> None:
    by_name = load_template("web_shopping")
    assert isinstance(by_name, PromptTemplate)
    assert by_name.name == "web_shopping"
    assert by_name.path == prompts_dir().resolve() / "web_shopping.jinja"
    assert re.fullmatch(r"[0-9a-f]{16}", by_name.version)
    assert load_template().version == by_name.version
    assert load_template(default="generic").name == "generic"

    by_file = load_template(by_name.path)
    assert (by_file.name, by_file.version) == ("web_shopping", by_name.version)
    assert load_template(str(by_name.path)).version == by_name.version

    folder = tmp_path / "my_prompts"
    write(folder / "_examples.jinja", "Example: I want socks.\n")
    write(
        folder / "template.jinja",
        """
        {% block system %}{% include "_examples.jinja" %}{% endblock %}
        {% block user %}{% include "_history.jinja" %}{{ action_text }}{% endblock %}
        """,
    )
    by_folder = load_template(folder)
    assert by_folder.name == "my_prompts"
    assert by_folder.path == folder.resolve() / "template.jinja"
    # Its own files first, then the shipped partials.
    assert [p.name for p in by_folder.files] == [
        "template.jinja",
        "_examples.jinja",
        "_history.jinja",
    ]
    rendered, _ = render_step(by_folder, make_steps(), max_context_tokens=None, with_action=True)
    assert rendered.messages[0]["content"] == "Example: I want socks."
    assert "2. click(filters.price.under_100)" in rendered.messages[1]["content"]


def test_an_unknown_name_lists_the_shipped_templates() -> None:
    with pytest.raises(PromptError) as err:
        load_template("web_shoping")
    assert "no template named 'web_shoping'" in str(err.value)
    for name in SHIPPED:
        assert name in str(err.value)


def test_missing_paths_are_errors(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="not found"):
        load_template(tmp_path / "nope.jinja")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PromptError, match=r"has no template\.jinja"):
        load_template(tmp_path / "empty")
    assert issubclass(PromptError, ConfigError)


def test_the_version_covers_included_partials(tmp_path: Path) -> None:
    copy = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), copy)
    shipped = load_template("web_shopping")
    copied = load_template(copy / "web_shopping.jinja")
    assert copied.version == shipped.version  # same sources, same version, wherever they are
    assert copy / "_history.jinja" in copied.files

    history = copy / "_history.jinja"
    history.write_text(history.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    changed = load_template(copy / "web_shopping.jinja")
    assert changed.version != shipped.version
    history.write_text((prompts_dir() / "_history.jinja").read_text(encoding="utf-8"), "utf-8")
    assert load_template(copy / "web_shopping.jinja").version == shipped.version


def test_a_loaded_template_renders_what_was_hashed(tmp_path: Path) -> None:
    write(tmp_path / "_part.jinja", "old")
    template = load_template(
        write(tmp_path / "t.jinja", '{% block user %}{% include "_part.jinja" %}{% endblock %}')
    )
    write(tmp_path / "_part.jinja", "new")  # edited after loading
    assert template.render().messages[0]["content"] == "old"


# -- format_action and persona ------------------------------------------------------------------


def test_format_action() -> None:
    assert format_action(ACTIONS["click"]) == "click(search_results.trail_runner_2.view_product)"
    assert (
        format_action(ACTIONS["type_and_submit"])
        == 'type_and_submit(search_bar.input, "red shoes")'
    )
    assert format_action(ACTIONS["terminate"]) == "terminate()"
    assert format_action({"type": "scroll", "direction": "down"}) == 'scroll("down")'
    assert format_action({"type": "type_and_submit", "name": "q", "text": 'say "hi"'}) == (
        'type_and_submit(q, "say \\"hi\\"")'
    )


def test_a_dict_persona_reads_as_text() -> None:
    persona = {"age": "25-34", "shopping_frequency": "weekly", "household": {"kids": 2, "pets": []}}
    step = make_steps(persona=persona)
    variables, _ = prompt_variables(step, max_context_tokens=None, with_action=False)
    assert variables["persona"] == "age: 25-34\nshopping frequency: weekly\nhousehold:\n  kids: 2"
    assert (
        prompt_variables(make_steps(persona="  "), max_context_tokens=None, with_action=False)[0][
            "persona"
        ]
        is None
    )


# -- cutting contexts ---------------------------------------------------------------------------

MARKER = re.compile(r"\[\.\.\. (\d+) tokens cut \.\.\.\]")


def test_a_context_that_fits_is_unchanged(tokenizer: str) -> None:
    n = count_tokens(PAGE)
    for budget in (None, n, n + 100):
        assert cut_context(PAGE, budget) == ContextCut(PAGE, n, n, 0, "none")
    assert cut_context(None, 100) == ContextCut(None, 0, 0, 0, "none")
    assert cut_context("", 100) == ContextCut("", 0, 0, 0, "none")


@pytest.mark.parametrize("budget", [32, 50, 200, 1000])
def test_around_target_keeps_the_focus_and_fits(tokenizer: str, budget: int) -> None:
    focus = "results.item_target.add_to_cart"
    cut = cut_context(LONG_PAGE, budget, focus=focus)
    assert cut.how == "around-target"
    assert count_tokens(cut.text) <= budget
    assert cut.original_tokens == count_tokens(LONG_PAGE)
    assert cut.cut_tokens == cut.original_tokens - cut.kept_tokens > 0
    markers = [int(n) for n in MARKER.findall(cut.text)]
    assert len(markers) == 2  # the target is in the middle: text cut on both sides
    assert sum(markers) == cut.cut_tokens
    assert cut.text.startswith("[... ") and cut.text.endswith(" tokens cut ...]")
    if budget >= 50:
        assert f'name="{focus}"' in cut.text
        assert count_tokens(cut.text) >= budget - 8  # the budget is used, not wasted
    else:
        assert "item_target" in cut.text


def test_around_target_prefers_the_name_attribute(tokenizer: str) -> None:
    page = "results.item_target.add_to_cart is mentioned first, in plain text.\n" + LONG_PAGE
    cut = cut_context(page, 100, focus="RESULTS.ITEM_TARGET.ADD_TO_CART")  # case is ignored
    assert cut.how == "around-target"
    assert 'name="results.item_target.add_to_cart"' in cut.text
    assert "mentioned first" not in cut.text


def test_around_target_at_an_end_needs_one_marker(tokenizer: str) -> None:
    cut = cut_context(LONG_PAGE, 200, focus="results.item_0")
    assert cut.how == "around-target"
    assert cut.text.startswith('<div name="results.item_0">')
    assert MARKER.findall(cut.text) == [str(cut.cut_tokens)]
    assert count_tokens(cut.text) <= 200


@pytest.mark.parametrize("focus", [None, "not.on.this.page"])
def test_head_tail_without_a_focus(tokenizer: str, focus: str | None) -> None:
    cut = cut_context(LONG_PAGE, 300, focus=focus)
    assert cut.how == "head-tail"
    assert count_tokens(cut.text) <= 300
    head, marker, tail = re.split(r"\n(\[\.\.\. \d+ tokens cut \.\.\.\])\n", cut.text)
    assert LONG_PAGE.startswith(head[:-4])  # the last token may end inside a character
    assert LONG_PAGE.endswith(tail[4:])
    assert (
        int(MARKER.match(marker).group(1))
        == cut.cut_tokens
        == cut.original_tokens - cut.kept_tokens
    )
    assert len(head) > len(tail)  # two thirds of the room go to the head


def test_every_budget_fits(tokenizer: str) -> None:
    text = "<p>" + "价格 ünïcode 😀 price $12.99 " * 300 + "</p>"
    for budget in range(32, 400, 17):
        for focus in (None, "😀 price", "ünïcode"):
            cut = cut_context(text, budget, focus=focus)
            assert count_tokens(cut.text) <= budget, (budget, focus)
            assert sum(int(n) for n in MARKER.findall(cut.text)) == cut.cut_tokens


def test_a_budget_too_small_is_an_error() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        cut_context(PAGE, 10)


def test_the_teacher_cut_follows_the_action_and_the_blind_cut_does_not() -> None:
    step = make_steps(
        action={"type": "click", "name": "results.item_target.add_to_cart"}, context=LONG_PAGE
    )
    teacher, cut = prompt_variables(step, max_context_tokens=200, with_action=True)
    assert cut.how == "around-target" and "item_target" in teacher["context"]
    assert teacher["context_cut_tokens"] == cut.cut_tokens > 0
    blind, cut = prompt_variables(step, max_context_tokens=200, with_action=False)
    assert cut.how == "head-tail" and "item_target" not in blind["context"]


def test_a_cut_context_is_announced_in_the_prompt() -> None:
    step = make_steps(context=LONG_PAGE)
    rendered, cut = render_step(
        load_template("web_shopping"), step, max_context_tokens=500, with_action=True
    )
    user = rendered.messages[-1]["content"]
    assert f"{cut.cut_tokens} tokens were cut" in user
    assert cut.text in user


# -- the modules of the prompt layer -------------------------------------------------------------

# Each module and the rationale modules importing it loads: tokens <- context <- variables <-
# prompts, one way; only prompts loads jinja2, and none of them litellm.
PROMPT_LAYERS = {
    "rationale.tokens": set(),
    "rationale.context": {"rationale.errors", "rationale.tokens"},
    "rationale.variables": {"rationale.context", "rationale.errors", "rationale.tokens"},
}


@pytest.mark.parametrize("module", sorted(PROMPT_LAYERS))
def test_prompt_modules_import_one_way(module: str) -> None:
    loaded = modules_loaded_by(module, ("rationale.", "jinja2", "litellm"))
    assert loaded == PROMPT_LAYERS[module] | {module}


def test_the_prompt_helpers_are_still_importable_from_prompts() -> None:
    from rationale import context, tokens, variables

    assert prompts.count_tokens is tokens.count_tokens
    assert prompts.cut_context is context.cut_context and prompts.ContextCut is context.ContextCut
    assert prompts.prompt_variables is variables.prompt_variables
    assert prompts.format_action is variables.format_action
