"""The consistency filter against the scripted server: rules, the blind verifier, regeneration,
K-sampling, the standalone `rationale filter`, and the report."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from helpers import EXAMPLES, record, write_lines
from openai_server import ok, status

from rationale import RationaleError
from rationale.filter import run_filter
from rationale.rules import RulesConfig, check_rules
from rationale.rundir import read_run_json
from rationale.synth import SynthConfig, run_synth
from rationale.teacher import RetryPolicy

FAST = RetryPolicy(max_attempts=3, backoff=0.01, max_backoff=0.05)
GOOD = "I want to open {name} because it looks like exactly what I need."
BEHAVIOURS = {
    "empty": "",
    "short": "I buy it.",
    "long": "I " + " ".join(["really"] * 70) + " want it.",
    "third": "This looks like the nicest option on the page.",
    "hindsight": "I think the user clicked this because it was the cheapest one.",
    "pasted": "{name}",
    "vague": "I want to look around a bit more before I decide anything.",
}


def _teacher_answer(body: dict) -> str:
    """The simulated teacher: behaviour chosen by the target's name (and the sample's seed)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    done = user.split("## What they did next", 1)[1].strip().splitlines()[0]
    m = re.match(r"(\w+)\(([^,)]+)(?:, \"(.*)\")?\)", done)
    kind, name, text = m.group(1), m.group(2), m.group(3)
    feedback = len(body["messages"]) > 2  # a regeneration round carries feedback
    if kind == "type_and_submit":
        return f"I want to search for '{text}' in {name} to find it."
    behaviour = name.split(".")[-1].rsplit("_", 1)[0] if name.startswith("item.") else _hashed(name)
    if behaviour == "regen":
        return GOOD.format(name=name) if feedback else BEHAVIOURS["vague"]
    if behaviour == "samples":  # seed = config seed + sample: sample 0 is vague, others good
        return BEHAVIOURS["vague"] if body.get("seed", 0) == 0 else GOOD.format(name=name)
    return BEHAVIOURS.get(behaviour, GOOD).format(name=name)


def _hashed(name: str) -> str:
    """For real logs: a deterministic behaviour per element name, good half of the time."""
    options = ["good", "good", "good", "good", *BEHAVIOURS, "regen", "samples"]
    return options[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(options)]


def _verifier_answer(body: dict) -> str:
    """The simulated blind verifier: it can only follow a rationale that names the element."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    thought = user.split("## Their thought right before acting", 1)[1].strip()
    if m := re.search(r"search for '(.*)' in ([\w.]+)", thought):
        return json.dumps(
            {"action": {"type": "type_and_submit", "name": m.group(2), "text": m.group(1)}}
        )
    names = re.findall(r"\b[a-z_]+\.[\w.]*\w", thought)
    return json.dumps({"action": {"type": "click", "name": names[0] if names else "page.body"}})


def responder(body: dict, index: int):
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    if system.startswith("You predict the next action"):
        # blindness is checked on the request log after each test (see `server`): an assert
        # here would only turn into a 500 that a retry hides
        return ok(_verifier_answer(body))
    return ok(json.dumps({"rationale": _teacher_answer(body)}))


def verifier_requests(server) -> list[dict]:
    return [
        r for r in server.requests
        if any(m["role"] == "system" and m["content"].startswith("You predict the next action")
               for m in r["body"].get("messages", []))
    ]  # fmt: skip


def assert_verifier_blind(server) -> None:
    """No verifier request shows the action: not the template's section, not its JSON."""
    for req in verifier_requests(server):
        text = json.dumps(req["body"])
        assert "What they did next" not in text, f"verifier request {req['index']} saw the action"


@pytest.fixture
def server(openai_server):
    openai_server.responder = responder
    yield openai_server
    assert_verifier_blind(openai_server)  # a failure here fails the test


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-filter")


PAGE = "<page>" + "".join(
    f'<a name="item.{b}_1">{b}</a>'
    for b in ["good", *BEHAVIOURS, "regen", "samples"]
) + '<input name="search.box"/></page>'  # fmt: skip


