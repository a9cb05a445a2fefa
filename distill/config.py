"""The one documented config of a training job (`DistillConfig`), and reading it from TOML.

A TOML file holds the fields below at its top level (``max_seq_length = 1024``); the CLI's flags
override it, and the resolved config is saved next to the trained adapter, so a run can be
repeated exactly. Defaults follow where Unsloth's LoRA guide and notebooks, TRL's SFT/PEFT docs and
Axolotl's example LoRA configs agree; each field says where its default comes from.

Importing this module needs only pydantic (no torch).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distill.errors import DistillError

__all__ = ["DistillConfig", "build_config", "load_config"]


class DistillConfig(BaseModel):
    """Everything one `distill` training run needs: student, data, output, LoRA and optimiser."""

    model_config = ConfigDict(extra="forbid")

    # -- what to train, on what, where --------------------------------------------------------
    base: str = Field(
        description=(
            "The student's base model: an alias (see `distill.models.ALIASES`, e.g. "
            "'llama-3.1-8b', 'smollm2-135m'), a local Hugging Face model folder, a .gguf file, or "
            "a hub repo id."
        )
    )
    data: str = Field(description="The training data (the SFT file written by `distill.data`).")
    output: str = Field(
        description=(
            "The run folder: checkpoints/, training_log.jsonl, adapter/, config.json, loss.png, "
            "README.md and, with `merge`, merged/."
        )
    )
    backend: Literal["auto", "unsloth", "hf"] = Field(
        default="auto",
        description=(
            "'unsloth' (one CUDA GPU, 4-bit QLoRA), 'hf' (transformers + peft + trl, CPU or GPU), "
            "or 'auto': unsloth when CUDA is present and unsloth is installed, else hf."
        ),
    )
    allow_cpu: bool = Field(
        default=False,
        description=(
            "Train on a machine without CUDA even a base of several billion parameters (or one "
            "whose memory estimate is more than the machine has), which is otherwise refused: "
            "it would take days. See `distill.sizing`."
        ),
    )

    method: Literal["lora", "qlora", "full"] = Field(
        default="qlora",
        description=(
            "'qlora': LoRA adapters on a 4-bit NF4 base (bitsandbytes; on CUDA only, the base is "
            "float32 on a CPU); 'lora': LoRA on a 16-bit base (bf16 on a GPU); 'full': every "
            "weight trained, as the paper did (float32 weights with bf16 autocast on a GPU, "
            "float32 on a CPU; the hf backend; FSDP or DeepSpeed through accelerate for bases "
            "that do not fit one GPU). QLoRA is Unsloth's default and fits an 8B base on one "
            "24 GB GPU."
        ),
    )

    # -- what the data looks like (read by the data module) ----------------------------------
    no_rationale: bool = Field(
        default=False,
        description="Train on the action alone, without the rationale (the paper's ablation).",
    )
    session_mode: bool = Field(
        default=False,
        description="One example per session (every step's turn trained) instead of one per step.",
    )
    max_context_tokens: int | None = Field(
        default=4000,
        ge=1,
        description=(
            "Token budget of a prompt's context (the history is cut to fit); smaller than synth's "
            "6000 (a teacher has a long window, a student's sequence is --max-seq-length); the "
            "student's eval reuses it; None for no budget."
        ),
    )
    on_error: Literal["fail", "skip"] = Field(
        default="fail",
        description="A bad line in the data: fail, or skip it and report it (a run made with "
        "--on-error skip is read with skip for its input either way).",
    )
    history_rationales: bool = Field(
        default=False,
        description="Add earlier steps' rationales to the history, as `rationale synth` can.",
    )
    action_space: str | None = Field(
        default=None,
        description="The action-space file of a JSONL source (a synth run folder declares its "
        "own, which wins); None for the built-in web-shopping actions.",
    )

    # -- sequence length and duration --------------------------------------------------------
    max_seq_length: int = Field(
        default=2048,
        ge=8,
        description=(
            "Longest training example in tokens. 2048 is Unsloth's notebook default (TRL's "
            "SFTConfig uses 1024, Axolotl examples 2048-4096). Examples are never truncated or "
            "dropped: a longer one is an error."
        ),
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many optimiser steps (overrides `epochs`); None: use epochs.",
    )
    epochs: float = Field(
        default=1.0,
        gt=0,
        description="Passes over the data. Unsloth's guide recommends 1-3; 1 avoids overfitting.",
    )

    # -- LoRA ---------------------------------------------------------------------------------
    lora_r: int = Field(
        default=16,
        ge=1,
        description="LoRA rank. 16 in Unsloth's notebooks and guide, TRL's PEFT examples.",
    )
    lora_alpha: int = Field(
        default=32,
        ge=1,
        description="LoRA scaling numerator; 2 x rank, the common rule (Unsloth's guide: r or 2r).",
    )
    lora_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Dropout on the LoRA path. 0 is Unsloth's default (and required by its fast kernels); "
            "Axolotl examples use 0.05."
        ),
    )
    target_modules: str | list[str] = Field(
        default="all-linear",
        description=(
            "Layers that get LoRA: 'all-linear' (peft: every linear layer but the output head, "
            "the q/k/v/o/gate/up/down projections of a Llama) or a list of module names. All "
            "linear layers is what Unsloth, TRL and Axolotl (`lora_target_linear`) recommend."
        ),
    )

    # -- optimiser ----------------------------------------------------------------------------
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Peak learning rate. Default 2e-4 for LoRA/QLoRA (Unsloth, TRL's PEFT docs, Axolotl) "
            "and 2e-5 for full fine-tuning (the alignment-handbook's full SFT recipes)."
        ),
    )
    lr_scheduler: Literal["cosine", "linear"] = Field(
        default="cosine",
        description=(
            "Learning-rate decay after warm-up. Cosine as in Axolotl's example configs and the "
            "alignment-handbook SFT recipes (Unsloth's notebooks use linear)."
        ),
    )
    warmup_ratio: float = Field(
        default=0.03,
        ge=0.0,
        lt=1.0,
        description=(
            "Share of steps spent warming up the learning rate; 0.03 as in the QLoRA reference "
            "script (qlora.py)."
        ),
    )
    batch_size: int = Field(
        default=4,
        ge=1,
        description="Examples per device per step (Unsloth: 2 x 4 accumulation; 4 x 1 here).",
    )
    grad_accum: int = Field(
        default=1,
        ge=1,
        description="Gradient accumulation steps; the effective batch is batch_size x grad_accum.",
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0.0,
        description="AdamW weight decay; 0 is the TRL/transformers default (Unsloth uses 0.01).",
    )
    seed: int = Field(default=0, description="Seed of LoRA initialisation and data order.")
    gradient_checkpointing: bool = Field(
        default=True,
        description=(
            "Recompute activations to save GPU memory (Unsloth and TRL default on). Only used on "
            "CUDA; always off on the CPU, where it would only slow training."
        ),
    )

    # -- logging, checkpoints, outputs --------------------------------------------------------
    logging_steps: int = Field(
        default=1,
        ge=1,
        description="Write a line to training_log.jsonl every N steps (Unsloth notebooks: 1).",
    )
    save_steps: int = Field(
        default=50,
        ge=1,
        description="Checkpoint every N steps, so `resume` loses at most N steps.",
    )
    save_total_limit: int = Field(
        default=2,
        ge=1,
        description="Checkpoints kept on disk (the newest); 2 keeps one spare if a save is cut.",
    )
    merge: bool = Field(
        default=False,
        description="Also write merged 16-bit weights (base + LoRA) to merged/.",
    )
    resume: bool = Field(
        default=False,
        description="Continue from the newest checkpoint in the output folder.",
    )

    @model_validator(mode="before")
    @classmethod
    def _older_spelling(cls, values: Any) -> Any:
        """``load_in_4bit = true/false`` (before `method`) means method qlora / lora."""
        if not isinstance(values, dict) or "load_in_4bit" not in values:
            return values
        values = dict(values)
        method = "qlora" if values.pop("load_in_4bit") else "lora"
        if values.setdefault("method", method) != method:
            raise ValueError(
                f"load_in_4bit = {method == 'qlora'} contradicts method = {values['method']!r}: "
                "set method alone"
            )
        return values

    @model_validator(mode="after")
    def _resolve(self) -> DistillConfig:
        if self.learning_rate is None:
            self.learning_rate = 2e-5 if self.method == "full" else 2e-4
        if self.method == "full" and self.merge:
            raise ValueError(
                "merge: full fine-tuning writes the whole model to model/ already; there is no "
                "adapter to merge (drop --merge, or use --method lora/qlora)"
            )
        return self

    @property
    def uses_lora(self) -> bool:
        return self.method != "full"


def load_config(path: str | Path) -> dict[str, Any]:
    """The fields set in a TOML config file, as a dict (flags may then override them).

    Raises `DistillError` naming the file when it cannot be read, is not TOML, or sets a key
    that is not a `DistillConfig` field (a typo would otherwise be silently ignored).
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover  (Python 3.10)
        import tomli as tomllib

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DistillError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DistillError(f"{path}: not valid TOML: {exc}") from None
    fields = DistillConfig.model_fields
    for key in values:
        if key not in fields and key != "load_in_4bit":  # the older spelling of method
            close = difflib.get_close_matches(key.replace("-", "_"), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DistillError(
                f"{path}: unknown setting {key!r}{hint} (settings: {', '.join(fields)})"
            )
    return values


def build_config(values: Mapping[str, Any], *, source: str = "config") -> DistillConfig:
    """A validated `DistillConfig`, with pydantic's errors turned into one `DistillError`.

    ``source`` names where the values came from (a file, "flags") for the message.
    """
    try:
        return DistillConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise DistillError(f"{source}: {problems}") from None
