"""The page simplifier: what it keeps, the names it gives, what it tells an importer, the cut.

Fixtures: tests/fixtures/pages/shop.html (hand-written) and miniwob_flight_steps.json (three
states of one real MiniWoB++ session, see the README beside it). The share of recorded targets
that get a name is measured on ../shared/data/miniwob when it is there.
"""

from __future__ import annotations

import copy
import gc
import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, ROOT

from rationale.errors import ConfigError, SourceError
from rationale.pages import (
    cut_page,
    find_flagged,
    simplify,
    simplify_dom,
    simplify_html,
)
from rationale.tokens import count_tokens

PAGES = FIXTURES / "pages"
SHARED_MINIWOB = ROOT.parent / "shared" / "data" / "miniwob"
NAME = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


def shop() -> str:
    return (PAGES / "shop.html").read_text(encoding="utf-8")


def steps() -> list[dict[str, Any]]:
    data = json.loads((PAGES / "miniwob_flight_steps.json").read_text(encoding="utf-8"))
    return data["states"]


def nodes(dom: dict[str, Any]) -> list[dict[str, Any]]:
    out, stack = [], [dom]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.get("children") or ())
    return out


def test_scripts_styles_and_hidden_nodes_are_removed() -> None:
    html = simplify_html(shop()).html
    for gone in (
        "TRACKING-SCRIPT",  # <script>
        "color: red",  # <style>
        "Fly &amp; Shop</title",  # <head>
        "HIDDEN-TOKEN",  # type=hidden
        "Hidden by style",  # display: none
        "Hidden by attribute",  # hidden
        "Hidden from readers",  # aria-hidden
        "spacer",
        "page-inner",  # empty and plain wrappers
    ):
        assert gone not in html, gone
    assert "<div>" not in html  # a plain wrapper is unwrapped, not kept empty
    assert "Summer sale" in html and "© 2026 Fly &amp; Shop" in html


def test_zero_size_miniwob_nodes_are_removed() -> None:
    dom = {
        "tag": "BODY", "ref": 1, "width": 300, "height": 300,
        "children": [
            {"tag": "BUTTON", "ref": 2, "text": "Shown", "width": 50, "height": 20},
            {"tag": "BUTTON", "ref": 3, "text": "Flat", "width": 50, "height": 0},
            {"tag": "DIV", "ref": 4, "width": 0, "height": 10,
             "children": [{"tag": "A", "ref": 5, "text": "Inside", "width": 9, "height": 9}]},
        ],
    }  # fmt: skip
    page = simplify_dom(dom)
    assert page.names == ("shown",)
    assert "Flat" not in page.html and "Inside" not in page.html
    inside = dom["children"][2]["children"][0]
    assert page.resolve(inside).how == "hidden"


def test_names_are_unique_readable_and_prefixed_by_their_form_or_section() -> None:
    page = simplify_html(shop().replace("</footer>", "</footer><button>Add to cart</button>"))
    assert len(set(page.names)) == len(page.names)
    assert all(NAME.match(name) for name in page.names), page.names
    for name in (
        "search_form.trip.departure_city",  # <label for=>, inside a form and a fieldset
        "search_form.flexible_dates",  # a wrapping <label>
        "search_form.cabin",  # aria-label
        "search_form.cabin.business",  # an option, under its select
        "search_form.promo_code",  # placeholder
        "search_form.plus",  # a symbol's meaning
        "search_form.search_flights",  # text
        "header.home_page",  # aria-label of an icon link
        "header.shopping_cart",  # the alt text of its image
        "results.columbia_shirt.view_product",  # a card, named by its heading
        "results.travel_pillow.view_product",  # a card whose heading is wrapped
        "results.travel_pillow.add_to_cart",
        "summer_sale",  # onclick
        "chat_with_us",  # role=button
        "generated_id",  # a generated id (ember4821) is not used
        "add_to_cart",
        "add_to_cart_2",  # duplicates: a suffix by document order
    ):
        assert name in page.names, (name, page.names)
    assert f'name="{page.names[0]}"' in page.html


def test_a_label_beats_the_position() -> None:
    html = "<form><label>Name <input></label><label>Email <input></label><input></form>"
    assert simplify_html(html).names == ("form.name", "form.email", "form.text")


def test_deeply_nested_pages_keep_their_controls() -> None:
    # libxml2 drops what lies below 256 levels unless told otherwise; real pages get deep.
    page = simplify_html("<div>" * 1000 + "<button>Go</button>" + "</div>" * 1000)
    assert page.names == ("go",)
    lists = simplify_html("<ul><li>" * 600 + "<a href='/x'>Deep link</a>" + "</li></ul>" * 600)
    assert lists.names == ("deep_link",)


def test_raw_html_and_miniwob_dom_both_work() -> None:
    dom = steps()[0]["dom"]
    from_dom = simplify(dom)
    assert from_dom.html == simplify_dom(dom).html
    assert "search_form.find_flights" in from_dom.names
    assert "search_form.from" in from_dom.names  # the wrapping label's text
    assert simplify(shop()).html == simplify_html(shop()).html
    with pytest.raises(SourceError, match="MiniWoB DOM"):
        simplify({"children": []})
    with pytest.raises(SourceError, match="empty"):
        simplify("  ")