def records_file(tmp_path: Path) -> Path:
    names = ["good", *BEHAVIOURS, "regen", "samples"]
    lines = [
        record("s1", i, context=PAGE, action={"type": "click", "name": f"item.{b}_1"})
        for i, b in enumerate(names)
    ]
    lines.append(
        record("s2", 0, context=PAGE,
               action={"type": "type_and_submit", "name": "search.box", "text": "red shoes"})
    )  # fmt: skip
    return write_lines(tmp_path / "input.jsonl", lines)


def synth(tmp_path: Path, server, input_file: Path, **overrides):
    config = {
        "input": str(input_file),
        "output": str(tmp_path / "run"),
        "teacher": "openai/test-model",
        "api_base": server.url,
        "concurrency": 4,
        "timeout": 5.0,
        **overrides,
    }
    return run_synth(SynthConfig(**config), retry_policy=FAST)


def lines(run: Path, state: str) -> dict[str, dict]:
    file = run / f"{state}.jsonl"
    if not file.exists():
        return {}
    out = {}
    for line in file.read_text().splitlines():
        rec = json.loads(line)
        out[rec["record"]["action"]["name"]] = rec
    return out


def test_every_path_of_the_filter(tmp_path: Path, server) -> None:
    source = records_file(tmp_path)
    summary = synth(tmp_path, server, source)
    run = tmp_path / "run"
    accepted, rejected = lines(run, "accepted"), lines(run, "rejected")
    assert summary.counts["failed"] == 0
    assert sum(summary.counts.values()) == 11  # one line per input record
    assert set(accepted) == {"item.good_1", "search.box"}
    expected = {
        "item.empty_1": "empty",
        "item.short_1": "too_short",
        "item.long_1": "too_long",
        "item.third_1": "first_person",
        "item.hindsight_1": "hindsight",
        "item.pasted_1": "pasted_action",
        "item.vague_1": "verifier",
        "item.regen_1": "verifier",  # one round only: regeneration is off by default
        "item.samples_1": "verifier",
    }
    for name, rule in expected.items():
        reasons = rejected[name]["reasons"]
        assert any(r.startswith(rule) for r in reasons), (name, reasons)
    # rule rejections never reach the verifier; verifier rejections store its prediction
    assert rejected["item.short_1"]["candidates"][0]["verification"] is None
    vague = rejected["item.vague_1"]
    assert vague["prediction"] == {"type": "click", "name": "page.body"}
    assert vague["candidates"][0]["verification"]["match"] is False
    good = accepted["item.good_1"]
    assert good["prediction"] == {"type": "click", "name": "item.good_1"}
    assert accepted["search.box"]["prediction"]["text"] == "red shoes"
    # the report
    report = json.loads((run / "run.json").read_text())["report"]
    assert report["counts"] == {"accepted": 2, "rejected": 9, "failed": 0}
    for rule in ("empty", "too_short", "too_long", "first_person", "hindsight", "pasted_action",
                 "verifier"):  # fmt: skip
        assert report["rejections_per_rule"]["records"][rule] >= 1, rule
    assert report["per_action_type"]["type_and_submit"]["acceptance"] == 1.0
    confusion = report["verifier_confusion"]["click"]
    assert confusion["predicted"]["click"] == 4 and confusion["exact_match"] == 1
    assert report["spend"]["verifier"]["requests"] == 5
    png = run / "acceptance.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regeneration_with_feedback_then_accepted(tmp_path: Path, server) -> None:
    summary = synth(tmp_path, server, records_file(tmp_path), max_attempts=2)
    run = tmp_path / "run"
    accepted = lines(run, "accepted")
    regen = accepted["item.regen_1"]
    assert [(c["round"], c["state"]) for c in regen["candidates"]] == [
        (0, "rejected"),
        (1, "accepted"),
    ]
    # the second request carried the first answer and the feedback
    asked = [
        r["body"]["messages"]
        for r in server.requests
        if "What they did next\\nclick(item.regen_1)" in json.dumps(r["body"])
    ]
    feedback = [m for m in asked if len(m) > 2]
    assert feedback and "predicted click(page.body)" in feedback[0][-1]["content"]
    assert "item.regen_1" in feedback[0][-1]["content"]  # the true action is named
    # a rule-rejected rationale is regenerated too, and every candidate is kept
    assert len(lines(run, "rejected")["item.short_1"]["candidates"]) == 2
    assert sum(summary.counts.values()) == 11


