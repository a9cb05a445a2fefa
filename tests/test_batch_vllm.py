"""``--batch`` with ``hosted_vllm/...``: vLLM's OpenAI-compatible server serves chat completions
but no ``/v1/files`` or ``/v1/batches`` routes, so synth, filter and eval refuse it before the
output folder is written or a request is sent, and say why. The server here is the scripted
chat-completions server (tests/openai_server.py), which, like vLLM's, has no batch routes."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_filter import records_file, responder

from rationale import RationaleError
from rationale.filter import run_filter
from rationale.synth import SynthConfig, run_synth

VLLM = "hosted_vllm/served-model"
REASON = r"vLLM's OpenAI-compatible server has no /v1/files and /v1/batches routes; run without"


@pytest.fixture
def vllm(openai_server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOSTED_VLLM_API_KEY", "sk-test-vllm")
    openai_server.responder = responder
    return openai_server


@pytest.mark.parametrize("client", ["auto", "litellm"])
def test_synth_batch_with_hosted_vllm_is_refused_before_anything(
    tmp_path: Path, vllm, client: str
) -> None:
    config = SynthConfig(input=str(records_file(tmp_path)), output=str(tmp_path / "run"),
                         teacher=VLLM, api_base=vllm.url, client=client, batch=True)  # fmt: skip
    with pytest.raises(RationaleError, match=REASON) as info:
        run_synth(config)
    assert "\n" not in str(info.value) and "--batch" in str(info.value)
    assert not (tmp_path / "run").exists() and vllm.requests == []


def test_filter_batch_with_a_hosted_vllm_verifier_is_refused_before_anything(
    tmp_path: Path, vllm
) -> None:
    source = SynthConfig(input=str(records_file(tmp_path)), output=str(tmp_path / "source"),
                         teacher=VLLM, api_base=vllm.url, verifier="none")  # fmt: skip
    run_synth(source)  # online: the fast path against vLLM works
    sent = len(vllm.requests)
    config = SynthConfig(input=str(tmp_path / "source"), output=str(tmp_path / "run"),
                         verifier=VLLM, api_base=vllm.url, batch=True)  # fmt: skip
    with pytest.raises(RationaleError, match=REASON):
        run_filter(config)
    assert not (tmp_path / "run").exists() and len(vllm.requests) == sent


def test_eval_batch_with_hosted_vllm_is_refused_before_anything(tmp_path: Path, vllm) -> None:
    from test_eval_api import make_test_file

    from rationale.evaluate import EvalConfig, run_eval

    config = EvalConfig(model=VLLM, data=str(make_test_file(tmp_path)), api_base=vllm.url,
                        output=str(tmp_path / "ev"), batch=True)  # fmt: skip
    with pytest.raises(RationaleError, match=REASON):
        run_eval(config)
    assert not (tmp_path / "ev").exists() and vllm.requests == []