def test_names_are_stable_across_the_steps_of_a_real_session() -> None:
    states = steps()
    pages = [simplify_dom(s["dom"]) for s in states]
    assert len({p.html for p in pages}) == 3  # the page changed between the steps
    seen: dict[tuple[Any, ...], str] = {}
    shared = 0
    for state, page in zip(states, pages, strict=True):
        for node in nodes(state["dom"]):
            target = page.resolve(node)
            if target.how != "element":
                continue
            key = (node["ref"], node["tag"], node.get("id"), node.get("text"))
            if key in seen:
                shared += 1
                assert seen[key] == target.name, key
            seen[key] = target.name  # type: ignore[assignment]
    assert shared >= 30


def test_output_is_blind_to_the_action() -> None:
    state = steps()[2]
    recorded = state["dom"]
    assert find_flagged(recorded)  # the recorded step's own target flag is in the fixture
    other = copy.deepcopy(recorded)
    for node in nodes(other):
        node.pop("recordingTarget", None)
    done = next(n for n in nodes(other) if n.get("id") == "btnDone")
    done["recordingTarget"] = True
    flagged, moved = simplify_dom(recorded), simplify_dom(other)
    assert flagged.html == moved.html
    assert flagged.names == moved.names
    assert moved.resolve(done).name == "cal_modal_window.btn_done"


def test_resolve_tells_the_importer_the_name_or_why_none() -> None:
    first = steps()[0]["dom"]
    page = simplify_dom(first)
    by_id = {n.get("id"): n for n in nodes(first) if n.get("id")}
    assert page.resolve(by_id["geo-from"]).name == "search_form.from"
    label = next(n for n in nodes(first) if n["tag"] == "LABEL" and n.get("children"))
    assert page.resolve(label).how == "label"  # a click on a label is a click on its control
    assert page.resolve(by_id["searchForm"]).name is None
    assert page.resolve(by_id["searchForm"]).how == "not_actionable"
    assert page.resolve(copy.deepcopy(by_id["geo-from"])).how == "unknown"

    html = simplify_html(shop())
    gc.collect()  # lxml recreates element proxies that nothing holds: the page must hold them
    assert html.resolve_target(css="form button span").name == "search_form.search_flights"
    assert html.resolve_target(css="form button span").how == "inside"
    assert html.resolve_target(xpath="//label[@for='dep']").name == (
        "search_form.trip.departure_city"
    )
    assert html.resolve_target(attribute=("backend_node_id", "502")).name == (
        "results.travel_pillow.view_product"
    )
    assert html.resolve_target(css="div[hidden] a").how == "hidden"
    assert html.resolve_target(css="#results").how == "not_actionable"
    assert html.resolve_target(css="#nothing").how == "unknown"
    assert html.resolve_target(css=".card button").how == "ambiguous"
    with pytest.raises(SourceError, match="exactly one"):
        html.locate()
    with pytest.raises(SourceError, match="MiniWoB"):
        page.locate(css="a")


def long_page() -> str:
    prose = " ".join(f"Paragraph {i} says something long about the product." for i in range(30))
    items = "".join(f"<li><p>{prose}</p><button>Buy item {i}</button></li>" for i in range(6))
    return f"<main><ul>{items}</ul><p>{prose}</p><a href='/more'>More results</a></main>"


def test_the_cut_keeps_actionable_elements_before_long_text() -> None:
    page = simplify_html(long_page())
    whole = count_tokens(page.html)
    assert whole > 1500
    cut = cut_page(page, 400)
    assert cut.cut and cut.tokens <= 400 and count_tokens(cut.text) == cut.tokens
    assert cut.original_tokens == whole
    assert cut.names == frozenset(page.names)  # every button and link fits; the prose did not
    assert all(cut.survived(name) for name in page.names)
    assert "tokens cut ...]" in cut.text
    assert "<ul>" in cut.text and "</ul>" in cut.text  # the structure around the buttons stays

    tight = cut_page(page, 60)
    assert tight.tokens <= 60
    assert tight.survived("buy_item_0") and not tight.survived("more_results")
    assert cut_page(page, 400) == cut  # the same page and budget give the same cut

    assert cut_page(page, None).text == page.html and not cut_page(page, None).cut
    with pytest.raises(ConfigError, match="at least"):
        cut_page(page, 10)


# -- the real sessions in ../shared ------------------------------------------------------------


def target_share(files: list[Path]) -> tuple[int, int]:
    """(click events with a recorded target, those whose target got a name)."""
    total = named = 0
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            session = json.load(f)
        for state in session["states"][1:]:
            action = state.get("action") or {}
            if action.get("timing") != 1 or action.get("type") != "click":
                continue
            flagged = find_flagged(state["dom"])
            if flagged:
                total += 1
                named += simplify_dom(state["dom"]).resolve(flagged[0]).named
    return total, named


def miniwob_files() -> list[Path]:
    return sorted(SHARED_MINIWOB.glob("*/*/*.json.gz"))


@pytest.mark.skipif(not SHARED_MINIWOB.is_dir(), reason="../shared/data/miniwob is absent")
def test_share_of_miniwob_click_targets_named_on_a_sample() -> None:
    files = miniwob_files()[::10]  # 41 of the 403 sessions; all of them under -m slow
    total, named = target_share(files)
    print(f"\nMiniWoB sample: {named}/{total} click targets named ({100 * named / total:.2f}%)")
    assert total > 400
    assert named / total >= 0.96


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MINIWOB.is_dir(), reason="../shared/data/miniwob is absent")
def test_share_of_miniwob_click_targets_named_on_all_sessions() -> None:
    total, named = target_share(miniwob_files())
    print(f"\nMiniWoB: {named}/{total} click targets named ({100 * named / total:.2f}%)")
    assert named / total >= 0.97