@pytest.mark.parametrize("keep", ["first", "all"])
def test_k_sampling_with_both_keep_modes(tmp_path: Path, server, keep: str) -> None:
    summary = synth(tmp_path, server, records_file(tmp_path), samples=3, temperature=0.7, keep=keep)
    run = tmp_path / "run"
    accepted = lines(run, "accepted")
    samples = accepted["item.samples_1"]
    states = [(c["sample"], c["state"]) for c in samples["candidates"]]
    if keep == "first":
        assert states == [(0, "rejected"), (1, "accepted")]  # stops at the first that passes
    else:
        assert states == [(0, "rejected"), (1, "accepted"), (2, "accepted")]
    assert samples["rationale"] == GOOD.format(name="item.samples_1")
    good = accepted["item.good_1"]
    assert len(good["candidates"]) == (1 if keep == "first" else 3)
    # one line per input record: the accepted candidates are nested, not extra lines
    assert sum(summary.counts.values()) == 11
    total = sum(len(lines(run, s)) for s in ("accepted", "rejected", "failed"))
    assert total == 11


def test_samples_need_temperature(tmp_path: Path, server) -> None:
    with pytest.raises(Exception, match="--temperature"):
        synth(tmp_path, server, records_file(tmp_path), samples=2)


def test_a_failing_verifier_fails_the_record(tmp_path: Path, server) -> None:
    server.fault(lambda body: "You predict the next action" in json.dumps(body), status(500),
                 times=None)  # fmt: skip
    summary = synth(tmp_path, server, records_file(tmp_path))
    failed = lines(tmp_path / "run", "failed")
    assert set(failed) == {"item.good_1", "item.vague_1", "item.regen_1", "item.samples_1",
                           "search.box"}  # fmt: skip
    assert failed["item.good_1"]["error"]["category"] == "server"
    assert sum(summary.counts.values()) == 11


def test_standalone_filter_is_resumable_and_uses_the_cache(tmp_path: Path, server) -> None:
    source = records_file(tmp_path)
    synth(tmp_path, server, source, verifier="none")
    run = tmp_path / "run"
    assert len(lines(run, "accepted")) == 5  # without the verifier, rule-passing ones stay
    before = server.count
    config = SynthConfig(input=str(run), output=str(tmp_path / "filtered"),
                         api_base=server.url, concurrency=2)  # fmt: skip
    summary = run_filter(config, retry_policy=FAST)
    filtered = tmp_path / "filtered"
    assert set(lines(filtered, "accepted")) == {"item.good_1", "search.box"}
    assert sum(summary.counts.values()) == 11  # rejected lines are carried over
    assert server.count - before == 5  # only the verifier, once per accepted rationale
    again = run_filter(config, retry_policy=FAST)
    assert server.count - before == 5 and again.counts == summary.counts
    # a fresh output folder is served from the cache
    fresh = run_filter(config.model_copy(update={"output": str(tmp_path / "f2")}),
                       retry_policy=FAST)  # fmt: skip
    assert server.count - before == 5 and fresh.tally.cache_hits == 5


