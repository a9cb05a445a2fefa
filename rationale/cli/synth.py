"""The commands that call models and look at their runs: synth, filter, report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from rationale.cli.options import (
    _job_config,
    action_space_option,
    batch_options,
    config_option,
    input_argument,
    model_call_options,
    on_error_option,
    output_folder_option,
    scale_options,
    verifier_options,
)


@click.command()
@input_argument
@output_folder_option(
    "Run folder: accepted/rejected/failed.jsonl and run.json. Rerun to resume.  "
    "[default: runs/synth/<INPUT stem>]",
    required=False,
)
@click.option(
    "--teacher",
    help="A litellm model string (openai/gpt-4o-mini, anthropic/..., hosted_vllm/...) "
    "or 'local' (SmolLM2-135M in-process, no key; 'local:PATH' for another model).  "
    "[default: [synth] teacher of rationale.toml]",
)
@model_call_options
@batch_options
@scale_options
@click.option(
    "--template",
    help="A shipped template name (web_shopping, generic) or a .jinja "
    "file or a folder with template.jinja.  [default: web_shopping]",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N steps (session order).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Completion cap per request (also the worst case --max-cost reserves).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Render everything, print the token and cost estimate, call nothing.",
)
@click.option("--retry-failed", is_flag=True, help="Retry the records in failed.jsonl.")
@verifier_options
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Candidate rationales per record (needs --temperature above 0).",
)
@click.option(
    "--keep",
    type=click.Choice(["first", "all"]),
    default="first",
    show_default=True,
    help="Keep the first candidate that passes, or every one that passes.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Rounds per record: a rejected rationale is regenerated with feedback up to N-1 times.",
)
@config_option
@on_error_option
@action_space_option
@click.pass_context
def synth(ctx: click.Context, input_file: str | None, **flags: Any) -> None:
    """Ask a teacher why each recorded action was taken; results stream to a run folder."""
    from rationale.synth import SynthConfig, run_synth

    ray_address, shards = flags.pop("ray_address"), flags.pop("shards")
    config = _job_config(ctx, SynthConfig, flags, stage="synth", input=input_file)
    if ray_address:
        return _on_ray("synth", config, ray_address, shards)
    result = run_synth(config)
    if config.dry_run:
        click.echo(json.dumps(result, indent=2))
        cost = result["max_cost_usd"]
        click.echo(
            f"dry run: {result['to_call']} calls to make ({result['cached']} cached, "
            f"{result['already_done']} done), {result['prompt_tokens']} prompt tokens, at most "
            f"{result['max_completion_tokens']} completion tokens, at most "
            + (
                f"${cost:.4f}"
                if cost is not None
                else "an unknown cost (model not in the price map)"
            )
            + (
                f" online, at most ${result['max_cost_usd_batch']:.4f} with --batch"
                if result.get("max_cost_usd_batch") is not None
                else ""
            ),
            err=True,
        )
        return
    _print_summary("synth", result)


def _on_ray(kind: str, config: Any, address: str, shards: int | None) -> None:
    """The job's shards on a Ray cluster, merged into -o (`rationale.scale`)."""
    from rationale.scale import BudgetStop, run_on_ray

    try:
        result = run_on_ray(kind, config, shards=shards or os.cpu_count() or 2, address=address)
    except BudgetStop as stop:  # as a run in one process: said, and not an error
        click.echo(f"{kind}: {stop}", err=True)
        return
    click.echo(
        f"{kind}: {result.shards} shards on Ray, {result.records} "
        f"{'records' if result.kind == 'run' else 'cases'} merged -> {result.output}",
        err=True,
    )


def _print_summary(command: str, result: Any) -> None:
    """The end-of-run summary on stderr."""
    from rationale.runner import summary_lines

    for line in summary_lines(command, result):
        click.echo(line, err=True)


