"""The commands that turn accepted rationales into a student: distill, export-sft."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rationale.cli.options import (
    _job_config,
    action_space_option,
    config_option,
    on_error_option,
    output_folder_option,
    output_option,
)


@click.command()
@click.option(
    "--base",
    help="Student: an alias (llama-3-8b, llama-3.1-8b, llama-3.2-3b, qwen2.5-7b, "
    "mistral-7b, smollm2-135m), a local model folder, or a .gguf file.",
)
@click.option(
    "--data",
    type=click.Path(exists=True),
    help="A synth run folder, or a JSONL of accepted synthesis records.  [default: [distill] "
    "data, else the workspace's synth output]",
)
@output_folder_option("Output folder.  [default: runs/distill/<base>, -actions with "
                      "--no-rationale]", required=False)  # fmt: skip
@click.option(
    "--backend",
    type=click.Choice(["auto", "unsloth", "hf"]),
    default="auto",
    show_default=True,
    help="auto: Unsloth when CUDA and unsloth are there, else hf.",
)
@click.option(
    "--method",
    type=click.Choice(["qlora", "lora", "full"]),
    default="qlora",
    show_default=True,
    help="LoRA on a 4-bit base (4-bit on CUDA only), LoRA on a 16-bit base, or every weight.",
)
@click.option("--no-rationale", is_flag=True, help="Train on actions only (the ablation).")
@click.option("--session-mode", is_flag=True, help="Whole sessions as multi-turn chats.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Examples per device per step (times --grad-accum and the processes launched).",
)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
              help="Gradient accumulation steps.")  # fmt: skip
@click.option(
    "--learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Peak learning rate.  [default: 2e-4; 2e-5 with --method full]",
)
@click.option("--max-seq-length", type=click.IntRange(min=32), default=2048, show_default=True)
@click.option(
    "--max-context-tokens",
    type=click.IntRange(min=32),
    default=4000,
    show_default=True,
    help="Cut each step's context to this many tokens (without looking at the action).",
)
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after N optimizer steps.")
@click.option(
    "--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True
)
@click.option("--merge", is_flag=True, help="Also write merged 16-bit weights.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in OUT_DIR.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--history-rationales",
    is_flag=True,
    help="Add earlier steps' rationales to the history (human-written, or accepted ones).",
)
@click.option(
    "--allow-cpu",
    is_flag=True,
    help="Train a base of several billion parameters on a CPU anyway (refused by default).",
)
@on_error_option
@action_space_option
@config_option
@click.pass_context
def distill(ctx: click.Context, **flags: Any) -> None:
    """Fine-tune a student on accepted rationales (QLoRA, LoRA or full; one GPU or many)."""
    from distill.config import DistillConfig
    from distill.distributed import current
    from distill.pipeline import run_distill

    # under accelerate launch / torchrun, every process runs this; the main one reports
    main = current().is_main
    config = _job_config(ctx, DistillConfig, flags, stage="distill", quiet=not main)
    run = run_distill(config)
    if not main:
        return
    r, s = run.result, run.stats
    loss = "no loss logged" if r.final_loss is None else f"final loss {r.final_loss:.4f}"
    click.echo(
        f"distill: {run.backend} ({run.reason}); {s.examples} examples ({s.steps} steps), "
        f"{r.steps} steps of {r.global_batch}, {loss}, {r.train_runtime_s:.1f}s -> {run.output}",
        err=True,
    )
    for problem in run.skipped:
        click.echo(f"skipped: {problem}", err=True)
    if s.history_entries_dropped or s.examples_context_shrunk:
        click.echo(
            f"distill: to fit --max-seq-length, dropped {s.history_entries_dropped} history "
            f"entries from {s.examples_with_history_dropped} examples and cut the context of "
            f"{s.examples_context_shrunk}",
            err=True,
        )


@click.command("export-sft")
@click.argument("data", metavar="RUN_DIR|FILE.jsonl", type=click.Path(exists=True))
@output_option
@click.option("--no-rationale", is_flag=True, help="Action-only targets (the ablation).")
@click.option("--session-mode", is_flag=True, help="Whole sessions as multi-turn chats.")
@click.option("--max-context-tokens", type=click.IntRange(min=32), default=4000, show_default=True)
@click.option("--history-rationales", is_flag=True)
@on_error_option
@action_space_option
def export_sft(
    data: str,
    output: str,
    no_rationale: bool,
    session_mode: bool,
    max_context_tokens: int,
    history_rationales: bool,
    on_error: str,
    action_space: str | None,
) -> None:
    """Write the SFT data as TRL conversational JSONL (TRL, axolotl, LLaMA-Factory load it)."""
    from distill.data import SFTData

    sft = SFTData(
        data, no_rationale=no_rationale, session_mode=session_mode,
        max_context_tokens=max_context_tokens, history_rationales=history_rationales,
        action_space=action_space, on_error=on_error,
    )  # fmt: skip
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for ex in sft.examples():
                f.write(json.dumps(sft.trl_row(ex), ensure_ascii=False) + "\n")
        if not sft.stats.steps:
            raise click.ClickException(
                f"{data}: no step with an accepted rationale to export; nothing written"
            )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    for problem in sft.skipped:
        click.echo(f"skipped: {problem}", err=True)
    s = sft.stats
    click.echo(
        f"wrote {s.steps} examples ({s.sessions} sessions; {s.skipped_not_accepted} steps without "
        f"an accepted rationale left out) to {output}",
        err=True,
    )
