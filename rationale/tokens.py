"""Token counting: one shared ruler for context budgets, cost estimates and reports.

Tokens are counted with tiktoken's ``cl100k_base``, read offline from the copy bundled with
litellm (found without importing litellm, which takes seconds). If tiktoken or that file is
missing, a token is taken to be 4 characters: the run goes on, but says so once on stderr, and
`tokenizer_info` reports the fallback so it can be recorded next to the outputs (counts, context
cuts and therefore cache keys differ from a run that had tiktoken).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import math
import os
import sys
import threading
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Tokenizer", "count_tokens", "tokenizer", "tokenizer_info"]

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# tiktoken names a cached file by the sha1 of the URL it would download it from.
_CL100K_CACHE_NAME = hashlib.sha1(_CL100K_URL.encode()).hexdigest()


class _Tiktoken:
    """cl100k_base. Tokens are token ids; offsets map through their UTF-8 byte lengths."""

    name = "tiktoken cl100k_base"
    key = "cl100k_base"  # the name `tokenizer_info` reports
    fallback: str | None = None

    def __init__(self, encoding: Any) -> None:
        self._enc = encoding

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: text that looks like a special token (<|endoftext|>) is plain text.
        return self._enc.encode_ordinary(text)  # type: ignore[no-any-return]

    def decode(self, tokens: Sequence[int]) -> str:
        # A cut inside a multi-byte character decodes to U+FFFD; callers re-count the result.
        return self._enc.decode(list(tokens))  # type: ignore[no-any-return]

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def token_span(self, text: str, tokens: Sequence[int], start: int, end: int) -> tuple[int, int]:
        """Indexes of the first and last tokens holding characters ``start`` to ``end - 1``."""
        ends = list(
            itertools.accumulate(len(self._enc.decode_single_token_bytes(t)) for t in tokens)
        )

        def index(char: int) -> int:
            byte = len(text[:char].encode("utf-8"))
            return min(bisect_right(ends, byte), len(tokens) - 1)

        return index(start), index(end - 1)


class _Chars:
    """The fallback: a token is 4 characters, so counts are ``ceil(len(text) / 4)``.

    ``fallback`` says why tiktoken's cl100k_base could not be used.
    """

    name = "characters / 4 (tiktoken unavailable)"
    key = "chars/4"

    def __init__(self, fallback: str = "tiktoken unavailable") -> None:
        self.fallback = fallback

    def encode(self, text: str) -> list[str]:
        return [text[i : i + 4] for i in range(0, len(text), 4)]

    def decode(self, tokens: Sequence[str]) -> str:
        return "".join(tokens)

    def count(self, text: str) -> int:
        return math.ceil(len(text) / 4)

    def token_span(self, text: str, tokens: Sequence[str], start: int, end: int) -> tuple[int, int]:
        return min(start // 4, len(tokens) - 1), min((end - 1) // 4, len(tokens) - 1)


Tokenizer = _Tiktoken | _Chars

# The loaded tokenizer, None until first use. It holds all of this module's state (the fallback
# reason included), so a test that swaps it restores everything by restoring this one name.
_TOKENIZER: Tokenizer | None = None
_TOKENIZER_LOCK = threading.Lock()


def _litellm_tokenizers_dir() -> Path | None:
    """litellm's bundled tiktoken cache, located without importing litellm."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "litellm_core_utils" / "tokenizers"
        if folder.is_dir():
            return folder
    return None


def _verified_cache_file(folder: str | Path | None) -> bool:
    if not folder:
        return False
    path = Path(folder) / _CL100K_CACHE_NAME
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == _CL100K_SHA256
    except OSError:
        return False


def _load_tokenizer() -> Tokenizer:
    """cl100k_base read offline, else a `_Chars` carrying the reason it could not be loaded."""
    bundled = _litellm_tokenizers_dir()
    if bundled is not None and "TIKTOKEN_CACHE_DIR" not in os.environ:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
    try:
        import tiktoken
    except ImportError:
        return _Chars("tiktoken is not installed")
    # tiktoken downloads a missing or corrupt file; ask it only for a file verified here, so the
    # network is never touched. Its cache folder is resolved the way tiktoken resolves it.
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    try:
        if _verified_cache_file(cache_dir):
            return _Tiktoken(tiktoken.get_encoding("cl100k_base"))
        if _verified_cache_file(bundled):
            # The user's own cache folder lacks cl100k_base: read litellm's copy this once.
            saved = os.environ.get("TIKTOKEN_CACHE_DIR")
            os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
            try:
                return _Tiktoken(tiktoken.get_encoding("cl100k_base"))
            finally:
                if saved is None:
                    del os.environ["TIKTOKEN_CACHE_DIR"]
                else:
                    os.environ["TIKTOKEN_CACHE_DIR"] = saved
    except Exception as exc:  # any failure to build the encoding means the fallback, never a crash
        return _Chars(f"tiktoken could not build cl100k_base: {type(exc).__name__}: {exc}")
    looked = list(dict.fromkeys(str(p) for p in (cache_dir, bundled) if p))
    where = f" in {', '.join(looked)}" if looked else ""
    return _Chars(f"no verified offline copy of cl100k_base{where}")


def tokenizer() -> Tokenizer:
    """The tokenizer `count_tokens` and cutting use, loaded on first use (a fallback is announced
    once on stderr)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        with _TOKENIZER_LOCK:
            if _TOKENIZER is None:
                tok = _load_tokenizer()
                if tok.fallback is not None:
                    print(
                        f"rationale: warning: tokenizer cl100k_base unavailable ({tok.fallback}); "
                        "counting 4 characters as a token: token counts are estimates, and "
                        "context cuts and cache keys differ from a run with tiktoken",
                        file=sys.stderr,
                    )
                _TOKENIZER = tok
    return _TOKENIZER


def tokenizer_info() -> dict[str, str | None]:
    """What `count_tokens` uses: ``{"name": "cl100k_base" | "chars/4", "fallback": reason}``.

    ``fallback`` is None when cl100k_base loaded, else why it did not. Loads the tokenizer.
    """
    tok = tokenizer()
    return {"name": tok.key, "fallback": tok.fallback}


def count_tokens(text: str) -> int:
    """Tokens in ``text``: tiktoken ``cl100k_base`` if available offline, else ``ceil(len / 4)``.

    cl100k_base is read from litellm's bundled tiktoken cache (``TIKTOKEN_CACHE_DIR`` is set to
    it unless already set). Student and teacher tokenizers differ; this is one shared ruler for
    budgets and reports, not an exact count for any one model.
    """
    tok = tokenizer()
    return _count_cached(tok, text) if len(text) > 256 else tok.count(text)


@functools.lru_cache(maxsize=64)
def _count_cached(tok: Any, text: str) -> int:
    # Long texts that repeat (a template's system prompt, sent with every record) are counted
    # once per tokenizer.
    return tok.count(text)