@click.command("filter")
@click.argument("source", metavar="RUN_DIR|SYNTH.jsonl", type=click.Path(exists=True))
@output_folder_option("A new run folder for the filtered records. Rerun to resume.")
@verifier_options
@model_call_options
@batch_options
@scale_options
@click.option("--template", help="The teacher template whose rules apply.  [default: the run's]")
@click.option("--keep", type=click.Choice(["first", "all"]), default="first", show_default=True)
@config_option
@on_error_option
@action_space_option
@click.pass_context
def filter_(ctx: click.Context, source: str, **flags: Any) -> None:
    """Check the rationales of a run with the rules and the blind verifier, into a new run."""
    from rationale.filter import run_filter
    from rationale.synth import SynthConfig

    ray_address, shards = flags.pop("ray_address"), flags.pop("shards")
    config = _job_config(ctx, SynthConfig, flags, stage="filter", input=source)
    if ray_address:
        return _on_ray("filter", config, ray_address, shards)
    result = run_filter(config)
    _print_summary("filter", result)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--chart",
    type=click.Path(dir_okay=False),
    help="Also draw the acceptance chart to this PNG (the run draws its own acceptance.png; "
    "report never writes into a run folder).",
)
def report(run_dir: str, as_json: bool, chart: str | None) -> None:
    """Acceptance, rejections per rule, verifier confusion and spend of a run (read only)."""
    from rationale.report import build_report, render_text, write_chart

    if chart and Path(chart).resolve().parent == Path(run_dir).resolve():
        raise click.UsageError("--chart must be outside the run folder (report only reads it)")
    files = ("accepted", "rejected", "failed")
    if not (Path(run_dir) / "run.json").exists() and not any(
        (Path(run_dir) / f"{s}.jsonl").exists() for s in files
    ):
        raise click.ClickException(
            f"{run_dir}: not a run folder (no accepted/rejected/failed.jsonl)"
        )
    data = build_report(run_dir)
    click.echo(json.dumps(data, indent=2) if as_json else render_text(data))
    if chart:
        click.echo(f"chart: {write_chart(data, chart)}", err=True)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--cancel", is_flag=True, help="Cancel every job not collected yet.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as one JSON list.")
@click.option("--api-base", help="The endpoint, where the run's --api-base held credentials.")
@click.option(
    "--forget",
    metavar="PART|JOB",
    help="Mark a job the provider lost (or never made) as abandoned: the next run sends its "
    "requests again.",
)
def batches(
    run_dir: str, cancel: bool, as_json: bool, api_base: str | None, forget: str | None
) -> None:
    """The provider batch jobs of a --batch run: id, state, counts, created/expires, cost."""
    from rationale.batch_jobs import batch_jobs, render_jobs
    from rationale.batch_jobs import forget as forget_part

    if forget:
        click.echo(forget_part(run_dir, forget), err=True)
        return
    rows = batch_jobs(run_dir, cancel=cancel, api_base=api_base)
    click.echo(json.dumps(rows, indent=2) if as_json else render_jobs(rows))
    if cancel:
        done = [r["job"] for r in rows if r["state"] in ("cancelling", "canceling", "cancelled",
                                                          "canceled", "ended")]  # fmt: skip
        out = [r for r in rows if r["job"] and not r["collected"] and r["job"] not in done]
        click.echo(
            f"cancel: {len(done)} jobs cancelled or ended"
            + (f", {len(out)} could not be ({', '.join(r['job'] for r in out)})" if out else "")
            + "; their answered requests are kept: rerun the command that made them to collect "
            "those (and send the rest again)",
            err=True,
        )


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@output_folder_option("The merged folder (new).")
def merge(folders: tuple[str, ...], output: str) -> None:
    """Join the shard folders (--shard K/N) of one synth, filter or eval job into one."""
    from rationale.merge import merge as merge_folders

    result = merge_folders(list(folders), output)
    click.echo(
        f"merge: {result.shards} shards, {result.records} "
        f"{'records' if result.kind == 'run' else 'cases'} -> {result.output}",
        err=True,
    )
