"""Which process of a launch this is: one process, or one of N under `accelerate launch`/`torchrun`.

`rationale distill` runs unchanged under both launchers: they start N copies of the command and
set ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in each; accelerate also says whether its config
asked for FSDP (``ACCELERATE_USE_FSDP``) or DeepSpeed (``ACCELERATE_USE_DEEPSPEED``). transformers'
Trainer reads the same variables and sets up the process group (NCCL on GPUs, gloo on CPUs), so
nothing here initialises torch.distributed. What the training modules need to know is read once
from the environment by `current`:

- which process writes: only the main one (rank 0) writes the output folder, the training log
  and progress lines, except what a checkpoint needs from every rank (its RNG state, its shard
  of the optimiser under FSDP or DeepSpeed), which the Trainer writes itself;
- where the model goes: its own GPU (``LOCAL_RANK``) under DDP; nowhere in particular under
  FSDP and DeepSpeed, which place (and shard) it themselves;
- the global batch: per-device batch x accumulation x processes, the examples per optimiser step.

Importing this module needs nothing but the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Launch", "current", "global_batch", "quiet_other_processes"]

Strategy = Literal["single", "ddp", "fsdp", "deepspeed"]


@dataclass(frozen=True)
class Launch:
    """This process's place in the launch: its rank, its GPU index on the node, how many run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    strategy: Strategy = "single"

    @property
    def is_main(self) -> bool:
        """Whether this process writes the outputs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def shards_model(self) -> bool:
        """FSDP and DeepSpeed place the model themselves: it must not be put on a GPU first."""
        return self.strategy in ("fsdp", "deepspeed")

    def describe(self) -> str:
        """``"1 process"``, ``"8 processes (fsdp)"``: for logs and the model card."""
        if self.strategy == "single":
            return "1 process"
        count = f"{self.world_size} process{'es' if self.distributed else ''}"
        return f"{count} ({self.strategy})"


def current(environ: Mapping[str, str] | None = None) -> Launch:
    """This process's `Launch`, from the variables accelerate launch and torchrun set."""
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            return default

    world = max(1, number("WORLD_SIZE", 1))
    # An accelerate config for FSDP or DeepSpeed applies on one process too (it wraps or
    # partitions the model there as well).
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        strategy: Strategy = "fsdp"
    elif env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        strategy = "deepspeed"
    else:
        strategy = "ddp" if world > 1 else "single"
    if world == 1 and strategy == "single":
        return Launch()
    return Launch(number("RANK", 0), number("LOCAL_RANK", 0), world, strategy)


def global_batch(batch_size: int, grad_accum: int, launch: Launch) -> int:
    """Examples per optimiser step: per device x accumulation x processes."""
    return batch_size * grad_accum * launch.world_size


def quiet_other_processes(launch: Launch) -> None:
    """Silence the progress bars and info logs of every process but the main one.

    N copies of each bar and line would otherwise interleave on the terminal; errors still show.
    """
    if launch.is_main:
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
