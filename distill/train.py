"""Fine-tune the student: load it, train a LoRA adapter on tokenized examples, save the run.

The data module needs the student's tokenizer to tokenize, so training is three calls::

    student = prepare(config)                      # backend, base model + LoRA, tokenizer
    dataset = build_sft_dataset(..., student.tokenizer)   # input_ids + completion_mask
    result = fit(student, dataset, config)         # trl SFTTrainer, checkpoints, training log
    save(student, config, result, extra_files={"prompt_format.md": ...})

(`train` runs all of them.) The dataset is a `datasets.Dataset` with ``input_ids`` (list of
token ids) and ``completion_mask`` (1 on the tokens the loss is computed on, 0 on the prompt).
Every example must fit ``max_seq_length`` and train at least one token: `fit` checks this and
raises `DistillError` rather than let TRL truncate or drop anything.

The output folder (``config.output``) ends up holding::

    checkpoints/          trainer checkpoints (adapter, optimiser, scheduler, RNG), for --resume
    training_log.jsonl    one line per logging step: step, loss, learning_rate, epoch, grad_norm
    adapter/              the LoRA adapter and the tokenizer (peft format)
    merged/               with --merge: base + adapter merged, 16-bit, with the tokenizer
    config.json           the resolved DistillConfig, backend and why, base, library versions
    loss.png              training loss per step
    README.md             the model card: base, data, settings, result, how to load it

torch, transformers, peft and trl are imported inside the functions, never at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill import DistillError
from distill.config import DistillConfig
from distill.models import (
    ResolvedBase,
    add_lora,
    choose_backend,
    cuda_available,
    load_model_and_tokenizer,
    resolve_base,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "CHECKPOINTS_DIR",
    "TRAINING_LOG",
    "Student",
    "TrainResult",
    "build_trainer",
    "check_dataset",
    "fit",
    "prepare",
    "save",
    "train",
]

CHECKPOINTS_DIR = "checkpoints"
TRAINING_LOG = "training_log.jsonl"
SCHEMA_VERSION = 1
# Names `save` writes itself; extra files may not replace them.
_RESERVED = {"adapter", "merged", CHECKPOINTS_DIR, TRAINING_LOG, "config.json", "loss.png",
             "README.md"}  # fmt: skip
_LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "unsloth")


@dataclass
class Student:
    """The model being trained (base + LoRA), its tokenizer, and how and where it was loaded."""

    model: Any
    tokenizer: Any
    backend: str
    reason: str
    device: str
    base: ResolvedBase
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    """What a `fit` did. ``losses[i]`` was logged at step ``loss_steps[i]``.

    ``trained_tokens`` / ``total_tokens`` count one pass over the data: completion tokens (the
    loss is computed on them) and all tokens. ``resumed_from_step`` is the checkpoint's step
    when the run was resumed, else None; the losses cover the whole run either way.
    """

    steps: int
    final_loss: float | None
    losses: list[float]
    loss_steps: list[int]
    train_runtime_s: float
    samples: int
    trained_tokens: int
    total_tokens: int
    backend: str
    resumed_from_step: int | None = None


# -- prepare ------------------------------------------------------------------------------------


def prepare(config: DistillConfig) -> Student:
    """Choose the backend, load the base model and tokenizer, and add fresh LoRA adapters.

    Says on stderr which backend it chose and why.
    """
    backend, reason = choose_backend(config.backend)
    device = "cuda" if cuda_available() else "cpu"
    resolved = resolve_base(config.base, backend)
    _log(f"backend {backend} ({reason}); base {resolved.describe()} on {device}")
    model, tokenizer, notes = load_model_and_tokenizer(
        resolved, backend=backend, config=config, device=device
    )
    model = add_lora(model, config, backend=backend)
    trainable, total = _parameter_counts(model)
    targets = config.target_modules
    _log(
        f"loaded: {'; '.join(notes)}; LoRA r={config.lora_r} alpha={config.lora_alpha} on "
        f"{targets if isinstance(targets, str) else ', '.join(targets)}: "
        f"{trainable:,} trainable of {total:,} parameters"
    )
    return Student(model, tokenizer, backend, reason, device, resolved, notes)


def _parameter_counts(model: Any) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        # bitsandbytes packs two 4-bit values per byte
        n = n * 2 if p.__class__.__name__ == "Params4bit" else n
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


# -- the dataset --------------------------------------------------------------------------------


def check_dataset(dataset: Dataset, config: DistillConfig) -> tuple[int, int]:
    """(trained tokens, total tokens) of a tokenized dataset, after checking every example.

    Each example needs ``input_ids`` and ``completion_mask`` of equal length, at most
    ``max_seq_length`` tokens, and at least one trained token: TRL would otherwise truncate an
    over-long example and silently drop one left with nothing to train. The first offenders are
    named (by their ``id`` column when there is one) in the `DistillError`.
    """
    missing = [c for c in ("input_ids", "completion_mask") if c not in dataset.column_names]
    if missing:
        raise DistillError(
            f"the training dataset lacks {', '.join(missing)} (it has "
            f"{', '.join(dataset.column_names) or 'no columns'}): expected the tokenized "
            "examples of distill.data"
        )
    if len(dataset) == 0:
        raise DistillError("the training dataset is empty: there is nothing to train on")
    columns = ["input_ids", "completion_mask"] + (["id"] if "id" in dataset.column_names else [])
    problems: list[str] = []
    count = trained = total = 0
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=1000):
        ids_list, masks = batch["input_ids"], batch["completion_mask"]
        names = batch.get("id") or [None] * len(ids_list)
        for ids, mask, name in zip(ids_list, masks, names, strict=True):
            where = f"example {index}" + (f" (id {name!r})" if name is not None else "")
            index += 1
            n, m = len(ids), sum(1 for bit in mask if bit)
            problem = None
            if len(mask) != n:
                problem = f"{where}: completion_mask has {len(mask)} entries for {n} tokens"
            elif n > config.max_seq_length:
                problem = f"{where}: {n} tokens, more than max_seq_length {config.max_seq_length}"
            elif m == 0:
                problem = f"{where}: no completion tokens to train (completion_mask is all 0)"
            if problem is not None:
                count += 1
                if len(problems) < 3:
                    problems.append(problem)
                continue
            trained += m
            total += n
    if count:
        more = f" (and {count - len(problems)} more)" if count > len(problems) else ""
        raise DistillError(
            f"{count} of {len(dataset)} training examples cannot be trained as they are: "
            f"{'; '.join(problems)}{more}. Nothing is truncated or dropped silently: raise "
            "--max-seq-length, or lower --max-context-tokens so prompts are cut to fit"
        )
    return trained, total


def _with_labels(dataset: Dataset) -> Dataset:
    """The dataset plus a ``labels`` column: the token id where completion_mask is 1, else -100.

    TRL (1.15 and 1.16) would build the same column from ``completion_mask`` itself; building
    it here makes the masking independent of TRL's version and of Unsloth's patched trainer,
    both of which use a ``labels`` column as it is.
    """

    def label(example: dict[str, Any]) -> dict[str, list[int]]:
        return {
            "labels": [
                token if bit else -100
                for token, bit in zip(example["input_ids"], example["completion_mask"], strict=True)
            ]
        }

    return dataset.map(label, desc="Masking prompt tokens")


# -- the trainer --------------------------------------------------------------------------------


def build_trainer(
    student: Student,
    dataset: Dataset,
    config: DistillConfig,
    *,
    callbacks: Iterable[Any] = (),
) -> Any:
    """A trl ``SFTTrainer`` set up for ``config``, on the checked, labelled ``dataset``.

    The dataset is used as it is: TRL does not tokenize a dataset that has ``input_ids``, and
    keeps a ``labels`` column. Raises `DistillError` if TRL's preparation lost an example.
    """
    check_dataset(dataset, config)
    return _make_trainer(student, dataset, config, callbacks)


def _make_trainer(
    student: Student, dataset: Dataset, config: DistillConfig, callbacks: Iterable[Any]
) -> Any:
    """`build_trainer` for a dataset that `check_dataset` has passed."""
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError as exc:
        raise DistillError(
            f"training needs trl ({exc}): pip install 'rationale-distill[train]'"
        ) from None
    labelled = _with_labels(dataset)
    args = SFTConfig(**_sft_arguments(student, config, SFTConfig))
    trainer = SFTTrainer(
        model=student.model,
        args=args,
        train_dataset=labelled,
        processing_class=student.tokenizer,
        callbacks=list(callbacks),
    )
    kept = len(trainer.train_dataset)
    if kept != len(dataset):
        raise DistillError(
            f"trl's dataset preparation kept {kept} of {len(dataset)} examples; refusing to "
            "train on a silently reduced dataset"
        )
    return trainer


def _sft_arguments(student: Student, config: DistillConfig, sft_config: type) -> dict[str, Any]:
    """SFTConfig's keyword arguments for this run (adapted to the installed trl's fields)."""
    fields = {f.name for f in dataclasses.fields(sft_config)}
    cuda = student.device == "cuda"
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
    if student.backend == "unsloth":
        kwargs["optim"] = "adamw_8bit"  # Unsloth's notebooks; bitsandbytes ships with unsloth
    # Unsloth switched on its own checkpointing in get_peft_model; on the CPU it only costs.
    # Recent transformers 5 releases renamed gradient_checkpointing to activation_checkpointing.
    checkpointing = cuda and config.gradient_checkpointing and student.backend == "hf"
    if "activation_checkpointing" in fields:
        kwargs["activation_checkpointing"] = checkpointing
    kwargs["gradient_checkpointing"] = checkpointing
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio).
    kwargs["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = config.warmup_ratio
    # trl < 0.20 called max_length max_seq_length.
    kwargs["max_length" if "max_length" in fields else "max_seq_length"] = config.max_seq_length
    return {k: v for k, v in kwargs.items() if k in fields}


# -- fit ----------------------------------------------------------------------------------------


def fit(
    student: Student,
    dataset: Dataset,
    config: DistillConfig,
    *,
    callbacks: Iterable[Any] = (),
) -> TrainResult:
    """Train ``student.model`` on ``dataset``; checkpoints and the training log go to the output.

    With ``config.resume`` training continues from the newest checkpoint (an error if there is
    none) and the log keeps its lines up to that checkpoint's step. Without it, an output folder
    that already holds checkpoints is an error, so an earlier run is never mixed into this one.
    ``callbacks`` are extra transformers ``TrainerCallback`` objects.
    """
    trained_tokens, total_tokens = check_dataset(dataset, config)  # before touching the output
    out = Path(config.output)
    checkpoints = out / CHECKPOINTS_DIR
    log_path = out / TRAINING_LOG
    last = _last_checkpoint(checkpoints)
    resumed_from: int | None = None
    if config.resume:
        if last is None:
            raise DistillError(
                f"--resume: no checkpoint in {checkpoints} to resume from; run without --resume "
                "to start training"
            )
        resumed_from = _checkpoint_step(last)
        _trim_log(log_path, resumed_from)
        _log(f"resuming from {last.name} (step {resumed_from})")
    else:
        if last is not None:
            raise DistillError(
                f"{out} already holds checkpoints of an earlier run ({last.name}): pass --resume "
                "to continue it, or choose another --output"
            )
        out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("", encoding="utf-8")

    training_log = _training_log_callback(log_path)
    trainer = _make_trainer(student, dataset, config, [training_log, *callbacks])
    # transformers prints its log dicts on stdout; stdout is for data.
    with contextlib.redirect_stdout(sys.stderr):
        output = trainer.train(resume_from_checkpoint=str(last) if config.resume else None)

    steps, losses = _read_log(log_path)
    final = losses[-1] if losses else None
    result = TrainResult(
        steps=int(trainer.state.global_step),
        final_loss=final,
        losses=losses,
        loss_steps=steps,
        train_runtime_s=float(output.metrics.get("train_runtime", 0.0)),
        samples=len(dataset),
        trained_tokens=trained_tokens,
        total_tokens=total_tokens,
        backend=student.backend,
        resumed_from_step=resumed_from,
    )
    final_text = f"{final:.4f}" if final is not None else "not logged"
    _log(
        f"trained {result.steps} steps in {result.train_runtime_s:.1f}s on {result.samples} "
        f"examples; final loss {final_text}"
    )
    return result


def _last_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` folder that has its trainer state, or None."""
    if not folder.is_dir():
        return None
    found = [
        (_checkpoint_step(p), p)
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith("checkpoint-") and (p / "trainer_state.json").is_file()
    ]
    found = [(s, p) for s, p in found if s >= 0]
    return max(found)[1] if found else None


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _trim_log(path: Path, step: int) -> None:
    """Keep the training log's lines up to ``step`` (the resumed checkpoint); drop the rest."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


def _read_log(path: Path) -> tuple[list[int], list[float]]:
    steps: list[int] = []
    losses: list[float] = []
    if not path.is_file():
        return steps, losses
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("loss") is not None:
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
    return steps, losses


def _training_log_callback(path: Path) -> Any:
    """A TrainerCallback appending one JSON line per logging step to ``path``, flushed."""
    from transformers import TrainerCallback

    def number(value: Any) -> float | None:
        if value is None:
            return None
        value = float(value)
        return value if math.isfinite(value) else None  # keep the file strict JSON

    class TrainingLog(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return  # the final summary has train_loss, not loss
            row = {
                "step": int(state.global_step),
                "loss": number(logs["loss"]),
                "learning_rate": number(logs.get("learning_rate")),
                "epoch": number(logs.get("epoch", state.epoch)),
                "grad_norm": number(logs.get("grad_norm")),
            }
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()

    return TrainingLog()


# -- save ---------------------------------------------------------------------------------------


def save(
    student: Student,
    config: DistillConfig,
    result: TrainResult,
    *,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write the adapter, config.json, loss.png, README.md, the extra files and, with
    ``config.merge``, merged/ to the output folder; return the folder.

    ``extra_files`` maps file names (no folders) to their text or bytes, e.g. the exact prompt
    format. Merging is done last and merges ``student.model`` in place (it is the merged
    model afterwards), except for a 4-bit base, which is reloaded in 16-bit to merge into.
    """
    out = Path(config.output)
    files = dict(extra_files or {})
    for name in files:
        if Path(name).name != name or name in ("", ".", "..") or name in _RESERVED:
            raise DistillError(
                f"extra file name {name!r} is not allowed: a plain file name other than "
                f"{', '.join(sorted(_RESERVED))}"
            )
    out.mkdir(parents=True, exist_ok=True)
    adapter = out / "adapter"
    student.model.save_pretrained(str(adapter))
    student.tokenizer.save_pretrained(str(adapter))
    (out / "config.json").write_text(
        json.dumps(_run_record(student, config, result), indent=2) + "\n", encoding="utf-8"
    )
    _plot_loss(result, out / "loss.png")
    for name, content in files.items():
        target = out / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    (out / "README.md").write_text(_model_card(student, config, result, files), encoding="utf-8")
    if config.merge:
        _merge(student, adapter, out / "merged")
    _log(f"saved to {out}")
    return out