def test_the_shipped_mind2web_example_shows_every_path(tmp_path: Path, server) -> None:
    """The issue's check: Mind2Web records (null contexts) through synth with the verifier."""
    summary = synth(
        tmp_path, server, EXAMPLES / "mind2web" / "shopping_sample.jsonl",
        samples=2, temperature=0.5, keep="all", max_attempts=2, concurrency=8,
    )  # fmt: skip
    report = json.loads((tmp_path / "run" / "run.json").read_text())["report"]
    assert sum(summary.counts.values()) == report["records"] == 169
    rules = report["rejections_per_rule"]["candidates"]
    for rule in ("empty", "too_short", "too_long", "first_person", "hindsight", "pasted_action",
                 "verifier"):  # fmt: skip
        assert rules.get(rule, 0) >= 1, (rule, rules)
    assert report["counts"]["accepted"] > 0 and report["counts"]["rejected"] > 0
    # a responder that raises answers 500: such records end as failed, never silently
    assert report["counts"]["failed"] == 0 and summary.counts["failed"] == 0, summary.counts
    assert report["regenerated_then_accepted"] > 0
    assert report["verifier_confusion"]["click"]["exact_match"] > 0
    assert (tmp_path / "run" / "acceptance.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("rationale", "rules", "expected"),
    [
        ("I want the blue one because it is cheaper.", (), []),
        ("", ("empty", "too_short"), ["empty"]),
        ("I buy.", ("too_short",), ["too_short"]),
        ("Looks great to me, so this one.", ("first_person",), []),  # "me" is first person
        ("Looks great, so this one.", ("first_person",), ["first_person"]),
        ("As instructed I open it.", ("hindsight",), ["hindsight"]),
        ('{"type": "click", "name": "x"}', ("pasted_action",), ["pasted_action"]),
        ("product.buy_now", ("pasted_action",), ["pasted_action"]),
        ("I click product.buy_now since I have decided on this kettle.", ("pasted_action",), []),
    ],
)
def test_rules(rationale: str, rules: tuple, expected: list[str]) -> None:
    action = {"type": "click", "name": "product.buy_now"}
    names = ("empty", "too_short", "too_long", "first_person", "hindsight", "pasted_action")
    got = check_rules(rationale, action, rules or names, RulesConfig())
    assert [r.split(":")[0] for r in got] == expected


