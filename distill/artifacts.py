"""Saving a trained student: the adapter, the run record, the loss plot, the model card, a merge.

The output folder (``config.output``) ends up holding, beside what `distill.checkpoints` wrote
while training (``checkpoints/``, ``training_log.jsonl``)::

    adapter/              the LoRA adapter and the tokenizer (peft format); or, for method full,
    model/                the whole fine-tuned model and the tokenizer
    merged/               with --merge: base + adapter merged, 16-bit, with the tokenizer
    config.json           the resolved DistillConfig, backend and why, base, library versions
    loss.png              training loss per step
    README.md             the model card: base, data, settings, result, how to load it

Under accelerate launch or torchrun every process calls `save`: under FSDP or DeepSpeed the
weights are sharded and only all processes together can gather them (the Trainer's
``save_model``); the main process alone writes the files.

torch, peft, transformers and matplotlib are imported inside the functions, never at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.checkpoints import CHECKPOINTS_DIR, TRAINING_LOG, TrainResult
from distill.distributed import current
from distill.errors import DistillError
from distill.student import Student, log

if TYPE_CHECKING:
    from distill.config import DistillConfig

__all__ = ["SCHEMA_VERSION", "save"]

SCHEMA_VERSION = 1
# Names `save` writes itself; extra files may not replace them.
_RESERVED = {"adapter", "model", "merged", CHECKPOINTS_DIR, TRAINING_LOG, "config.json", "loss.png",
             "README.md"}  # fmt: skip
_LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "unsloth")


def save(
    student: Student,
    config: DistillConfig,
    result: TrainResult,
    *,
    extra_files: Mapping[str, str | bytes] | None = None,
    caveats: Sequence[str] = (),
) -> Path:
    """Write the adapter (or, for method full, the model), config.json, loss.png, README.md,
    the extra files and, with ``config.merge``, merged/ to the output folder; return the folder.

    ``extra_files`` maps file names (no folders) to their text or bytes, e.g. the exact prompt
    format. ``caveats`` are sentences on the training data (`distill.data.SFTData.caveats`) that
    the model card and config.json repeat. Merging is done last and merges ``student.model`` in
    place (it is the merged model afterwards), except for a 4-bit base, which is reloaded in
    16-bit to merge into.
    """
    out = Path(config.output)
    files = dict(extra_files or {})
    for name in files:
        if Path(name).name != name or name in ("", ".", "..") or name in _RESERVED:
            raise DistillError(
                f"extra file name {name!r} is not allowed: a plain file name other than "
                f"{', '.join(sorted(_RESERVED))}"
            )
    launch = current()
    weights = out / ("adapter" if config.uses_lora else "model")
    gather = student.trainer is not None and (launch.distributed or launch.shards_model)
    if gather:
        _gather_weights(student.trainer, weights)  # every process takes part
    if not launch.is_main:
        return out
    out.mkdir(parents=True, exist_ok=True)
    if not gather:
        student.model.save_pretrained(str(weights))
    student.tokenizer.save_pretrained(str(weights))
    (out / "config.json").write_text(
        json.dumps(_run_record(student, config, result, caveats), indent=2) + "\n",
        encoding="utf-8",
    )
    _plot_loss(result, out / "loss.png")
    for name, content in files.items():
        target = out / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    card = _model_card(student, config, result, files, caveats)
    (out / "README.md").write_text(card, encoding="utf-8")
    if config.merge:
        _merge(student, config, weights, out / "merged")
    log(f"saved to {out}")
    return out


def _gather_weights(trainer: Any, folder: Path) -> None:
    """Write the trained weights through the Trainer, which gathers FSDP/DeepSpeed shards.

    FSDP must hand over a full state dict for that (a sharded one would be saved as shards no
    `from_pretrained` reads); the Trainer writes from the main process only.
    """
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(folder))
    if current().is_main:
        (folder / "training_args.bin").unlink(missing_ok=True)  # config.json says it all


def _run_record(
    student: Student, config: DistillConfig, result: TrainResult, caveats: Sequence[str]
) -> dict[str, Any]:
    summary = dataclasses.asdict(result)
    del summary["losses"], summary["loss_steps"]  # they are in training_log.jsonl
    return {
        "schema_version": SCHEMA_VERSION,
        "config": config.model_dump(mode="json"),
        "backend": student.backend,
        "backend_reason": student.reason,
        "device": student.device,
        "base": dataclasses.asdict(student.base),
        "load": student.notes,
        "result": summary,
        "data_caveats": list(caveats),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("rationale-distill", *_LIBRARIES):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def _plot_loss(result: TrainResult, path: Path) -> None:
    """Training loss per step, as a PNG (matplotlib's Agg canvas, no pyplot state)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.0, 3.6), dpi=100)
    ax = fig.add_subplot()
    if result.losses:
        ax.plot(result.loss_steps, result.losses, color="#4c72b0", marker="." if
                len(result.losses) < 50 else None)  # fmt: skip
    else:
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    if result.resumed_from_step:
        ax.axvline(result.resumed_from_step, color="#999999", linestyle="--", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"Training loss ({result.backend}, {result.steps} steps)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)


def _model_card(
    student: Student,
    config: DistillConfig,
    result: TrainResult,
    files: Mapping[str, Any],
    caveats: Sequence[str] = (),
) -> str:
    base = student.base
    hub_id = None if base.is_local else base.source
    lora = config.uses_lora
    front = ["---", f"library_name: {'peft' if lora else 'transformers'}", "tags:"]
    front += ["- lora" if lora else "- full-fine-tuning", "- sft", "- trl", "- rationale-distill"]
    if hub_id:
        front.insert(1, f"base_model: {hub_id}")
    front.append("---")
    final = f"{result.final_loss:.4f}" if result.final_loss is not None else "not logged"
    duration = f"{config.max_steps} steps" if config.max_steps else f"{config.epochs:g} epochs"
    settings = [
        ("base model", f"`{base.describe()}`"),
        ("training data", f"`{config.data}`"),
        ("examples", f"{result.samples:,}"),
        ("tokens per epoch", f"{result.total_tokens:,} ({result.trained_tokens:,} trained)"),
        ("rationales", "no (action only)" if config.no_rationale else "yes"),
        ("examples are", "sessions" if config.session_mode else "steps"),
        ("backend", f"{student.backend} ({student.reason}) on {student.device}"),
        ("loaded as", "; ".join(student.notes)),
        ("method", config.method),
        *([("LoRA", f"r={config.lora_r}, alpha={config.lora_alpha}, "
                    f"dropout={config.lora_dropout}, targets={config.target_modules}")]
          if lora else []),
        ("optimiser", f"lr {config.learning_rate:g}, {config.lr_scheduler}, warm-up "
                      f"{config.warmup_ratio:g}, weight decay {config.weight_decay:g}"),
        ("batch", f"{config.batch_size} per device x {config.grad_accum} accumulation x "
                  f"{result.processes} process{'es' if result.processes > 1 else ''} = "
                  f"{result.global_batch or config.batch_size * config.grad_accum} per step"),
        ("duration", duration),
        ("max sequence length", str(config.max_seq_length)),
        ("seed", str(config.seed)),
        ("steps trained", str(result.steps)
         + (f" (resumed at {result.resumed_from_step})" if result.resumed_from_step else "")),
        ("final loss", final),
    ]  # fmt: skip
    table = ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in settings]
    if base.gguf_file:
        load_base = (
            f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base.source)}, "
            f"gguf_file={json.dumps(base.gguf_file)})"
        )
    else:
        load_base = f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base.source)})"
    extra = "".join(f"- `{name}`\n" for name in files)
    return "\n".join(
        [
            *front,
            "",
            f"# {Path(config.output).name}: "
            + ("a LoRA adapter" if lora else "a fully fine-tuned model")
            + " trained by `rationale distill`",
            "",
            "A student model fine-tuned to write the rationale behind a recorded human action "
            "and then the action"
            + ("." if caveats else ", on rationales that passed the consistency filter."),
            "",
            *table,
            "",
            *(["## Caveats", "", *(f"- {c}" for c in caveats), ""] if caveats else []),
            "## Files",
            "",
            "- `adapter/`: the LoRA adapter and the tokenizer (with the chat template used)"
            if lora
            else "- `model/`: the fine-tuned model and the tokenizer (with the chat template used)",
            *(["- `merged/`: base and adapter merged, 16-bit"] if config.merge else []),
            "- `config.json`: the resolved training config, backend and library versions",
            "- `training_log.jsonl`, `loss.png`: the loss per step",
            *([extra.rstrip("\n")] if extra else []),
            "",
            "## Load it",
            "",
            "```python",
            *(
                [
                    "from peft import PeftModel",
                    "from transformers import AutoModelForCausalLM, AutoTokenizer",
                    "",
                    load_base,
                    'model = PeftModel.from_pretrained(base, "adapter")',
                    'tokenizer = AutoTokenizer.from_pretrained("adapter")',
                    *(
                        ['# or, merged: AutoModelForCausalLM.from_pretrained("merged")']
                        if config.merge
                        else []
                    ),
                ]
                if lora
                else [
                    "from transformers import AutoModelForCausalLM, AutoTokenizer",
                    "",
                    'model = AutoModelForCausalLM.from_pretrained("model")',
                    'tokenizer = AutoTokenizer.from_pretrained("model")',
                ]
            ),
            "```",
            "",
            "Prompt it with the tokenizer's chat template and the prompt format the data was "
            "built with (see the files above).",
            "",
        ]
    )