def _run_record(student: Student, config: DistillConfig, result: TrainResult) -> dict[str, Any]:
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
    student: Student, config: DistillConfig, result: TrainResult, files: Mapping[str, Any]
) -> str:
    base = student.base
    hub_id = None if base.is_local else base.source
    front = ["---", "library_name: peft", "tags:"]
    front += ["- lora", "- sft", "- trl", "- rationale-distill"]
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
        ("LoRA", f"r={config.lora_r}, alpha={config.lora_alpha}, "
                 f"dropout={config.lora_dropout}, targets={config.target_modules}"),
        ("optimiser", f"lr {config.learning_rate:g}, {config.lr_scheduler}, warm-up "
                      f"{config.warmup_ratio:g}, weight decay {config.weight_decay:g}"),
        ("batch", f"{config.batch_size} x {config.grad_accum} accumulation"),
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
            f"# {Path(config.output).name}: a LoRA adapter trained by `rationale distill`",
            "",
            "A student model fine-tuned to write the rationale behind a recorded human action "
            "and then the action, on rationales that passed the consistency filter.",
            "",
            *table,
            "",
            "## Files",
            "",
            "- `adapter/`: the LoRA adapter and the tokenizer (with the chat template used)",
            *(["- `merged/`: base and adapter merged, 16-bit"] if config.merge else []),
            "- `config.json`: the resolved training config, backend and library versions",
            "- `training_log.jsonl`, `loss.png`: the loss per step",
            *([extra.rstrip("\n")] if extra else []),
            "",
            "## Load it",
            "",
            "```python",
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
            "```",
            "",
            "Prompt it with the tokenizer's chat template and the prompt format the data was "
            "built with (see the files above).",
            "",
        ]
    )