def test_a_filter_run_is_valid_distill_data_from_another_directory(
    tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distill.data import SFTData

    monkeypatch.chdir(tmp_path)
    records_file(tmp_path)  # input.jsonl
    synth(tmp_path, server, Path("input.jsonl"), verifier="none", output="run")
    config = SynthConfig(input="run", output="filtered", api_base=server.url)
    run_filter(config, retry_policy=FAST)
    run_json = read_run_json(tmp_path / "filtered")
    assert Path(run_json["records_file"]) == (tmp_path / "input.jsonl").resolve()
    assert Path(run_json["config"]["input"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = SFTData(tmp_path / "filtered")
    examples = list(data.examples())
    assert len(examples) == len(lines(tmp_path / "filtered", "accepted")) == 2


def test_the_blindness_check_fails_on_a_verifier_prompt_that_shows_the_action(
    tmp_path: Path, openai_server
) -> None:
    """The check `server` runs after every test can fail: a leaking verifier template."""
    openai_server.responder = responder
    source = (Path(__file__).parent.parent / "prompts" / "verifier.jinja").read_text()
    leaking = tmp_path / "leaking.jinja"
    leaking.write_text(
        source.replace("{% block user %}", "{% block user %}\n## What they did next\n", 1)
    )
    synth(tmp_path, openai_server, records_file(tmp_path), verifier_template=str(leaking))
    assert verifier_requests(openai_server)
    with pytest.raises(AssertionError, match="saw the action"):
        assert_verifier_blind(openai_server)


def test_filter_keeps_every_candidate_it_was_given(tmp_path: Path, server) -> None:
    """The synth-time rejected candidates stay on the filtered line, beside the re-judged ones."""
    synth(tmp_path, server, records_file(tmp_path), samples=3, temperature=0.7)
    before = lines(tmp_path / "run", "accepted")["item.samples_1"]["candidates"]
    assert [(c["sample"], c["state"]) for c in before] == [(0, "rejected"), (1, "accepted")]
    config = SynthConfig(input=str(tmp_path / "run"), output=str(tmp_path / "filtered"),
                         api_base=server.url)  # fmt: skip
    run_filter(config, retry_policy=FAST)
    after = lines(tmp_path / "filtered", "accepted")["item.samples_1"]["candidates"]
    assert [(c["sample"], c["state"]) for c in after] == [(0, "rejected"), (1, "accepted")]
    assert after[0] == before[0]  # carried over as it was, verdict and all
    assert after[1]["verification"]["match"] is True


def test_filter_refuses_source_records_it_would_lose(tmp_path: Path, server) -> None:
    """A source record that is not a step of the input (the input changed since), or a key
    given twice in a synth JSONL, is an error naming it, or left out and reported with skip."""
    source = records_file(tmp_path)
    synth(tmp_path, server, source, verifier="none")
    run = tmp_path / "run"
    lines_of_input = source.read_text().splitlines()
    source.write_text("\n".join(lines_of_input[:-1]) + "\n")  # the s2 record is gone
    config = SynthConfig(input=str(run), output=str(tmp_path / "f"), api_base=server.url)
    with pytest.raises(RationaleError, match=r"1 records of .* are not steps of .*input\.jsonl"):
        run_filter(config, retry_policy=FAST)
    skipped = run_filter(config.model_copy(update={"on_error": "skip"}), retry_policy=FAST)
    assert sum(skipped.counts.values()) == 10
    assert "not steps of" in read_run_json(tmp_path / "f")["skipped_input"]["lines"][0]["error"]
    twice = tmp_path / "twice.jsonl"
    accepted = (run / "accepted.jsonl").read_text().splitlines()
    twice.write_text("\n".join([*accepted, accepted[0]]) + "\n")
    config = SynthConfig(input=str(twice), output=str(tmp_path / "f2"), api_base=server.url,
                         verifier="openai/test-model")  # fmt: skip
    with pytest.raises(RationaleError, match=rf"line {len(accepted) + 1}: session 's1' step 0 "
                       r"is already at .*line 1"):  # fmt: skip
        run_filter(config, retry_policy=FAST)


def test_a_kill_during_filter_pays_twice_only_for_the_requests_in_flight(
    tmp_path: Path, server
) -> None:
    """Issue 21.5: `rationale filter` killed and rerun loses and repeats no record, and pays
    twice only for the verifier requests in flight at the kill (at most --concurrency, 2),
    which the server bills though its client was killed, as a provider does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    synth(tmp_path, server, EXAMPLES / "mind2web" / "shopping_sample.jsonl", verifier="none",
          limit=30)  # fmt: skip
    server.latency = 0.1
    cli = Path(sys.executable).parent / "rationale"

    def command(out: Path) -> list[str]:
        return [str(cli), "filter", str(tmp_path / "run"), "-o", str(out),
                "--api-base", server.url, "--concurrency", "2"]  # fmt: skip

    def keys(run: Path) -> list[tuple[str, int]]:
        files = [run / f"{state}.jsonl" for state in ("accepted", "rejected", "failed")]
        rows = [json.loads(x) for f in files if f.exists() for x in f.read_text().splitlines()]
        return [(r["record"]["session_id"], r["record"]["step"]) for r in rows]

    # the uninterrupted run, with its own state folder (its cache cannot help the other): what
    # the filter needs from the server
    before = server.billed["answers"]
    home = {"RATIONALE_HOME": str(tmp_path / "h1")}
    done = subprocess.run(command(tmp_path / "reference"), env={**os.environ, **home},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    needed = server.billed["answers"] - before
    assert needed >= 10 and server.billed["abandoned"] == 0

    env = {**os.environ, "RATIONALE_HOME": str(tmp_path / "h2")}
    killed, before = tmp_path / "killed", server.billed["answers"]
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        server.billed["answers"] - before < 4  # some verdicts paid for...
        or server.count == server.billed["answers"]  # ...and a request in flight (0.1 s each)
    ):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert server.billed["answers"] - before < needed  # killed midway
    again = subprocess.run(command(killed), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(keys(killed)) == sorted(keys(tmp_path / "reference"))  # none lost, none twice
    assert len(set(keys(killed))) == len(keys(killed))
    # Paid twice: billed for the killed run and its rerun, less what the filter needs. The
    # answers finished for the killed client (abandoned) are among them; so may be one the
    # server delivered that the killed process had not yet cached (delivered, to the server),
    # so abandoned is a lower bound.
    billed = server.billed
    assert 1 <= billed["abandoned"] <= billed["answers"] - before - needed <= 2, billed
