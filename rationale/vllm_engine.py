"""Generation through vLLM, for ``rationale eval --engine vllm`` on a CUDA machine.

`VLLMGenerator` has the interface of `rationale.hf_batch.BatchGenerator` (``render``,
``generate`` returning `~rationale.hf_batch.GenOutput` in the order of the prompts), so eval and
the predictor drive either. vLLM schedules its own batches (continuous batching, prefix caching);
a LoRA adapter is served through its LoRA support (``LoRARequest``) rather than merged.

The prompts go in as token ids, encoded exactly as the hf engine does (no special tokens added
to a rendered chat template), and vLLM stops at the end-of-sequence tokens. It cannot stop at the
end of a JSON object, so the reply is cut there afterwards, and ``completion_tokens`` counts the
tokens up to the one that closed it, as the hf engine does.

vllm is an optional dependency and is never imported on a machine without CUDA:
`vllm_available` says whether it can run here, and why not.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rationale.errors import RationaleError
from rationale.json_stop import json_object_end
from rationale.local_engine import (
    ChatRenderer,
    GenOutput,
    adapter_fingerprint,
    cached_hub_folder,
    eos_ids,
)
from rationale.local_teacher import LocalModel

__all__ = ["VLLMGenerator", "load_vllm", "vllm_available"]


def vllm_available() -> tuple[bool, str]:
    """(whether vLLM can run here, why or why not), without importing vllm."""
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device (vLLM needs one)"
    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not installed (pip install 'rationale-distill[vllm]')"
    version = importlib.metadata.version("vllm")
    return True, f"CUDA ({torch.cuda.get_device_name(0)}) and vllm {version} are present"


class VLLMGenerator(ChatRenderer):
    """A model loaded in vLLM (and optionally a LoRA adapter), generating for many prompts."""

    def __init__(
        self, model_id: str, llm: Any, tokenizer: Any, model_eos: Any = None, lora: Any = None
    ) -> None:
        super().__init__(tokenizer)
        self.model_id = model_id
        self.device = "cuda"
        self.llm = llm
        self.lora = lora  # a vllm LoRARequest, or None
        self.eos_ids = eos_ids(tokenizer, model_eos)

    def __repr__(self) -> str:
        return f"VLLMGenerator({self.model_id!r})"

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        batch_size: int = 256,
        on_batch: Callable[[list[int], list[GenOutput]], None] | None = None,
    ) -> list[GenOutput]:
        """Continue each prompt; the outputs in the order of ``prompts``.

        Greedy when ``temperature`` is 0, else sampling seeded by ``seed``. vLLM forms its own
        batches: ``batch_size`` is how many prompts are handed to it per call, and so how often
        ``on_batch(indices, outputs)`` reports finished prompts.
        """
        from vllm import SamplingParams

        if max_new_tokens < 1 or batch_size < 1 or temperature < 0:
            raise ValueError("max_new_tokens and batch_size must be >= 1, temperature >= 0")

        def params(i: int) -> Any:  # a seed per prompt: repeated prompts draw distinct samples
            return SamplingParams(
                temperature=temperature,
                max_tokens=max_new_tokens,
                seed=seed + i,
                stop=None,
                stop_token_ids=list(self.eos_ids),
                skip_special_tokens=True,
            )

        encoded = self.encode(prompts)
        results: list[GenOutput] = []
        for start in range(0, len(prompts), batch_size):
            indices = list(range(start, min(start + batch_size, len(prompts))))
            requests = [{"prompt_token_ids": encoded[i]} for i in indices]
            answers = self.llm.generate(
                requests, [params(i) for i in indices], use_tqdm=False, lora_request=self.lora
            )
            outputs = [
                self._output(answer, len(encoded[i]))
                for answer, i in zip(answers, indices, strict=True)
            ]
            results.extend(outputs)
            if on_batch is not None:
                on_batch(indices, outputs)
        return results

    def _output(self, answer: Any, prompt_tokens: int) -> GenOutput:
        """A vLLM ``RequestOutput`` as a `GenOutput`, cut at the end of the JSON object."""
        completion = answer.outputs[0]
        tokens = list(completion.token_ids)
        closing = self.json_tokens(tokens)
        if closing is not None:
            text = self.tokenizer.decode(tokens[:closing], skip_special_tokens=True)
            return GenOutput(text[: json_object_end(text)], prompt_tokens, closing, "json")
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if completion.finish_reason != "stop":
            return GenOutput(text, prompt_tokens, len(tokens), "length")
        # the stop token counts, as in the hf engine, whether vLLM lists it or not
        ended = bool(tokens) and tokens[-1] in self.eos_ids
        return GenOutput(text, prompt_tokens, len(tokens) + (0 if ended else 1), "eos")


def _generation_eos(folder: Path) -> int | list[int] | None:
    """The model's ``eos_token_id`` (generation_config.json, else config.json)."""
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return eos  # type: ignore[no-any-return]
    return None


def load_vllm(
    source: str,
    *,
    adapter: str | None = None,
    chat_template: str | None = None,
    max_lora_rank: int = 64,
    **engine_args: Any,
) -> VLLMGenerator:
    """Load a Hugging Face model folder in vLLM, with a LoRA adapter folder if given.

    ``chat_template`` replaces the tokenizer's; ``engine_args`` go to ``vllm.LLM`` (e.g.
    ``gpu_memory_utilization``, ``enforce_eager``). The dtype follows the hf engine's rule on
    CUDA: bfloat16, float16 where the GPU lacks bf16.
    """
    ok, why = vllm_available()
    if not ok:
        raise RationaleError(f"the vllm engine cannot run here: {why}; use --engine hf")
    folder, gguf, model_id = LocalModel._resolve(cached_hub_folder(source))
    if gguf is not None:
        raise RationaleError(
            f"the vllm engine needs a Hugging Face model folder, not a GGUF file ({source!r}); "
            "use --engine hf"
        )
    import torch
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    lora = None
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser().resolve()
        if not (adapter_dir / "adapter_config.json").is_file():
            raise RationaleError(f"adapter {adapter!r} not found: no adapter_config.json in it")
        model_id += f"+lora@{adapter_fingerprint(adapter_dir)}"
        rank = int(json.loads((adapter_dir / "adapter_config.json").read_text()).get("r", 0))
        # vLLM takes only these ranks: the smallest that holds the adapter's
        fits = [r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= max(max_lora_rank, rank)]
        if not fits:
            raise RationaleError(
                f"adapter {adapter!r} has LoRA rank {rank}; vLLM serves at most 512"
            )
        engine_args.update(enable_lora=True, max_lora_rank=fits[0], max_loras=1)
        lora = LoRARequest("adapter", 1, str(adapter_dir))
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    llm = LLM(model=str(folder), tokenizer=str(folder), dtype=dtype, **engine_args)
    return VLLMGenerator(model_id, llm, tokenizer, _generation_eos(folder), lora)