def _merge(student: Student, adapter: Path, target: Path) -> None:
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
    if quantized:
        # Merging into 4-bit weights would round the adapter away: reload the base in 16-bit.
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = student.base
        kwargs: dict[str, Any] = {"dtype": torch.bfloat16, "device_map": {"": 0}}
        if base.is_local:
            kwargs["local_files_only"] = True
        fresh = AutoModelForCausalLM.from_pretrained(base.source, **kwargs)
        merged = PeftModel.from_pretrained(fresh, str(adapter)).merge_and_unload()
    else:
        merged = student.model.merge_and_unload()
        student.model = merged
    dtype = torch.bfloat16 if student.device == "cuda" else torch.float16
    merged.to(dtype=dtype)
    merged.config.pad_token_id = student.tokenizer.pad_token_id
    merged.save_pretrained(str(target))
    student.tokenizer.save_pretrained(str(target))


# -- all in one ---------------------------------------------------------------------------------


def train(
    config: DistillConfig,
    dataset_for: Callable[[Any], Dataset],
    *,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> TrainResult:
    """`prepare`, tokenize with ``dataset_for(student.tokenizer)``, `fit` and `save`."""
    student = prepare(config)
    dataset = dataset_for(student.tokenizer)
    result = fit(student, dataset, config)
    save(student, config, result, extra_files=extra_files)
    return result


def _log(message: str) -> None:
    """A progress line on stderr (stdout is for data)."""
    print(f"distill: {message}", file=sys.stderr, flush=True)
