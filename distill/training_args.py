"""trl's ``SFTConfig`` for a training run: `training_arguments`, made from a `DistillConfig`.

Its own module because both `distill.student` (under a launcher the arguments are made before
the model is loaded) and `distill.trainer` (otherwise, when the trainer is built) make them; each
imports it from here, so neither imports the other.

trl and torch are imported inside the functions, never at import time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.checkpoints import CHECKPOINTS_DIR
from distill.distributed import current
from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.config import DistillConfig

__all__ = ["training_arguments"]


def training_arguments(config: DistillConfig, *, backend: str, device: str) -> Any:
    """trl's ``SFTConfig`` for this run, on ``device`` ("cuda" or "cpu") with ``backend``.

    Making it sets up the process: under accelerate launch or torchrun, the process group and
    this process's GPU (accelerate's ``PartialState``), and for DeepSpeed ZeRO-3 the config that
    makes ``from_pretrained`` load the model partitioned. So under a launcher `prepare` makes it
    before loading the model (and keeps it, for the trainer and ZeRO-3's reference to it).
    """
    try:
        from trl import SFTConfig
    except ImportError as exc:
        raise DistillError(
            f"training needs trl ({exc}): pip install 'rationale-distill[train]'"
        ) from None
    return SFTConfig(**_sft_arguments(backend, device, config, SFTConfig))


def _sft_arguments(
    backend: str, device: str, config: DistillConfig, sft_config: type
) -> dict[str, Any]:
    """SFTConfig's keyword arguments for this run (adapted to the installed trl's fields)."""
    fields = {f.name for f in dataclasses.fields(sft_config)}
    cuda = device == "cuda"
    bf16 = False
    if cuda:
        import torch

        bf16 = bool(torch.cuda.is_bf16_supported())
    kwargs: dict[str, Any] = {
        "output_dir": str(Path(config.output) / CHECKPOINTS_DIR),
        # The dataset is tokenized and labelled already; no packing, no padding-free batches.
        "completion_only_loss": True,
        "packing": False,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "weight_decay": config.weight_decay,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps if config.max_steps is not None else -1,
        "logging_strategy": "steps",
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "report_to": "none",
        # SFTConfig defaults to bf16, which raises on the CPU.
        "bf16": bf16,
        "fp16": cuda and not bf16,
        "use_cpu": not cuda,
        "dataloader_pin_memory": cuda,
    }
    if backend == "unsloth":
        kwargs["optim"] = "adamw_8bit"  # Unsloth's notebooks; bitsandbytes ships with unsloth
    # Unsloth switched on its own checkpointing in get_peft_model; on the CPU it only costs.
    # Recent transformers 5 releases renamed gradient_checkpointing to activation_checkpointing.
    checkpointing = cuda and config.gradient_checkpointing and backend == "hf"
    if "activation_checkpointing" in fields:
        kwargs["activation_checkpointing"] = checkpointing
    kwargs["gradient_checkpointing"] = checkpointing
    if checkpointing:
        # Reentrant checkpointing breaks DDP's gradient hooks (and needs grad-requiring
        # inputs under LoRA's frozen embeddings); the non-reentrant kind works everywhere.
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
        if "activation_checkpointing_kwargs" in fields:
            kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if current().distributed:
        # Every trainable weight gets a gradient each step (LoRA's and, in full fine-tuning,
        # all); looking for unused ones would cost an extra pass over the graph per step.
        kwargs["ddp_find_unused_parameters"] = False
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio).
    kwargs["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = config.warmup_ratio
    # trl < 0.20 called max_length max_seq_length.
    kwargs["max_length" if "max_length" in fields else "max_seq_length"] = config.max_seq_length
    return {k: v for k, v in kwargs.items() if k in fields}
