"""The Mind2Web and OPeRA importers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import EXAMPLES, FIXTURES, SHARED_MIND2WEB

from rationale import RecordFile, SourceError, read_mind2web, read_opera
from rationale.importers.mind2web import convert_session, element_name, slug
from rationale.records import write_records

RAW_SAMPLE = EXAMPLES / "mind2web" / "raw_shopping_sample.json"
OPERA = FIXTURES / "opera"


def _task(*steps: tuple[str, dict], task_id: str = "t1") -> dict:
    """A raw Mind2Web task from (action_repr, action) pairs."""
    return {
        "website": "shop",
        "domain": "Shopping",
        "subdomain": "General",
        "annotation_id": task_id,
        "confirmed_task": "Buy a hat",
        "action_reprs": [r for r, _ in steps],
        "actions": [a for _, a in steps],
    }


def _action(op: str, value: str = "", *candidates: dict, original_op: str | None = None) -> dict:
    return {
        "action_uid": f"uid-{op}-{value}",
        "raw_html": "",
        "cleaned_html": "",
        "operation": {"op": op, "original_op": original_op or op, "value": value},
        "pos_candidates": list(candidates),
        "neg_candidates": [],
    }


def _cand(tag: str, original: bool = True, **attrs: str) -> dict:
    return {
        "tag": tag,
        "attributes": json.dumps(attrs),
        "is_original_target": original,
        "is_top_level_target": True,
        "backend_node_id": attrs.get("backend_node_id", "1"),
    }


def test_slug_rules() -> None:
    assert slug("Shop by Category") == "shop_by_category"
    assert slug("  Price: Low -> High!! ") == "price_low_high"
    assert slug("Größe") == "grösse"  # case folding, as in normalize_name
    assert slug("ＴＶ & Audio") == "tv_audio"
    assert slug("...") == ""
    assert len(slug("x" * 200)) == 60


def test_element_name_falls_back_in_documented_order() -> None:
    assert element_name("link", "Shop by Category", {"id": "nav"}) == "link.shop_by_category"
    assert element_name("svg", "", {"id": "close-btn", "aria_label": "Close"}) == "svg.close_btn"
    assert element_name("button", "", {"aria_label": "Close dialog"}) == "button.close_dialog"
    assert element_name("input", "", {"name": "q", "placeholder": "Search"}) == "input.q"
    assert element_name("input", "", {"placeholder": "Search"}) == "input.search"
    assert element_name("img", "", {"alt": "Logo", "class": "a b"}) == "img.logo"
    assert element_name("svg", "", {"class": "MuiSvgIcon-root css-1"}) == "svg.muisvgicon_root"
    assert element_name("svg", "", {}) == "svg.unlabeled"
    assert element_name("", "Go", {}) == "element.go"


def test_mapping_of_each_operation() -> None:
    task = _task(
        ("[link]  Shop by Category -> CLICK", _action("CLICK", "", _cand("a"))),
        ("[textbox]  Search -> TYPE: red  hat", _action("TYPE", "red  hat", _cand("input"))),
        (
            "[combobox]  Sort by -> SELECT: Price: Low to High",
            _action("SELECT", "Price: Low to High", _cand("select", id="sort")),
        ),
        ("[span]  Menu -> HOVER", _action("CLICK", "", _cand("span"), original_op="HOVER")),
        (
            "[svg]   -> CLICK",
            _action(
                "CLICK",
                "",
                _cand("svg", original=False, id="wrong"),
                _cand("svg", original=True, id="right"),
            ),
        ),
        ("[button]   -> CLICK", _action("CLICK", "")),
    )
    records = convert_session(task)
    assert [r.step for r in records] == list(range(6))
    assert [r.action.model_dump() for r in records] == [
        {"type": "click", "name": "link.shop_by_category"},
        {"type": "type_and_submit", "name": "textbox.search", "text": "red  hat"},
        {"type": "click", "name": "combobox.sort_by.price_low_to_high"},
        {"type": "click", "name": "span.menu"},
        {"type": "click", "name": "svg.right"},  # the original target wins
        {"type": "click", "name": "button.unlabeled"},  # no candidate, no label
    ]
    assert all(r.instruction == "Buy a hat" and r.context is None for r in records)
    assert records[3].meta["original_op"] == "HOVER" and records[3].meta["op"] == "CLICK"
    assert records[4].meta["target"]["attributes"] == {"id": "right"}
    assert records[4].meta["positive_candidates"] == 2
    assert records[5].meta["target"] is None
    assert records[0].meta["website"] == "shop"
    with_end = convert_session(task, add_terminate=True)
    assert with_end[-1].action.model_dump() == {"type": "terminate"} and with_end[-1].step == 6


def test_bad_source_names_file_and_task(tmp_path: Path) -> None:
    bad = _task(("[link]  X -> CLICK", _action("DRAG")))
    path = tmp_path / "train_x.json"
    path.write_text(json.dumps([bad]))
    with pytest.raises(SourceError, match=r"train_x.json: task 0 \(t1\): .*DRAG"):
        list(read_mind2web([path]))
    path.write_text("{not json")
    with pytest.raises(SourceError, match="not a JSON file"):
        list(read_mind2web([path]))
    with pytest.raises(SourceError, match="also in"):
        list(read_mind2web([RAW_SAMPLE, RAW_SAMPLE]))


def test_shipped_example_is_the_importers_output(tmp_path: Path) -> None:
    out = tmp_path / "sample.jsonl"
    n = write_records(out, read_mind2web([RAW_SAMPLE]))
    shipped = EXAMPLES / "mind2web" / "shopping_sample.jsonl"
    assert out.read_text(encoding="utf-8") == shipped.read_text(encoding="utf-8")
    with RecordFile(shipped) as records:
        stats = records.stats()
    assert stats["steps"] == n == 169 and stats["sessions"] == 16
    assert stats["action_types"]["type_and_submit"] > 0


@pytest.mark.skipif(not SHARED_MIND2WEB.is_dir(), reason="../shared/data/mind2web is absent")
def test_all_shared_mind2web_files_give_900_sessions_and_6918_steps(tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    write_records(out, read_mind2web([SHARED_MIND2WEB]))
    with RecordFile(out) as records:
        stats = records.stats()
    assert (stats["sessions"], stats["steps"]) == (900, 6918)
    assert stats["action_types"] == {"click": 6080, "type_and_submit": 838}
    out2 = tmp_path / "terminated.jsonl"
    write_records(
        out2, read_mind2web(sorted(SHARED_MIND2WEB.glob("train_*.json")), add_terminate=True)
    )
    with RecordFile(out2) as records:
        stats = records.stats()
    assert stats["steps"] == 6918 + 900 and stats["outcomes"]["terminate"] == 900


def _check_opera(records: list) -> None:
    by_key = {(r.session_id, r.step): r for r in records}
    assert sorted(by_key) == [("sA", 0), ("sA", 1), ("sA", 2), ("sB", 0), ("sB", 1)]
    a0, a1, a2 = by_key["sA", 0], by_key["sA", 1], by_key["sA", 2]
    assert a0.action.model_dump() == {
        "type": "type_and_submit",
        "name": "search_bar.input",
        "text": "columbia  shirt",
    }
    assert a1.action.model_dump() == {
        "type": "click",
        "name": "search_results.columbia_shirt.view_product",
    }
    assert a2.action.model_dump() == {"type": "click", "name": "product.buy_now"}
    assert a1.rationale == "This one has good reviews." and a0.rationale is None
    assert a1.context.startswith("<html>")
    assert a1.meta["click_type"] == "product_link" and a1.meta["action_id"] == "2"
    assert set(a1.meta) == {
        "action_id",
        "timestamp",
        "click_type",
        "mouse_position",
        "element_meta",
        "url",
        "window_size",
        "page_meta",
        "products",
        "image",
    }
    assert by_key["sB", 1].action.model_dump() == {"type": "terminate"}


def test_opera_jsonl_with_sessions_and_users() -> None:
    records = list(
        read_opera(
            OPERA / "actions.jsonl",
            sessions=[OPERA / "sessions.jsonl"],
            users=[OPERA / "users.jsonl"],
        )
    )
    _check_opera(records)
    a = next(r for r in records if r.session_id == "sA")
    b = next(r for r in records if r.session_id == "sB")
    assert a.user_id == "u1" and a.persona == {"age": "25-34", "shopping_frequency": "weekly"}
    assert b.user_id == "u2" and b.persona == "prefers not to say"
    assert all(r.user_id is None for r in read_opera(OPERA / "actions.jsonl"))


def test_opera_parquet_folder_is_classified_by_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    for name in ("actions", "sessions", "users"):
        rows = [json.loads(line) for line in (OPERA / f"{name}.jsonl").read_text().splitlines()]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}_part0.parquet")
    records = list(read_opera(tmp_path))
    _check_opera(records)
    assert {r.user_id for r in records} == {"u1", "u2"}


def test_opera_bad_rows_name_file_line_and_field(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (OPERA / "actions.jsonl").read_text().splitlines()]
    rows[2]["action_type"] = "scroll"
    path = tmp_path / "actions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        SourceError, match=r"actions.jsonl line 3: action_type 'scroll' is not one of"
    ):
        list(read_opera(path))
    rows[2]["action_type"], rows[2]["semantic_id"] = "click", ""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SourceError, match=r"line 3: semantic_id is empty"):
        list(read_opera(path))
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(OPERA / "users.jsonl", empty)
    with pytest.raises(SourceError, match=r"no \.jsonl or \.parquet file with an action_type"):
        list(read_opera(empty))


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        # json.loads raised RecursionError here: the import crashed with a traceback.
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 200 levels"),
        # json.loads read this, but then the record could not be written (pydantic's limit).
        (b"[" * 300 + b"]" * 300, "nested more than 200 levels"),
        # Not UTF-8: reading the file as text raised UnicodeDecodeError, a crash.
        (b'"caf\xe9"', "not valid JSON"),
    ],
    ids=["100k-deep", "300-deep", "not-utf8"],
)
def test_opera_unreadable_line_is_one_line_error(
    tmp_path: Path, extra: bytes, problem: str
) -> None:
    path = tmp_path / "actions.jsonl"
    good = (OPERA / "actions.jsonl").read_bytes().splitlines()[0]
    bad = good.rstrip()[:-1] + b', "extra": ' + extra + b"}"  # a good row with one more field
    path.write_bytes(good + b"\n" + bad + b"\n")
    with pytest.raises(SourceError, match=rf"actions\.jsonl line 2: {problem}") as caught:
        list(read_opera(path))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_mind2web_too_deep_file_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "train_deep.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)  # json.loads: RecursionError
    with pytest.raises(SourceError, match=r"train_deep\.json: nested more than 200 levels"):
        list(read_mind2web([path]))


MIND2WEB_HTML = FIXTURES / "mind2web_html" / "train_0.json"


def test_mind2web_pages_become_context_and_targets_their_names() -> None:
    records = list(read_mind2web([MIND2WEB_HTML]))
    got = {r.meta["action_uid"]: r for r in records}
    assert [(uid, r.action.name, r.meta.get("target_how")) for uid, r in got.items()] == [
        ("a1", "search.reservations_city_search_type.pickup", "element"),  # SELECT: the option
        ("a2", "search.find_a_location", "element"),  # TYPE
        ("a3", "search.boston_ma_us", "inside"),  # text inside a role=option item
        ("a4", "search.mar_7", "inside"),  # an svg icon inside an is_clickable div
        ("a5", "search.choose_a_date.18", "element"),
        ("a6", "div.results", "not_actionable"),  # a container: today's name, flagged
        ("a7", "button.update_search", "no_candidate"),
        ("b1", "header.shop_by_category", "element"),  # from raw_html
        ("b2", "svg.icon_cart", "hidden"),  # an svg in a plain div: no name
        ("b3", "filters.free_shipping", "label"),  # a label is its checkbox
        ("b4", "combobox.sort_by.price_high_to_low", "option_not_in_page"),
        ("b5", "textbox.search", None),  # no page
        ("b6", "results.add_to_cart", "element"),  # the original target, not results.add_to_cart_2
    ]
    assert got["a2"].action.model_dump() == {
        "type": "type_and_submit",
        "name": "search.find_a_location",
        "text": "Boston",
    }
    for r in records:
        if r.meta.get("target_in_page"):
            assert f'name="{r.action.name}"' in r.context
            assert r.meta["target_how"] in ("element", "inside", "label")
        elif r.context is not None:
            assert r.meta["target_in_page"] is False
            assert r.action.name == r.meta["repr_name"]  # today's name derivation is kept
            assert f'name="{r.action.name}"' not in r.context
    assert got["a1"].meta["page"] == "cleaned_html"  # preferred to the raw_html also there
    assert got["b1"].meta["page"] == "raw_html"
    assert got["b5"].context is None and "page" not in got["b5"].meta
    raw_only = got["b1"].context
    assert "<script" not in raw_only and "dataLayer" not in raw_only
    assert "bounding_box" not in raw_only
    # The recorder's attributes reach the simplifier as HTML's: aria_label, input_value, the
    # selected option, is_clickable (a handler: the div is named, the onclick never shown).
    page = got["a1"].context
    assert '<button name="header.main.open_menu" aria-label="Open menu">' in page
    assert 'value="Columbus, OH, US"' in page and "Dine-in" in page
    assert 'value="DINE_IN" selected>' in page and 'value="PICKUP">' in page
    assert "onclick" not in page and "Cookie settings" not in page  # display:none is gone
    with_page = [r for r in records if r.context is not None]
    named = [r for r in with_page if r.meta["target_in_page"]]
    assert (len(named), len(with_page)) == (8, 12)


def test_mind2web_page_is_blind_to_the_action() -> None:
    (task, _) = json.loads(MIND2WEB_HTML.read_text(encoding="utf-8"))
    first, second = convert_session(task)[:2]  # one page, a SELECT then a TYPE
    assert task["actions"][0]["cleaned_html"] == task["actions"][1]["cleaned_html"]
    assert first.context == second.context and first.action.name != second.action.name
    moved = json.loads(json.dumps(task))
    moved["actions"][0]["pos_candidates"][0]["backend_node_id"] = "40"  # the submit button
    moved["action_reprs"][0] = "[button]  Update search -> CLICK"
    moved["actions"][0]["operation"] = {"op": "CLICK", "original_op": "CLICK", "value": ""}
    again = convert_session(moved)[0]
    assert again.context == first.context and again.action.name == "search.update_search"


def test_mind2web_recorded_flags_count_only_when_true() -> None:
    from rationale.importers.mind2web import html_for_simplifier
    from rationale.pages import simplify_html

    html = html_for_simplifier(
        '<input type="checkbox" id="a" input_checked="true">'
        '<input type="checkbox" id="b" input_checked="false">'
        '<button aria-label="Kept" aria_label="Replaced">x</button>'
        '<span is_clickable="false">plain</span><span is_clickable="true">Go</span>'
    )
    page = simplify_html(html)
    assert '<input name="a" type="checkbox" checked />' in page.html
    assert '<input name="b" type="checkbox" />' in page.html
    assert 'aria-label="Kept"' in html and "Replaced" not in html
    assert page.names == ("a", "b", "kept", "go")  # the span with is_clickable="false" is text
    assert html_for_simplifier("<p>nothing recorded</p>") == "<p>nothing recorded</p>"


def test_mind2web_unreadable_page_names_file_task_action_and_field(tmp_path: Path) -> None:
    task = _task(("[link]  Home -> CLICK", _action("CLICK", "", _cand("a"))))
    task["actions"][0]["cleaned_html"] = "<!-- a page of only a comment -->"
    path = tmp_path / "train_bad.json"
    path.write_text(json.dumps([task]))
    with pytest.raises(
        SourceError,
        match=r"train_bad\.json: task 0 \(t1\): actions\[0\]\.cleaned_html: page HTML cannot be",
    ):
        list(read_mind2web([path]))


#: The meta of an action without a page, as before pages: nothing is added.
_META_WITHOUT_PAGE = {
    "website", "domain", "subdomain", "action_uid", "op", "original_op", "value", "action_repr",
    "target", "positive_candidates",
}  # fmt: skip


@pytest.mark.skipif(not SHARED_MIND2WEB.is_dir(), reason="../shared/data/mind2web is absent")
def test_mind2web_without_html_imports_as_before() -> None:
    # The shipped sample's byte-for-byte check is test_shipped_example_is_the_importers_output.
    for record in read_mind2web([SHARED_MIND2WEB]):
        assert record.context is None
        assert set(record.meta) == _META_WITHOUT_PAGE
