"""A simplified page in a prompt is cut by its structure, and the summaries count the target.

`rationale.context.cut_context` recognises the simplifier's text (`rationale.pages.read_page`):
a blind prompt's cut keeps interactive elements before long text and never looks at the action;
a teacher's also keeps the acted-on element. synth, filter and eval report how often the true
target survived the blind cut (run.json, eval.json, the printed summary).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import FIXTURES, record, write_lines
from openai_server import ok

from rationale.context import cut_context
from rationale.pages import read_page, simplify_dom, simplify_html
from rationale.prompts import load_template, render_step
from rationale.schema import ActionRecord
from rationale.sessions import Step
from rationale.tokens import count_tokens

LOREM = " ".join(f"word{i} of a long product description that nobody clicks on" for i in range(60))


def simplified(html: str) -> str:
    return simplify_html(html).html


# A product page: buttons at the top, in the middle between long texts, and at the end.
SHOP = simplified(
    "<html><body>"
    "<nav><a href='/'>Home</a> <a href='/cart'>Cart</a></nav>"
    f"<h1>Trail Runner 2</h1><p>{LOREM}</p>"
    "<button>Add to cart</button>"
    f"<p>{LOREM}</p>"
    "<footer><a href='/help'>Help</a></footer>"
    "</body></html>"
)
# A long list of buttons: a budget keeps the first ones, the last goes.
LIST = simplified(
    "<html><body><ul>"
    + "".join(
        f"<li><button>Item {i}</button> <span>{i} pairs left in stock</span></li>"
        for i in range(80)
    )
    + "</ul></body></html>"
)


def step(context: str, action: dict) -> Step:
    rec = ActionRecord.model_validate(
        {
            "session_id": "s1",
            "step": 0,
            "context": context,
            "action": action,
            "instruction": "Buy the shoes.",
        }
    )
    return Step(rec, ())


def test_the_simplifiers_text_reads_back_exactly_and_nothing_else_does() -> None:
    shop = simplify_html((FIXTURES / "pages" / "shop.html").read_text())
    states = json.loads((FIXTURES / "pages" / "miniwob_flight_steps.json").read_text())
    doms = [s["dom"] for s in (states["states"] if isinstance(states, dict) else states)]
    for page in [shop, *(simplify_dom(d) for d in doms)]:
        back = read_page(page.html)
        assert back is not None and back.lines == page.lines and back.names == page.names
    raw = (FIXTURES / "pages" / "shop.html").read_text()
    one_line = '<div name="bar"><input name="bar.q"/></div><a name="faq">FAQ</a>'
    unwrapped = '<div name="item_1"><span>Item 1</span></div>'  # the simplifier drops the span
    for text in (raw, one_line, unwrapped, "plain text", "", shop.html + "\n"):
        assert read_page(text) is None, text


def test_a_blind_cut_keeps_interactive_elements_before_long_text() -> None:
    names = read_page(SHOP).names
    assert "add_to_cart" in names and count_tokens(SHOP) > 600
    cut = cut_context(SHOP, 300)
    assert cut.how == "page" and count_tokens(cut.text) <= 300 and cut.cut_tokens > 0
    # head and tail would keep the nav and the footer, and lose the button between the texts
    assert all(cut.survived(name) for name in names), cut.text
    assert cut.text.endswith(f"[... {cut.cut_tokens} tokens cut ...]")


def test_a_blind_prompt_of_a_cut_page_is_the_same_whatever_the_action() -> None:
    first = {"type": "click", "name": "item_0"}
    last = {"type": "type_and_submit", "name": "item_79", "text": "SECRET"}
    template = load_template("predict")
    prompts = [
        render_step(template, step(LIST, a), max_context_tokens=200, with_action=False)
        for a in (first, last)
    ]
    assert prompts[0][0] == prompts[1][0] and prompts[0][1] == prompts[1][1]
    assert prompts[0][1].how == "page" and "SECRET" not in json.dumps(prompts[0][0].messages)
    assert prompts[0][1].survived("item_0") and not prompts[0][1].survived("item_79")


def test_the_teacher_cut_keeps_the_target_and_the_page_order_for_the_rest() -> None:
    cut = cut_context(LIST, 200, focus="item_79")
    assert cut.how == "page-target" and count_tokens(cut.text) <= 200
    assert cut.survived("item_79") and cut.survived("item_0")  # the start of the page, too
    page = iter(LIST.splitlines())
    assert all(line in page for line in cut.text.splitlines()[:-1])  # whole lines, in order
    assert "Item 79" in cut.text and "Item 40" not in cut.text


def test_a_context_that_is_not_a_simplified_page_keeps_the_head_tail_cut() -> None:
    raw = (
        "<html><body>"
        + "".join(f'<div class="row"><button id="b{i}">Item {i}</button></div>' for i in range(200))
        + "</body></html>"
    )
    assert cut_context(raw, 200).how == "head-tail"
    assert cut_context(raw, 200, focus="b150").how == "around-target"


# -- the summaries ------------------------------------------------------------------------------

VERIFIER = "You predict the next action"


def responder(body: dict, index: int):
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    if system.startswith(VERIFIER):
        return ok(json.dumps({"action": {"type": "click", "name": "item_0"}}))
    return ok(json.dumps({"rationale": "I want item_0 because it looks like just what I need."}))


def cut_records(tmp_path: Path) -> Path:
    """Four records cut at 200 tokens: two targets survive the blind cut, one does not, one
    action (terminate) has no target."""
    lines = [
        record("s1", 0, context=LIST, action={"type": "click", "name": "item_0"}),
        record("s1", 1, context=LIST, action={"type": "click", "name": "item_1"}),
        record("s1", 2, context=LIST, action={"type": "click", "name": "item_79"}),
        record("s1", 3, context=LIST, action={"type": "terminate"}),
    ]
    return write_lines(tmp_path / "input.jsonl", lines)


@pytest.fixture
def server(openai_server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-page-cut")
    openai_server.responder = responder
    return openai_server


def test_synth_and_filter_report_how_often_the_target_survived(tmp_path: Path, server) -> None:
    from rationale.filter import run_filter
    from rationale.runner import summary_lines
    from rationale.synth import SynthConfig, run_synth
    from rationale.teacher import RetryPolicy

    fast = RetryPolicy(max_attempts=2, backoff=0.01, max_backoff=0.05)
    common = {
        "teacher": "openai/test-model",
        "api_base": server.url,
        "timeout": 5.0,
        "max_context_tokens": 200,
    }
    source = cut_records(tmp_path)
    runs = [
        run_synth(
            SynthConfig(input=str(source), output=str(tmp_path / "run"), verifier="none", **common),
            retry_policy=fast,
        ),
    ]
    accepted = runs[0].counts["accepted"]
    runs.append(
        run_filter(
            SynthConfig(input=str(tmp_path / "run"), output=str(tmp_path / "filtered"), **common),
            retry_policy=fast,
        )
    )
    assert accepted == 4  # the filter judges all four again
    for command, summary, folder in zip(
        ("synth", "filter"), runs, ("run", "filtered"), strict=True
    ):
        cut = json.loads((tmp_path / folder / "run.json").read_text())["context_cut"]
        assert cut["records"] == 4 and cut["targets"] == 3 and cut["target_survived"] == 2, cut
        text = "\n".join(summary_lines(command, summary))
        assert "the target survived the blind cut in 2 of the 3 with a target (67%)" in text


def test_eval_reports_how_often_the_target_survived(
    tmp_path: Path, server, capsys: pytest.CaptureFixture[str]
) -> None:
    from rationale.evaluate import EvalConfig, run_eval

    config = EvalConfig(
        model="openai/gpt-4o-mini",
        data=str(cut_records(tmp_path)),
        output=str(tmp_path / "ev"),
        api_base=server.url,
        backoff=0.01,
        bootstrap=50,
        cases="all",
        max_context_tokens=200,
    )
    server.responder = lambda body, index: ok(
        json.dumps({"rationale": "I pick the first.", "action": {"type": "terminate"}})
    )
    data = run_eval(config).data
    assert data["context_cut"] == {
        "max_context_tokens": 200,
        "records": 4,
        "tokens": data["context_cut"]["tokens"],
        "targets": 3,
        "target_survived": 2,
    }
    assert data["context_cut"]["tokens"] > 0
    on_disk = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert on_disk["context_cut"] == data["context_cut"]
    err = capsys.readouterr().err
    assert (
        "eval: context cut in 4 of 4 cases to 200 tokens; the target survived in 2 of the 3 "
        "with a target (67%)"
    ) in err


def test_a_target_too_big_for_the_budget_falls_back_to_the_window_around_it() -> None:
    rows = "".join(f"<p>line {i}</p>" for i in range(200))
    page = simplified(f"<div><button>Start</button><button><h3>Big</h3>{rows}</button></div>")
    big = read_page(page).names[1]
    cut = cut_context(page, 100, focus=big)
    assert cut.how == "around-target" and count_tokens(cut.text) <= 100 and cut.survived(big)
