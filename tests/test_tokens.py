"""The token counter (`rationale.tokens`): offline, and a fallback to chars/4 is never silent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import rationale.tokens as tokens
from rationale.tokens import count_tokens, tokenizer_info


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No tokenizer loaded yet; the loaded one and TIKTOKEN_CACHE_DIR come back after the test."""
    monkeypatch.setattr(tokens, "_TOKENIZER", None)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache folder
    return monkeypatch


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if "tokenizer" in line]


def test_a_missing_cl100k_file_is_said_once_and_reported(
    fresh: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh.setattr(tokens, "_verified_cache_file", lambda folder: False)
    counts = [count_tokens("abcdefghi" * n) for n in range(1, 60)]  # short and long (cached) texts
    assert counts[0] == 3 and counts[-1] == 133  # ceil(len / 4)

    err = capsys.readouterr().err
    assert len(warnings_in(err)) == 1 and err.count("\n") == 1, err
    line = warnings_in(err)[0]
    assert "cl100k_base" in line and "estimates" in line
    assert "context cuts and cache keys differ" in line
    assert "no verified offline copy of cl100k_base" in line

    info = tokenizer_info()
    assert info["name"] == "chars/4"
    assert info["fallback"] is not None
    assert info["fallback"].startswith("no verified offline copy of cl100k_base")
    assert capsys.readouterr().err == ""  # asking again says nothing new


def test_tiktoken_not_installed_is_the_reason(
    fresh: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh.setitem(sys.modules, "tiktoken", None)  # importing it now fails
    assert tokenizer_info() == {"name": "chars/4", "fallback": "tiktoken is not installed"}
    count_tokens("hello")
    assert len(warnings_in(capsys.readouterr().err)) == 1


def test_an_encoding_that_fails_to_build_is_the_reason(
    fresh: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is not installed here")

    def broken(name: str) -> Any:
        raise ValueError("corrupt file")

    fresh.setattr(tokens, "_verified_cache_file", lambda folder: True)
    fresh.setattr(tiktoken, "get_encoding", broken)
    info = tokenizer_info()
    assert info["name"] == "chars/4"
    assert info["fallback"] == "tiktoken could not build cl100k_base: ValueError: corrupt file"
    assert "corrupt file" in capsys.readouterr().err


def test_cl100k_loads_silently(
    fresh: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh.delenv("TIKTOKEN_CACHE_DIR")  # litellm's bundled copy
    if not isinstance(tokens.tokenizer(), tokens._Tiktoken):  # pragma: no cover
        pytest.skip(f"tiktoken's cl100k_base is not available offline here: {tokenizer_info()}")
    assert tokenizer_info() == {"name": "cl100k_base", "fallback": None}
    assert count_tokens("hello world") == 2
    assert capsys.readouterr().err == ""


# -- in a fresh interpreter, with the network blocked -------------------------------------------


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with the network blocked."""
    prelude = textwrap.dedent(
        """
        import socket
        def _refuse(*args, **kwargs):
            raise OSError("network access in a test")
        socket.socket.connect = _refuse
        socket.create_connection = _refuse
        """
    )
    environment = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_count_tokens_is_offline_and_does_not_import_litellm() -> None:
    out = run_python(
        """
        import os, sys
        import rationale.prompts as p
        import rationale.tokens as t
        n = p.count_tokens("hello world")
        cache = os.environ.get("TIKTOKEN_CACHE_DIR")
        print(n, t.tokenizer().name, "litellm" in sys.modules, cache, sep="|")
        """
    ).stdout.strip()
    count, backend, imported, cache_dir = out.split("|")
    assert imported == "False"
    if "tiktoken" not in backend:  # pragma: no cover
        pytest.skip(f"tiktoken's cl100k_base is not available offline here: {backend}")
    assert count == "2"
    assert Path(cache_dir).parts[-2:] == ("litellm_core_utils", "tokenizers")


def test_count_tokens_uses_the_bundled_file_when_the_cache_folder_lacks_it(tmp_path: Path) -> None:
    result = run_python(
        """
        import os
        import rationale.prompts as p
        print(p.count_tokens("hello world"), os.environ["TIKTOKEN_CACHE_DIR"])
        """,
        TIKTOKEN_CACHE_DIR=str(tmp_path),
    )
    count, cache_dir = result.stdout.split()
    assert cache_dir == str(tmp_path)  # the user's setting is left as it was
    assert count == "2"
    assert list(tmp_path.iterdir()) == []  # and nothing was downloaded into it
    assert result.stderr == ""  # no fallback, so no warning


def test_count_tokens_falls_back_to_characters_without_tiktoken() -> None:
    result = run_python(
        """
        import sys
        sys.modules["tiktoken"] = None  # importing it now fails
        import rationale.prompts as p
        import rationale.tokens as t
        print(p.count_tokens("abcdefghi"), p.count_tokens(""), t.tokenizer().name)
        print(t.tokenizer_info())
        """
    )
    counts, info = result.stdout.strip().splitlines()
    assert counts.startswith("3 0 characters / 4")
    assert info == "{'name': 'chars/4', 'fallback': 'tiktoken is not installed'}"
    (warning,) = result.stderr.splitlines()  # one line, said once
    assert "tiktoken is not installed" in warning and "estimates" in warning
