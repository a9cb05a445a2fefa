"""`rationale import browser-log`: a user's own raw page events, read like MiniWoB's.

The log is hand-written here: two sessions on two pages (a search form, then its results), the
pages as files beside the log (one session) and inline (the other).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_lines

from rationale.errors import SourceError
from rationale.importers import ImportConfig, run_import
from rationale.importers.browser_log import read_browser_log
from rationale.pages import simplify_html

RATIONALE = shutil.which("rationale", path=str(Path(sys.executable).parent)) or "rationale"

SEARCH = """<html><body><h1>Find a flight</h1>
<form id="search" aria-label="Search">
  <label for="from">From</label><input id="from" type="text">
  <label for="to">To</label><input id="to" type="text" data-node-id="17">
  <button type="submit">Search</button>
</form><script>track()</script></body></html>"""

RESULTS = """<html><body><h1>3 flights</h1>
<ul id="flights">
  <li><span>08:00 Boston to Denver</span> <button id="pick-1">Select</button></li>
  <li><span>12:30 Boston to Denver</span> <button id="pick-2">Select</button></li>
</ul>
<div class="footer" onclick="void(0)">© Flights</div></body></html>"""


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RATIONALE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def keys(session: str, t0: int, target: dict, text: str, **page: str) -> list[dict]:
    """keydown/keyup lines typing ``text`` into ``target`` (the page on the first line)."""
    lines = []
    for i, char in enumerate(text):
        down = {"session": session, "time": t0 + 100 * i, "type": "keydown", "key": char}
        lines += [down | {"target": target} | (page if i == 0 else {}),
                  {"session": session, "time": t0 + 100 * i + 50, "type": "keyup",
                   "key": char, "target": target}]  # fmt: skip
    return lines


def write_log(tmp_path: Path) -> Path:
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "search.html").write_text(SEARCH, encoding="utf-8")
    (tmp_path / "pages" / "results.html").write_text(RESULTS, encoding="utf-8")
    a = {"session": "a", "instruction": "Fly from Boston to Denver", "user": "u1"}
    b = {"session": "b"}
    lines = [
        # session a: click From, type Bostn, Backspace, "on", click Search; results page
        a | {"time": 1000, "type": "mousedown", "target": {"css": "#from"},
             "page": "pages/search.html"},
        {"session": "a", "time": 1080, "type": "mouseup", "target": {"css": "#from"}},
        {"session": "a", "time": 1082, "type": "click", "target": {"css": "#from"}},
        *keys("a", 2000, {"css": "#from"}, "Bostn"),
        {"session": "a", "time": 2600, "type": "keydown", "key": "Backspace",
         "target": {"css": "#from"}},
        *keys("a", 2800, {"css": "#from"}, "on"),
        {"session": "a", "time": 3500, "type": "scroll"},
        {"session": "a", "time": 4000, "type": "click",
         "target": {"xpath": "//form/button"}},
        {"session": "a", "time": 6000, "type": "click", "target": {"css": "#pick-2"},
         "page": "pages/results.html"},
        # session b (interleaved, out of order in the file): inline pages, an input event
        b | {"time": "2026-01-01T10:00:05Z", "type": "input", "value": "Denver",
             "target": {"node_id": "17"}},
        b | {"time": "2026-01-01T10:00:00Z", "type": "click", "target": {"node_id": "17"},
             "html": SEARCH},
        b | {"time": "2026-01-01T10:00:09Z", "type": "keydown", "key": "Enter",
             "target": {"node_id": "17"}},
        b | {"time": "2026-01-01T10:00:20Z", "type": "click", "target": {"css": ".footer"},
             "html": RESULTS},
        b | {"time": "2026-01-01T10:00:30Z", "type": "click", "target": {"css": "#flights"}},
    ]  # fmt: skip
    return write_lines(tmp_path / "log.jsonl", lines)


def test_two_sessions_on_two_pages_read_like_miniwob(tmp_path: Path) -> None:
    records = list(read_browser_log(write_log(tmp_path)))
    by_session: dict[str, list] = {}
    for r in records:
        by_session.setdefault(r.session_id, []).append(r)
    search, results = simplify_html(SEARCH), simplify_html(RESULTS)
    a = by_session["a"]
    assert [r.action.model_dump() for r in a] == [
        {"type": "click", "name": "search.from"},
        {"type": "type", "name": "search.from", "text": "Boston"},
        {"type": "click", "name": "search.search"},
        {"type": "click", "name": "pick_2"},
    ]
    assert a[0].meta["events"] == ["mousedown", "mouseup", "click"]
    assert [r.context for r in a] == [search.html] * 3 + [results.html]
    assert a[0].instruction == "Fly from Boston to Denver" and a[0].user_id == "u1"
    b = by_session["b"]
    assert [r.action.model_dump() for r in b] == [
        {"type": "click", "name": "search.to"},
        {"type": "type_and_submit", "name": "search.to", "text": "Denver"},
        {"type": "click", "name": "flights"},  # the footer, named by its text
        {"type": "click", "name": "unnamed.ul.flights"},  # a list: kept and flagged
    ]
    assert b[3].meta["target"] | {"locator": None} == {
        "named": False, "how": "not_actionable", "locator": None,
        "tag": "ul", "id": "flights", "classes": None,
    }  # fmt: skip


def test_the_import_summary_and_validate(tmp_path: Path) -> None:
    log = write_log(tmp_path)
    result = run_import(
        ImportConfig(format="browser-log", source=[str(log)], output=str(tmp_path / "o.jsonl"))
    )
    assert (result.sessions, result.steps) == (2, 8)
    assert result.targets is not None
    assert result.targets["in_page"] == 7 and result.targets["share_in_page"] == 0.875
    proc = run("import", "browser-log", "log.jsonl", "-o", "o.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "targets in their page: 7 of 8 actions (87.50%)" in proc.stderr
    valid = run("validate", "o.jsonl", "--action-space", "o.actions.toml", "--json", cwd=tmp_path)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert json.loads(valid.stdout)["target_in_page"] == {
        "checked": 8,
        "in_page": 7,
        "share": 0.875,
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"time": 1, "type": "click", "target": {"css": "a"}}', "field 'session': missing"),
        ('{"session": "s", "type": "click"}', "field 'target': a click event needs its element"),
        ('{"session": "s", "type": "click", "target": {"id": "x"}}', "field 'target': "),
        ('{"session": "s", "type": "click", "target": {"css": "a"}}', "field 'html': no page yet"),
        ('{"session": "s", "type": "click", "target": {"css": "a"}, "page": "no.html"}',
         "field 'page': cannot read"),
        ('{"session": "s", "type": "click", "target": {"css": "[["}, "html": "<a>x</a>"}',
         "field 'target': cannot use locator"),
        ('{"session": "s", "type": 3}', "field 'type': missing"),
        ('{"session": "s", "type": "input", "value": 5, "target": {"css": "a"}}',
         "field 'value': must be a string"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)  # fmt: skip
def test_a_bad_line_names_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    log = tmp_path / "log.jsonl"
    good = '{"session": "s0", "type": "click", "target": {"css": "a"}, "html": "<a>x</a>"}'
    log.write_text(good + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(SourceError) as err:
        list(read_browser_log(log))
    assert str(err.value).startswith(f"{log} line 3: ") and message in str(err.value)
