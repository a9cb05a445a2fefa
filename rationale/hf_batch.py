"""Batched local generation with transformers: the engine behind ``rationale eval`` on a local
model and behind the embeddable predictor.

`load_generator` loads a model once (a local Hugging Face folder, a ``.gguf`` file, the alias
``smollm2-135m``, optionally with a LoRA adapter merged in) and returns a `BatchGenerator`;
its `~BatchGenerator.generate` runs many prompts at once:

- the prompts are sorted by length, so a batch holds prompts of similar length (little padding);
- the token prefix all prompts share (the template's system message) is run once and its KV
  cache copied into each batch, as vLLM's prefix caching does;
- each batch is padded (on the left, or between the shared prefix and the rest) and decoded a
  token per step with the KV cache, greedy or seeded sampling;
- each row stops on its own, at the end of its first complete JSON object
  (`rationale.json_stop`), at an end-of-sequence token, or at ``max_new_tokens``, and leaves the
  batch then, so the rows still running do not carry it.

Results come back in the order of the prompts. Nothing is ever downloaded. torch, transformers
and peft are imported inside the functions.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rationale.errors import RationaleError
from rationale.json_stop import RowStops, json_object_end
from rationale.local_engine import (
    ChatRenderer,
    GenOutput,
    adapter_fingerprint,
    cached_hub_folder,
    eos_ids,
)
from rationale.local_generation import torch_threads
from rationale.local_teacher import LocalModel

__all__ = ["BatchGenerator", "GenOutput", "json_object_end", "load_generator"]

TRAIN_HINT = "pip install 'rationale-distill[train]'"
MIN_SHARED_PREFIX = 16  # tokens; below this, reusing the prefix's cache is not worth a copy


class BatchGenerator(ChatRenderer):
    """A loaded causal LM and its tokenizer, generating for many prompts at once.

    Built by `load_generator`. ``model_id`` identifies the weights (and adapter) for caches and
    eval records; ``device`` is ``"cpu"`` or ``"cuda"``.
    """

    def __init__(
        self, model_id: str, device: str, tokenizer: Any, model: Any, *, threads: int | None = None
    ) -> None:
        super().__init__(tokenizer)
        self.model_id = model_id
        self.device = device
        self.model = model
        self.threads = threads
        self.eos_ids = eos_ids(tokenizer, model.generation_config.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = self.eos_ids[0] if pad is None else int(pad)
        # reuse the KV cache of a prefix all prompts share; not with sliding-window attention,
        # whose window counts cache slots, so the padding after the prefix would eat into it
        self.share_prefix = not _sliding_window(getattr(model, "config", None))
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        params = inspect.signature(type(base).forward).parameters
        # transformers 5 renamed the forward's ``past_key_values`` to ``cache``
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # the logits of the last position only (the prompt's other positions are not needed)
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def __repr__(self) -> str:
        return f"BatchGenerator({self.model_id!r}, device={self.device!r})"

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        batch_size: int = 16,
        on_batch: Callable[[list[int], list[GenOutput]], None] | None = None,
    ) -> list[GenOutput]:
        """Continue each prompt; the outputs in the order of ``prompts``.

        Greedy when ``temperature`` is 0; otherwise plain sampling at that temperature, seeded by
        ``seed`` (same prompts, seed and batch size: same outputs; torch's global RNG is left as
        it was). ``on_batch(indices, outputs)`` is called after each batch with the prompts'
        indices in ``prompts``, so a caller can save results as they come.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must not be negative, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        import torch

        results: list[GenOutput | None] = [None] * len(prompts)
        if not prompts:
            return []
        with torch_threads(self.threads), torch.inference_mode():
            encoded = self.encode(prompts)
            if empty := [i for i, ids in enumerate(encoded) if not ids]:
                raise ValueError(f"prompts {empty} have no tokens")
            # Longest first: similar lengths share a batch, and memory peaks on the first batch.
            order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
            # A generator of our own: seeded sampling never touches torch's global RNG.
            rng = torch.Generator(device=self.device).manual_seed(seed)
            prefix = self._shared_prefix(encoded)
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                rows = [encoded[i] for i in indices]
                outputs = self._generate_batch(rows, max_new_tokens, temperature, rng, prefix)
                for i, out in zip(indices, outputs, strict=True):
                    results[i] = out
                if on_batch is not None:
                    on_batch(indices, outputs)
        return [r for r in results if r is not None]

    def _shared_prefix(self, encoded: list[list[int]]) -> tuple[int, Any] | None:
        """(length, KV cache) of the token prefix all prompts share, when worth reusing.

        Prompts rendered from one template start with the same system message (often most of a
        short prompt): its keys and values are computed once and copied into every batch, as
        vLLM's prefix caching does, instead of once per prompt. At least one token of each
        prompt is left to run, so every row has logits for its first new token.
        """
        if len(encoded) < 2 or not self.share_prefix:
            return None
        length = min(_common_prefix(encoded), min(map(len, encoded)) - 1)
        if length < MIN_SHARED_PREFIX:
            return None
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        ids = torch.tensor([encoded[0][:length]], dtype=torch.long, device=self.device)
        self.model(input_ids=ids, use_cache=True, **{self._cache_kwarg: cache})
        return length, cache

    def _generate_batch(
        self,
        rows: list[list[int]],
        max_new_tokens: int,
        temperature: float,
        rng: Any,
        prefix: tuple[int, Any] | None,
    ) -> list[GenOutput]:
        """Decode one batch, a token per step for every row still running.

        Padding goes on the left, or, after a shared prefix whose cache is reused, between the
        prefix and the rest; the attention mask hides it and positions count real tokens only.
        A row that stops leaves the batch (its cache rows are dropped), so the rest of the batch
        does not pay for it, as it would with ``model.generate``.
        """
        import torch
        from transformers import DynamicCache

        width, pad = max(len(r) for r in rows), self.pad_id
        cut, cache = 0, DynamicCache()
        if prefix is not None:
            cut, cache = prefix[0], copy.deepcopy(prefix[1])
            cache.batch_repeat_interleave(len(rows))
        ids = [r[:cut] + [pad] * (width - len(r)) + r[cut:] for r in rows]
        mask = [[1] * cut + [0] * (width - len(r)) + [1] * (len(r) - cut) for r in rows]
        attention = torch.tensor(mask, dtype=torch.long, device=self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        step_ids = torch.tensor(ids, dtype=torch.long, device=self.device)[:, cut:]
        step_positions = positions[:, cut:]
        stops = RowStops(self.piece, self.eos_ids, len(rows))
        generated: list[list[int]] = [[] for _ in rows]
        running = list(range(len(rows)))  # the row of each batch position
        for _ in range(max_new_tokens):
            out = self.model(
                input_ids=step_ids,
                attention_mask=attention,
                position_ids=step_positions,
                use_cache=True,
                **{self._cache_kwarg: cache},
                **self._last_logits_only,
            )
            logits = out.logits[:, -1, :].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                tokens = torch.multinomial(probs, 1, generator=rng)[:, 0]
            else:
                tokens = logits.argmax(dim=-1)
            keep = []
            for b, token in enumerate(tokens.tolist()):
                generated[running[b]].append(token)
                if not stops.feed(running[b], token):
                    keep.append(b)
            if not keep:
                break
            last = step_positions[:, -1]
            if len(keep) < len(running):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attention, tokens, last = attention[index], tokens[index], last[index]
                running = [running[b] for b in keep]
            attention = torch.cat([attention, attention.new_ones((len(running), 1))], dim=-1)
            step_ids, step_positions = tokens[:, None], (last + 1)[:, None]
        outputs = []
        for row, tokens_of_row in enumerate(generated):
            reason = stops.reason[row]
            text = self.tokenizer.decode(tokens_of_row, skip_special_tokens=True)
            end = json_object_end(text) if reason == "json" else None
            if end is not None:
                text = text[:end]
            outputs.append(GenOutput(text, len(rows[row]), len(tokens_of_row), reason or "length"))
        return outputs


def _common_prefix(rows: list[list[int]]) -> int:
    """The length of the longest prefix all ``rows`` share (the lexicographically first and
    last rows bound it)."""
    first, last = min(rows), max(rows)
    n = 0
    while n < len(first) and n < len(last) and first[n] == last[n]:
        n += 1
    return n


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _sliding_window(config: Any) -> bool:
    """Whether any layer of the model attends through a sliding window."""
    config = getattr(config, "text_config", None) or config
    types = getattr(config, "layer_types", None) or []
    return bool(getattr(config, "sliding_window", None)) and (
        not types or any("sliding" in str(t) for t in types)
    )


def load_generator(
    source: str,
    *,
    gguf_file: str | None = None,
    adapter: str | None = None,
    chat_template: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> BatchGenerator:
    """Load a model for batched generation; never downloads.

    ``source``: a local Hugging Face model folder, a folder with ``gguf_file`` in it, a
    ``.gguf`` file, or the alias ``smollm2-135m``. ``adapter``: a peft LoRA adapter folder,
    merged into the weights. ``chat_template`` replaces the tokenizer's (a student is prompted
    with the template saved at training). ``device``: ``"cpu"`` (float32) or ``"cuda"``
    (bfloat16, float16 without bf16 support); None picks CUDA when present. ``threads`` sets
    torch's CPU threads while loading and generating.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    source = cached_hub_folder(source)  # a hub id: its snapshot in the local cache
    target = str(Path(source).expanduser() / gguf_file) if gguf_file else source
    folder, gguf, model_id = LocalModel._resolve(target)  # checks the files are there
    adapter_dir = None
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser().resolve()
        if not (adapter_dir / "adapter_config.json").is_file():
            raise RationaleError(
                f"adapter {adapter!r} not found: expected a folder holding adapter_config.json "
                "(a peft LoRA adapter, as `rationale distill` saves it)"
            )
        model_id += f"+lora@{adapter_fingerprint(adapter_dir)}"
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise RationaleError(
            f"local generation needs torch and transformers ({exc}); install them with: "
            f"{TRAIN_HINT}"
        ) from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    kwargs: dict[str, Any] = {"local_files_only": True}
    options: dict[str, Any] = {}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
        options = _gguf_options()
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # per-tensor loading bars would flood a log file
    with torch_threads(threads):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs, **options)
        except ImportError as exc:  # e.g. the gguf package, which GGUF loading needs
            raise RationaleError(f"cannot load model {source!r}: {_one_line(exc)}") from None
        except (OSError, ValueError) as exc:
            raise RationaleError(f"cannot load model {source!r}: {_one_line(exc)}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        # A GGUF load leaves a quantizer behind although the weights are dense now; peft would
        # then treat the model as quantized (no merge).
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.to(device=device, dtype=dtype)
        if adapter_dir is not None:
            model = _merge_adapter(model, adapter_dir)
        model.eval()
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return BatchGenerator(model_id, device, tokenizer, model, threads=threads)


def _gguf_options() -> dict[str, Any]:
    """Ask for a plain dense model from a GGUF file, where transformers supports the option."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _merge_adapter(model: Any, folder: Path) -> Any:
    """``model`` with the LoRA adapter in ``folder`` merged into its weights."""
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise RationaleError(
            f"loading a LoRA adapter needs peft ({exc}); install it with: {TRAIN_HINT}"
        ) from None
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RationaleError(f"cannot load adapter {str(folder)!r}: {_one_line(exc)}") from None
    return peft_model.merge_and_unload()
