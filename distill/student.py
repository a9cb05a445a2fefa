"""The student: load the base model and tokenizer for a backend, add fresh LoRA adapters.

`prepare` is the first of training's three calls (``prepare``, ``fit``, ``save``): it chooses
the backend, resolves the base, refuses a base too big for a CPU (`distill.sizing`) before
anything is loaded, loads, and returns a `Student`. `log` writes the progress lines that the
training modules print on stderr (stdout is for data).

torch, transformers, peft and unsloth are imported inside the functions, never at import time.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distill.distributed import current, quiet_other_processes
from distill.errors import DistillError
from distill.models import (
    UNSLOTH_HINT,
    ResolvedBase,
    choose_backend,
    cuda_available,
    resolve_base,
)
from distill.sizing import check_cpu_training
from distill.training_args import training_arguments

if TYPE_CHECKING:
    from distill.config import DistillConfig

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "LORA_PROJECTIONS",
    "Student",
    "add_lora",
    "load_model_and_tokenizer",
    "log",
    "prepare",
]

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


@dataclass
class Student:
    """The model being trained (base + LoRA, or the whole base), its tokenizer, and how and where
    it was loaded."""

    model: Any
    tokenizer: Any
    backend: str
    reason: str
    device: str
    base: ResolvedBase
    notes: list[str] = field(default_factory=list)
    # Under a launcher: the trainer's arguments, made before loading (`training_arguments`).
    training_args: Any = None
    # The trainer of the last `fit`: under FSDP or DeepSpeed only it can gather the sharded
    # weights that `save` writes.
    trainer: Any = None


def log(message: str) -> None:
    """A progress line on stderr (stdout is for data), from the main process only."""
    if current().is_main:
        print(f"distill: {message}", file=sys.stderr, flush=True)


def prepare(config: DistillConfig) -> Student:
    """Choose the backend, load the base model and tokenizer, and add fresh LoRA adapters
    (``config.method`` lora or qlora) or leave every weight trainable (full).

    Says on stderr which backend it chose and why. On a machine without CUDA, a base of
    several billion parameters is refused before loading (`distill.sizing`) unless
    ``config.allow_cpu``. Under accelerate launch or torchrun every process calls it: each
    loads the model onto its own GPU (DDP), or where FSDP/DeepSpeed will shard it.
    """
    launch = current()
    quiet_other_processes(launch)
    backend, reason = choose_backend(
        config.backend, processes=launch.world_size, method=config.method
    )
    device = "cuda" if cuda_available() else "cpu"
    if launch.shards_model and device != "cuda":
        raise DistillError(
            f"launched with {launch.strategy.upper()} (accelerate's config), which needs GPUs, "
            "and this machine has no CUDA: on CPUs launch without that config (DDP over gloo), "
            "e.g. torchrun --nproc-per-node 2 -m rationale.cli distill ..."
        )
    resolved = resolve_base(config.base, backend)
    if device == "cpu":
        warning = check_cpu_training(resolved, allow_cpu=config.allow_cpu)
        if warning:
            log(f"warning: {warning}")
    where = f", {launch.describe()}" if launch.distributed else ""
    log(f"backend {backend} ({reason}); base {resolved.describe()} on {device}{where}")
    training_args = None
    if launch.distributed or launch.shards_model:
        # Before loading: this sets up the process group and this process's GPU, where a
        # 4-bit base is then loaded, and lets FSDP read the base on one process and ZeRO-3
        # load it partitioned.
        training_args = training_arguments(config, backend=backend, device=device)
    model, tokenizer, notes = load_model_and_tokenizer(
        resolved, backend=backend, config=config, device=device
    )
    if config.uses_lora:
        model = add_lora(model, config, backend=backend)
        targets = config.target_modules
        what = (
            f"LoRA r={config.lora_r} alpha={config.lora_alpha} on "
            f"{targets if isinstance(targets, str) else ', '.join(targets)}"
        )
    else:
        model.requires_grad_(True)
        what = "full fine-tuning"
    trainable, total = _parameter_counts(model)
    log(f"loaded: {'; '.join(notes)}; {what}: {trainable:,} trainable of {total:,} parameters")
    return Student(model, tokenizer, backend, reason, device, resolved, notes, training_args)


def _parameter_counts(model: Any) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        # bitsandbytes packs two 4-bit values per byte
        n = n * 2 if p.__class__.__name__ == "Params4bit" else n
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


# -- loading ------------------------------------------------------------------------------------


def load_model_and_tokenizer(
    resolved: ResolvedBase, *, backend: str, config: DistillConfig, device: str
) -> tuple[Any, Any, list[str]]:
    """The base model (without LoRA), its tokenizer, and notes on how it was loaded.

    hf: float32 on the CPU; on CUDA bfloat16 (float16 where the GPU lacks bf16), or 4-bit NF4
    with double quantization and bf16 compute for method qlora (an error if bitsandbytes is
    missing), stored as bf16 where FSDP or DeepSpeed shard it. A GGUF file is dequantized and its
    leftover quantizer cleared, so peft can train and merge it. unsloth:
    ``FastLanguageModel.from_pretrained`` in 4-bit (16-bit for method lora). Either
    way the tokenizer gets a chat template (`DEFAULT_CHAT_TEMPLATE` if it has none) and a pad
    token (eos if it has none).
    """
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(resolved, config=config)
        notes = ["unsloth 4-bit" if config.method == "qlora" else "unsloth 16-bit"]
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
        launch = current()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if config.method == "full" and not launch.shards_model:
            # Adam's steps (lr 2e-5) round away in bf16 weights: keep float32 master weights
            # and train in bf16 autocast. FSDP upcasts its shards itself, DeepSpeed keeps its
            # own float32 copy.
            dtype = torch.float32
            notes.append("float32 weights, bf16 autocast")
        if config.method == "qlora" and resolved.gguf_file is None:
            if importlib.util.find_spec("bitsandbytes") is None:
                # Training in 16-bit instead would need about four times the GPU memory.
                raise DistillError(
                    "--method qlora (4-bit, the default on a GPU) needs bitsandbytes, which is "
                    "not installed: pip install 'rationale-distill[train]' installs it on Linux "
                    "(elsewhere: pip install bitsandbytes), or pass --method lora to train the "
                    "base in 16-bit"
                )
            from transformers import BitsAndBytesConfig

            quantization: dict[str, Any] = {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_compute_dtype": torch.bfloat16,
                "bnb_4bit_use_double_quant": True,
            }
            if launch.shards_model:
                # FSDP and DeepSpeed shard float tensors only: keep the packed 4-bit weights
                # in the model's float dtype (bitsandbytes' FSDP-QLoRA guide).
                quantization["bnb_4bit_quant_storage"] = dtype
            model_kwargs["quantization_config"] = BitsAndBytesConfig(**quantization)
            notes.append("4-bit NF4 (bitsandbytes, double quantization, bf16 compute)")
        elif config.method == "qlora":
            notes.append("16-bit (a GGUF file is dequantized; 4-bit does not apply)")
        if not launch.shards_model:
            # Each process's model on its own GPU; FSDP and DeepSpeed place (and shard) it.
            model_kwargs["device_map"] = {"": launch.local_rank}
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
        raise DistillError(f"cannot import unsloth ({exc}); {UNSLOTH_HINT}") from None
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=resolved.source,
        max_seq_length=config.max_seq_length,
        load_in_4bit=config.method == "qlora",
        dtype=None,  # Unsloth picks bf16 where the GPU has it, else fp16
    )
    return model, tokenizer


def _finish_tokenizer(tokenizer: Any) -> list[str]:
    """Give the tokenizer a chat template and a pad token if it lacks them; say what changed."""
    notes = []
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        notes.append("no chat template: using ChatML (distill.student.DEFAULT_CHAT_TEMPLATE)")
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
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(
        model, "is_loaded_in_8bit", False
    )
    # Not under FSDP/DeepSpeed: its upcast of the other weights to float32 would mix dtypes in
    # one shard (PEFT's and bitsandbytes' FSDP-QLoRA examples leave it out too).
    launch = current()
    if quantized and not launch.shards_model:
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
    # peft makes the adapter float32 on a bf16 base; ZeRO-3 gathers a module's parameters into
    # one buffer of one dtype and fails on the mix (trl does the same; DeepSpeed keeps its own
    # float32 copy for the optimiser). A 4-bit base keeps float32 adapters.
    same_dtype = launch.strategy == "deepspeed" and not quantized
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            return get_peft_model(model, lora, autocast_adapter_dtype=not same_dtype)
        except ValueError as exc:  # e.g. a target module name the model does not have
            raise DistillError(f"cannot add LoRA to the base model: {exc}") from None
