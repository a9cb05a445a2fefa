"""What the two local generation engines share: the output record, the prompt's rendering and
encoding, end-of-sequence ids, and an adapter's identity.

`rationale.hf_batch` (transformers, CPU or CUDA) and `rationale.vllm_engine` (vLLM, CUDA) both
build on `ChatRenderer` and return `GenOutput`, so eval and the predictor drive either one. No
heavy import here: the tokenizer is whatever object the engine loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rationale.errors import RationaleError
from rationale.json_stop import JsonScanner
from rationale.local_generation import plain_chat_prompt

__all__ = ["ChatRenderer", "GenOutput", "adapter_fingerprint", "eos_ids"]

ADAPTER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class GenOutput:
    """One prompt's reply: the text (cut after the JSON object when ``stop == "json"``), the
    prompt's tokens, the tokens generated up to and including the stop token, and why it
    stopped: ``"json"``, ``"eos"`` or ``"length"``."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    stop: str


class ChatRenderer:
    """What both engines do with the tokenizer alone: render chat messages into the prompt
    text, and read one token's text (cached) for the JSON stop rule."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._pieces: dict[int, str] = {}

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for ``messages``, up to the start of the assistant's reply.

        The tokenizer's chat template with the generation prompt added; ``Role: content`` lines
        and ``Assistant: `` (`rationale.local_generation.plain_chat_prompt`) if it has none.
        """
        if getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            )
        return plain_chat_prompt(messages)

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """The prompts' token ids. A rendered chat template already holds its special tokens,
        so none are added then; a plain prompt gets the tokenizer's (e.g. BOS)."""
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        return list(self.tokenizer(prompts, add_special_tokens=not has_template)["input_ids"])

    def piece(self, token_id: int) -> str:
        """The text of one token on its own (special tokens read as "")."""
        text = self._pieces.get(token_id)
        if text is None:
            text = self._pieces[token_id] = self.tokenizer.decode(
                [token_id], skip_special_tokens=True
            )
        return text

    def json_tokens(self, tokens: Sequence[int]) -> int | None:
        """How many of ``tokens`` it takes to close the first JSON object, or None."""
        scanner = JsonScanner()
        for k, token in enumerate(tokens):
            if scanner.feed(self.piece(token)):
                return k + 1
        return None


def eos_ids(tokenizer: Any, model_eos: int | list[int] | None) -> list[int]:
    """End-of-sequence ids: the model's (its generation config's ``eos_token_id``), the
    tokenizer's, and ChatML's ``<|im_end|>`` where the chat template closes turns with it and it
    is one token."""
    found: list[int] = []
    for eos in (model_eos, tokenizer.eos_token_id):
        for e in eos if isinstance(eos, list) else [eos]:
            if e is not None and e not in found:
                found.append(int(e))
    if "<|im_end|>" in str(getattr(tokenizer, "chat_template", None) or ""):
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in found:
            found.append(im_end)
    if not found:
        raise RationaleError(
            "the model has no end-of-sequence token (generation_config, tokenizer)"
        )
    return found


def adapter_fingerprint(folder: Path) -> str:
    """12 hex digits of sha256 over adapter_config.json and each weight file's name and size."""
    digest = hashlib.sha256((folder / "adapter_config.json").read_bytes())
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in ADAPTER_WEIGHTS:
            digest.update(f"\0{p.name}:{p.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def cached_hub_folder(source: str) -> str:
    """``source`` itself when it is a path; a hub repo id (``owner/name``) as the folder of its
    snapshot in the local Hugging Face cache. Never downloads: a repo that is not cached is an
    error that says how to fetch it."""
    import re

    if Path(source).expanduser().exists() or not re.match(r"^[\w.-]+/[\w.-]+$", source):
        return source
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return source
    try:
        return str(snapshot_download(source, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        from rationale.errors import RationaleError

        raise RationaleError(
            f"{source!r} is not in the local Hugging Face cache and nothing is downloaded here: "
            f"fetch it first (hf download {source}), or give a local folder"
        ) from None