def _merge(student: Student, config: DistillConfig, adapter: Path, target: Path) -> None:
    """Write base + adapter merged, in 16-bit (fp16 on the CPU, bf16 on a GPU), to ``target``."""
    import torch

    if student.backend == "unsloth":
        student.model.save_pretrained_merged(
            str(target), student.tokenizer, save_method="merged_16bit"
        )
        return
    base_model = student.model.get_base_model()
    quantized = getattr(base_model, "is_loaded_in_4bit", False) or getattr(
        base_model, "is_loaded_in_8bit", False
    )
    if quantized or current().shards_model:
        # Merging into 4-bit weights would round the adapter away, and under FSDP this process
        # holds a shard of the model only: merge the saved adapter into a fresh 16-bit base.
        # (Under DDP this process holds the whole model: it is merged in place.)
        from peft import PeftModel

        from distill.student import load_model_and_tokenizer

        fresh, _, _ = load_model_and_tokenizer(
            student.base, backend="hf", config=config.model_copy(update={"method": "lora"}),
            device=student.device,
        )  # fmt: skip
        merged = PeftModel.from_pretrained(fresh, str(adapter)).merge_and_unload()
    else:
        merged = student.model.merge_and_unload()
        student.model = merged
    dtype = torch.bfloat16 if student.device == "cuda" else torch.float16
    merged.to(dtype=dtype)
    merged.config.pad_token_id = student.tokenizer.pad_token_id
    merged.save_pretrained(str(target))
    student.tokenizer.save_pretrained(str(target))
